"""End-to-end latency through the real server, and concurrent real-time sessions.

Starts the server in-process on loopback (tiny reference-layout models by default), then N clients stream speech
in 20 ms packets at real-time pace. Latency of output sample k = time it was received - time input sample k was
sent (same rate in and out). N = 1, 2, 4, ... until a session drops input or its latency keeps growing.

  python bench/server_latency.py [--streams 1,2,4,8] [--seconds 8] [--task se] [--process] [--baseline]

``--process`` runs the server as ``metis-rt serve`` in its own process (the clients' work then stays off its
threads, as with remote clients); ``--baseline`` runs the hop's code path from before issue 20.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.server_process import ServerProcess  # noqa: E402
from metis_rt.model_settings import check_codebooks, load_official_for, load_stream_config_for  # noqa: E402
from metis_rt.models.hop_speed import BASELINE  # noqa: E402
from metis_rt.pipeline.components import load_components, resolve_config_for_tasks  # noqa: E402
from metis_rt.server.app import MetisServer  # noqa: E402
from metis_rt.server.config import ServerConfig  # noqa: E402
from metis_rt.streaming.processor import MetisWindowProcessor  # noqa: E402
from metis_rt.streaming.thread_probe import ProbeSettings  # noqa: E402

RATE, PACKET = 16000, 320


def start_server(model_dir: Path, task: str, threads: int | None = None, baseline: bool = False):
    """(the server, its port); ``baseline``: the hop's code path before issue 20 (``hop_speed.BASELINE``)."""
    official, stream_cfg = load_official_for(model_dir), load_stream_config_for(model_dir)
    cfg, _ = resolve_config_for_tasks(model_dir, [task], official)
    check_codebooks(model_dir, cfg, [task], official, stream_cfg)
    speed = (BASELINE if baseline else stream_cfg.speed).with_threads(threads)  # as `serve --threads` does
    comps = load_components(model_dir, [task], cfg)
    processor = MetisWindowProcessor(comps, speed, ProbeSettings(official, stream_cfg))
    print(f"engine threads: {processor.threads.describe() if processor.threads else 'torch default'}", flush=True)
    server = MetisServer(
        processor, official, stream_cfg, dataclasses.replace(ServerConfig(), max_sessions=64), tasks=(task,)
    )
    ready = threading.Event()
    threading.Thread(
        target=lambda: asyncio.run(server.run("127.0.0.1", 0, lambda _p: ready.set())), daemon=True
    ).start()
    ready.wait(120)
    return server, server.port


async def client(port: int, task: str, audio: np.ndarray) -> dict:
    send_times = np.zeros(len(audio))
    latencies, stats = [], {}
    async with connect(f"ws://127.0.0.1:{port}/v1/stream", max_size=2**24) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "session.start",
                    "protocol": 1,
                    "task": task,
                    "sample_rate": RATE,
                    "format": "f32le",
                    "channels": 1,
                }
            )
        )
        ready = json.loads(await ws.recv())

        async def sender():
            t0 = time.perf_counter()
            for i in range(0, len(audio), PACKET):
                delay = t0 + i / RATE - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                send_times[i : i + PACKET] = time.perf_counter()
                await ws.send(audio[i : i + PACKET].astype("<f4").tobytes())
            await ws.send(json.dumps({"type": "session.end"}))

        async def receiver():
            received = 0
            async for message in ws:
                now = time.perf_counter()
                if isinstance(message, bytes):
                    n = len(message) // 4
                    if received < len(audio) - RATE:  # the flush at the end is not real time
                        latencies.append((now - send_times[received]) * 1000)
                    received += n
                elif json.loads(message)["type"] == "stats":
                    stats.update(json.loads(message))

        await asyncio.gather(sender(), receiver())
    return {
        "latency": latencies,
        "dropped_ms": stats.get("dropped_ms", 0.0),
        "algorithmic": ready["algorithmic_latency_ms"],
        "rtf": stats.get("rtf", 0.0),
    }


async def run_point(port: int, task: str, audio: np.ndarray, n: int) -> dict:
    results = await asyncio.gather(*(client(port, task, np.roll(audio, 1600 * i)) for i in range(n)))
    lat = np.concatenate([r["latency"] for r in results])
    half = [
        np.median(r["latency"][len(r["latency"]) // 2 :]) - np.median(r["latency"][: len(r["latency"]) // 2])
        for r in results
    ]
    dropped = max(r["dropped_ms"] for r in results)
    return {
        "streams": n,
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "dropped_ms": dropped,
        "latency_growth_ms": float(max(half)),
        "algorithmic_ms": results[0]["algorithmic"],
        "real_time": dropped == 0 and max(half) < 120,
    }


def start_child(model_dir: Path, task: str, threads: int | None, baseline: bool, tmp: Path) -> ServerProcess:
    """``metis-rt serve`` in its own process (the clients' work stays out of the server's cores, as with remote
    clients), with the model directory's streaming settings. ``baseline`` runs it with ``speed: {fast_path: false,
    threads: default}``, the code path before issue 20, through a copy of configs/streaming.yaml."""
    extra = ["--max-sessions", "64"]
    if baseline:
        stream = yaml.safe_load((REPO / "configs" / "streaming.yaml").read_text())
        stream["speed"] = {**stream.get("speed", {}), "fast_path": False, "threads": "default"}
        (tmp / "streaming.yaml").write_text(yaml.safe_dump(stream))
        extra += ["--stream-config", str(tmp / "streaming.yaml")]
    return ServerProcess(
        "tiny", tuple(extra), threads, model_dir=model_dir, tasks=task, fast_steps=False, deterministic=False
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=REPO / "tests" / "data" / "parity" / "se")
    ap.add_argument("--threads", type=int, help="CPU threads of the engine (default: speed.threads, measured)")
    ap.add_argument("--baseline", action="store_true", help="the hop's code path before issue 20, torch's threads")
    ap.add_argument("--task", default="se")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--process", action="store_true", help="the server in its own process (`metis-rt serve`)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    speech, sr = sf.read(REPO / "examples" / "speech_noisy.wav", dtype="float32")
    assert sr == RATE
    audio = np.tile(speech, int(np.ceil(args.seconds * RATE / len(speech))))[: int(args.seconds * RATE)]
    tmp = Path(tempfile.mkdtemp(prefix="server_latency_"))
    if args.process:
        child = start_child(args.model_dir, args.task, args.threads, args.baseline, tmp)
        port = child.port
    else:
        child, (_, port) = None, start_server(args.model_dir, args.task, args.threads, args.baseline)
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}; task {args.task}")
    print("| streams | e2e latency p50 ms | p99 ms | algorithmic ms | latency growth ms | dropped ms | real time |")
    print("|---|---|---|---|---|---|---|")
    try:
        for n in (int(v) for v in args.streams.split(",")):
            time.sleep(3)  # the previous point's sessions end on the server's side
            try:
                r = asyncio.run(run_point(port, args.task, audio, n))
            except InvalidStatus as exc:  # admission control: the server's measured capacity is below n
                print(f"| {n} | refused: HTTP {exc.response.status_code} (the server is at its measured capacity) |")
                break
            print(
                f"| {n} | {r['latency_ms_p50']:.0f} | {r['latency_ms_p99']:.0f} | {r['algorithmic_ms']:.0f} | "
                f"{r['latency_growth_ms']:.0f} | {r['dropped_ms']:.0f} | {'yes' if r['real_time'] else 'no'} |",
                flush=True,
            )
            if not r["real_time"]:
                break
    finally:
        if child is not None:
            child.stop()


if __name__ == "__main__":
    main()
