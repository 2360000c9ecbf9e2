"""End-to-end latency through the real server with the DeepFilterNet3 engine, and concurrent real-time streams.

Starts ``metis-rt serve`` as a subprocess on loopback (no weights needed), then N clients stream speech at 48 kHz
(DFN3's own rate: no resampling) in 10 ms f32le packets at real-time pace with ``engine: deepfilternet3``. Latency
of output sample k = time it was received - time input sample k was sent (the server returns the output
time-aligned with the input, so the engine's 30 ms are inside this figure). N grows until a stream drops input or
its latency keeps growing. Clients and server share the machine's CPUs (write that next to the figures).

  python bench/server_latency_dfn.py [--streams 1,2,4,8,16] [--seconds 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metis_rt.audio.files import resample  # noqa: E402

RATE, PACKET = 48000, 480  # 10 ms packets
GROWTH_LIMIT_MS = 40.0  # median latency of the second half - the first half: more = falling behind
FLUSH_S = 1.0  # the last second (and the end-of-stream flush) is not timed


def start_server(threads: int, engine: str, extra: list[str], log_path: Path) -> tuple[subprocess.Popen, int]:
    """``metis-rt serve`` on a free port; its log goes to ``log_path`` (a pipe left unread would stall it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "metis_rt", "serve", "--host", "127.0.0.1", "--port", "0", "--tasks", "se"]
    cmd += ["--engine", engine, "--max-sessions", "64", "--threads", str(threads), "-v", *extra]  # -v: INFO
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if match := re.search(r"listening on ws://[^:]+:(\d+)", log_path.read_text(errors="replace")):
            return proc, int(match[1])
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start:\n" + log_path.read_text(errors="replace")[-3000:])


async def client(port: int, audio: np.ndarray, engine: str) -> dict:
    send_times = np.zeros(len(audio))
    latencies, stats = [], {}
    async with connect(f"ws://127.0.0.1:{port}/v1/stream", max_size=2**24) as ws:
        start = {"type": "session.start", "protocol": 1, "task": "se", "sample_rate": RATE, "format": "f32le"}
        await ws.send(json.dumps({**start, "channels": 1, "engine": engine}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "session.ready":
            raise RuntimeError(f"session not started: {ready}")

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
                    if received < len(audio) - FLUSH_S * RATE:
                        latencies.append((now - send_times[received]) * 1000)
                    received += len(message) // 4
                elif json.loads(message)["type"] == "stats":
                    stats.update(json.loads(message))

        await asyncio.gather(sender(), receiver())
    return {"latency": latencies, "dropped_ms": stats.get("dropped_ms", 0.0), "ready": ready}


async def run_point(port: int, audio: np.ndarray, n: int, engine: str) -> dict:
    results = await asyncio.gather(*(client(port, np.roll(audio, 4800 * i), engine) for i in range(n)))
    lat = np.concatenate([r["latency"] for r in results])
    growth = [
        np.median(r["latency"][len(r["latency"]) // 2 :]) - np.median(r["latency"][: len(r["latency"]) // 2])
        for r in results
    ]
    dropped = max(r["dropped_ms"] for r in results)
    ready = results[0]["ready"]
    return {
        "streams": n,
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "dropped_ms": dropped,
        "latency_growth_ms": float(max(growth)),
        "algorithmic_ms": ready.get("algorithmic_latency_ms"),
        "engine": ready.get("engine"),
        "real_time": bool(dropped == 0 and max(growth) < GROWTH_LIMIT_MS),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,2,4,8,16")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", default="deepfilternet3")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra argument for metis-rt serve")
    ap.add_argument("--all", action="store_true", help="go on past the first point that is not real time")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "server_latency_dfn.json")
    args = ap.parse_args()
    speech, sr = sf.read(REPO / "examples" / "speech_noisy.wav", dtype="float32")
    speech = resample(speech, sr, RATE).astype(np.float32)
    audio = np.tile(speech, int(np.ceil(args.seconds * RATE / len(speech))))[: int(args.seconds * RATE)]
    log_path = args.out.with_suffix(".server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc, port = start_server(args.threads, args.engine, args.serve_arg, log_path)
    rows = []
    try:
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; server threads {args.threads}")
        print("| streams | e2e latency p50 ms | p99 ms | algorithmic ms | latency growth ms | dropped ms | real time |")
        print("|---|---|---|---|---|---|---|")
        for n in (int(v) for v in args.streams.split(",")):
            r = asyncio.run(run_point(port, audio, n, args.engine))
            rows.append(r)
            print(
                f"| {n} | {r['latency_ms_p50']:.0f} | {r['latency_ms_p99']:.0f} | {r['algorithmic_ms']} | "
                f"{r['latency_growth_ms']:.0f} | {r['dropped_ms']:.0f} | {'yes' if r['real_time'] else 'no'} |",
                flush=True,
            )
            if not r["real_time"] and not args.all:
                break
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}
    args.out.write_text(json.dumps({"machine": machine, "seconds": args.seconds, "rows": rows}))


if __name__ == "__main__":
    main()
