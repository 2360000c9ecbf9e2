"""Per-hop compute of the streaming engine vs the number of concurrent streams.

For each task x dtype x geometry, N sessions (N = 1, 2, 4, ... until real time fails) are fed one chunk of audio
each, then the engine runs one step (one batch of N hops). Steady-state hops only (after the left context filled).
Real time holds while the p99 step time stays below the chunk duration.

  python bench/streaming.py --model tiny                      # the reference-layout tiny models (CPU)
  python bench/streaming.py --model official --device cuda    # official sizes, random weights (GPU)

Prints a markdown table and writes JSON (``--out``). Record results in bench/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metis_rt.audio.files import resample  # noqa: E402
from metis_rt.config import ModelConfig, load_official_config  # noqa: E402
from metis_rt.model_settings import check_codebooks, load_official_for, load_stream_config_for  # noqa: E402
from metis_rt.models.thread_choice import cpu_model  # noqa: E402
from metis_rt.pipeline.components import load_components, parse_dtype, random_components, resolve_config  # noqa: E402
from metis_rt.streaming.config import EngineConfig, StepsConfig, load_stream_config, stream_decoding  # noqa: E402
from metis_rt.streaming.engine import Engine  # noqa: E402
from metis_rt.streaming.geometry import Geometry, GeometryConfig  # noqa: E402
from metis_rt.streaming.processor import MetisWindowProcessor  # noqa: E402
from metis_rt.streaming.session import SessionSpec, StreamSession  # noqa: E402

PARITY = REPO / "tests" / "data" / "parity"


def parse_geometry(text: str) -> GeometryConfig:
    """'chunk/lookahead/left' in ms, e.g. 240/160/1600."""
    chunk, lookahead, left = (int(v) for v in text.split("/"))
    return GeometryConfig(
        chunk_ms=chunk,
        lookahead_ms=lookahead,
        left_context_ms=left,
        s2a_left_context_ms=left,
        decoder_left_context_ms=min(400, left),
        crossfade_ms=min(20, lookahead),
    )


def components(model: str, task: str, dtype: torch.dtype, device: str):
    """(components, decoding settings, streaming settings); a model directory's metis-rt.yaml applies."""
    if model == "tiny":
        model_dir = PARITY / task
        official, stream_cfg = load_official_for(model_dir), load_stream_config_for(model_dir)
        cfg, _ = resolve_config(model_dir, task, official)
        check_codebooks(model_dir, cfg, [task], official, stream_cfg)
        return load_components(model_dir, [task], cfg, dtype=dtype, device=device), official, stream_cfg
    comps = random_components(ModelConfig(), [task], dtype=dtype, device=device)
    return comps, load_official_config(), load_stream_config()


def measure(processor, official, task, geometry: Geometry, steps: StepsConfig, n: int, hops: int, speech, ref):
    settings = stream_decoding(official, task, steps)
    engine = Engine(processor, EngineConfig(max_batch=n, max_backlog_ms=10**7, max_buffer_ms=10**7))
    sessions = []
    for i in range(n):
        spec = SessionSpec(task, 16000, 24000, settings, deterministic=False, seed=i)
        sessions.append(StreamSession(i, spec, geometry, engine.cfg, processor.num_quantizers, ref))
        engine.add(sessions[-1])
    warmup = math.ceil(geometry.left / geometry.chunk) + 1
    chunk = geometry.chunk * 320
    first = geometry.ssl_samples_needed(0)
    times = []
    for hop in range(warmup + hops):
        start, end = (0, first) if hop == 0 else (first + (hop - 1) * chunk, first + hop * chunk)
        for i, s in enumerate(sessions):
            s.push(np.roll(speech, 3200 * i)[start % len(speech) : start % len(speech) + (end - start)])
        t0 = time.perf_counter()
        ran = engine.step()
        elapsed = (time.perf_counter() - t0) * 1000
        if device_is_cuda(processor):
            torch.cuda.synchronize()
            elapsed = (time.perf_counter() - t0) * 1000
        assert ran == n, f"expected {n} hops in one step, ran {ran}"
        if hop >= warmup:
            times.append(elapsed)
        for s in sessions:
            s.read_output()
    return times


def machine_info(**extra) -> dict:
    """Where a benchmark ran (stored with its JSON rows)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **extra,
    }


def device_is_cuda(processor) -> bool:
    return processor.comps.device.type == "cuda"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "official"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--tasks", default="se,tse,vc")
    ap.add_argument("--geometries", default="240/160/1600,160/80/960,480/240/1600")
    ap.add_argument("--streams", default="1,2,4,8,16,32")
    ap.add_argument("--hops", type=int, default=6, help="measured steady-state hops per point")
    ap.add_argument("--all-streams", action="store_true", help="measure every stream count (no stop at the limit)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "streaming.json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    speech, sr = sf.read(REPO / "examples" / "speech_noisy.wav", dtype="float32")
    speech = np.tile(speech, 8)
    ref16, _ = sf.read(REPO / "examples" / "reference.wav", dtype="float32")
    ref24 = resample(ref16, 16000, 24000).astype(np.float32)
    rows = []
    for task in args.tasks.split(","):
        for dtype_name in args.dtypes.split(","):
            comps, official, stream_cfg = components(args.model, task, parse_dtype(dtype_name), args.device)
            processor = MetisWindowProcessor(comps)
            ref = processor.prepare_reference(ref16, ref24) if task in ("tse", "vc") else None
            for text in args.geometries.split(","):
                geometry = Geometry.from_config(parse_geometry(text))
                chunk_ms = geometry.chunk * 20
                for n in (int(v) for v in args.streams.split(",")):
                    times = measure(
                        processor, official, task, geometry, stream_cfg.steps_for(task), n, args.hops, speech, ref
                    )
                    p50, p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))
                    row = {
                        "task": task,
                        "dtype": dtype_name,
                        "geometry": text,
                        "latency_ms": geometry.latency_ms,
                        "streams": n,
                        "step_ms_p50": p50,
                        "step_ms_p99": p99,
                        "per_stream_ms": p50 / n,
                        "rtf": p50 / chunk_ms,
                        "real_time": p99 < chunk_ms,
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if not row["real_time"] and not args.all_streams:
                        break
    machine = machine_info(
        device=args.device,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        model=args.model,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(table(rows))
    print(batching(rows))


def batching(rows) -> str:
    """Cost of N batched streams relative to N separate single-stream steps, for each measured N > 1."""
    lines = []
    for r in rows:
        single = next(
            (s for s in rows if s["streams"] == 1 and all(s[k] == r[k] for k in ("task", "dtype", "geometry"))), None
        )
        if single and r["streams"] > 1:
            ratio = r["step_ms_p50"] / (r["streams"] * single["step_ms_p50"])
            lines.append(
                f"{r['task']} {r['dtype']} {r['geometry']}: {r['streams']} streams batched cost "
                f"{ratio:.2f} x {r['streams']} single streams"
            )
    return "\n".join(lines)


def table(rows) -> str:
    lines = [
        "| task | dtype | chunk/lookahead/left ms | latency ms | streams | step p50 ms | step p99 ms | "
        "per stream ms | real time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['dtype']} | {r['geometry']} | {r['latency_ms']:.0f} | {r['streams']} | "
            f"{r['step_ms_p50']:.0f} | {r['step_ms_p99']:.0f} | {r['per_stream_ms']:.1f} | "
            f"{'yes' if r['real_time'] else 'no'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
