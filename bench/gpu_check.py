"""Official-size streaming capacity of one GPU, eager vs compiled + CUDA graphs, inside a fixed time budget.

Run through ``bench/gpu_check.sh OUT_DIR`` (which installs carried wheels and caps the wall clock). SE streams of
the official architecture with random weights (timing does not depend on the weights), built directly on the
device in bf16; for each geometry (the default 240/160/1600 and a low-latency 160/80/960) and each mode (``eager``:
the eager fast path; ``compiled``: ``torch.compile`` of the stacks and w2v-BERT, run as CUDA graphs), N streams =
1, 8, 16, 32, 48, 64 are fed one chunk each and the engine runs one batched step per hop (``bench/streaming.py``'s
``measure``). Per point: hop p50/p99, real time (p99 < chunk), peak GPU memory. A mode stops growing N at its first
point that is not real time; points that would start after ``--budget-s`` are recorded as skipped. Results are
written after every point: ``gpu_check.json`` and ``gpu_check.md`` in ``--out``. ``--modes`` and ``--geometries``
take a subset (a second call after a compile that ate the budget: ``--modes compiled``; the official sizes on a CPU:
``--device cpu --streams 1 --hops 2 --modes eager --geometries low-latency``).

``--dry-run``: the same code path on the CPU with the tiny parity models, in bf16 like the GPU run unless ``--dtype``
says otherwise (so a bf16 fault shows here, not in a GPU run's few minutes), 1 and 2 streams, one measured
hop, short left contexts (few warm-up hops), no stop at late points, and ``compiled`` capturing graphs without code
generation (``compile_backend="eager"``): tests/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hop_models import build_chain  # noqa: E402
from streaming import machine_info, measure, parse_geometry  # noqa: E402

from metis_rt.models.hop_speed import HopSpeed  # noqa: E402
from metis_rt.pipeline.components import parse_dtype  # noqa: E402
from metis_rt.streaming.geometry import Geometry  # noqa: E402
from metis_rt.streaming.processor import MetisWindowProcessor  # noqa: E402

TASK = "se"
GEOMETRIES = {"default": "240/160/1600", "low-latency": "160/80/960"}
DRY_RUN_GEOMETRIES = {"default": "240/160/240", "low-latency": "160/80/160"}  # short left contexts: few warm-up hops
STREAMS = (1, 8, 16, 32, 48, 64)
SETTLE_HOPS = 2  # CUDA graph trees run a new shape eagerly once, record it the second time, replay from the third
AUDIO_S = 60  # synthetic input per stream position (rolled per stream)


@dataclass(frozen=True)
class Plan:
    device: str
    size: str
    dtype: str
    streams: tuple[int, ...]
    hops: int
    modes: dict[str, HopSpeed]
    geometries: dict[str, str]
    stop_when_late: bool  # stop growing N at the first point that is not real time


def plan(dry_run: bool, args) -> Plan:
    if dry_run:
        modes = {"eager": HopSpeed(compile="never"), "compiled": HopSpeed(compile="always", compile_backend="eager")}
        full = Plan("cpu", "tiny", args.dtype, (1, 2), 1, modes, DRY_RUN_GEOMETRIES, False)
    else:
        modes = {"eager": HopSpeed(compile="never"), "compiled": HopSpeed(compile="always", cuda_graphs=True)}
        streams = tuple(int(v) for v in args.streams.split(",")) if args.streams else STREAMS
        full = Plan(args.device, "official", args.dtype, streams, args.hops, modes, GEOMETRIES, True)
    return dataclasses.replace(
        full,
        modes=chosen(full.modes, args.modes, "--modes"),
        geometries=chosen(full.geometries, args.geometries, "--geometries"),
    )


def chosen(options: dict, names: str, flag: str) -> dict:
    """The entries of ``options`` that comma-separated ``names`` picks, in their order (all for an empty string)."""
    picked = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in picked if name not in options]
    if unknown:
        raise SystemExit(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(options)})")
    return {name: options[name] for name in picked} if picked else dict(options)


def synthetic_speech(seconds: int, rate: int = 16000) -> np.ndarray:
    """Noise shaped by a 4 Hz syllable-like envelope (timing does not depend on the content)."""
    rng = np.random.default_rng(0)
    t = np.arange(seconds * rate) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * math.pi * 4 * t) ** 2
    return (0.1 * envelope * rng.standard_normal(len(t))).astype(np.float32)


class Report:
    """Rows written to ``out`` after every point (a run cut short still leaves its rows)."""

    def __init__(self, out: Path, meta: dict):
        self.out, self.meta, self.rows = out, meta, []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.write()

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps({"machine": self.meta, "rows": self.rows}, indent=1))
        (self.out / "gpu_check.md").write_text(markdown(self.meta, self.rows) + "\n")


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"GPU check: {meta.get('gpu') or meta['device']}, {meta['size']} SE, {meta['dtype']}, "
        f"built in {meta.get('build_s', 0):.0f} s",
        "",
        "| geometry | mode | streams | hop p50 ms | hop p99 ms | chunk ms | real time | peak GiB | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['geometry']} | {r['mode']} | {r['streams']} | | | | | | {r['skipped']} |")
            continue
        lines.append(
            f"| {r['geometry']} | {r['mode']} | {r['streams']} | {r['hop_ms_p50']:.0f} | {r['hop_ms_p99']:.0f} | "
            f"{r['chunk_ms']} | {'yes' if r['real_time'] else 'no'} | {r['peak_gib']:.1f} | |"
        )
    lines += [
        "",
        "| geometry | mode | real-time streams per GPU (largest N measured with p99 < chunk) |",
        "|---|---|---|",
    ]
    for (geo, mode), n in capacity(rows).items():
        lines.append(f"| {geo} | {mode} | {n} |")
    return "\n".join(lines)


def capacity(rows: list[dict]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["geometry"], r["mode"])
        out.setdefault(key, 0)
        if not r.get("skipped") and r["real_time"]:
            out[key] = max(out[key], r["streams"])
    return out


def run(args) -> Report:
    p = plan(args.dry_run, args)
    start = time.perf_counter()
    torch.set_grad_enabled(False)
    device = torch.device(p.device)
    with device:  # build (and randomly initialise) the official sizes on the GPU itself, no weights files
        comps, official, stream_cfg = build_chain(p.size, TASK, dtype=parse_dtype(p.dtype), device=p.device)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else None
    meta = machine_info(device=p.device, gpu=gpu, size=p.size, dtype=p.dtype, dry_run=args.dry_run)
    meta["build_s"] = time.perf_counter() - start
    report = Report(args.out, meta)
    speech = np.tile(synthetic_speech(AUDIO_S), 2)
    steps = stream_cfg.steps_for(TASK)
    for geo_name, text in p.geometries.items():
        geometry = Geometry.from_config(parse_geometry(text))
        chunk_ms = geometry.chunk * 20
        for mode, speed in p.modes.items():
            processor = MetisWindowProcessor(comps, speed)
            failed = False
            for n in p.streams:
                base = {"geometry": f"{geo_name} {text}", "mode": mode, "streams": n}
                if failed or time.perf_counter() - start > args.budget_s:
                    report.add({**base, "skipped": "not real time at fewer streams" if failed else "time budget"})
                    continue
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                # the first steady hops of a new shape compile / warm up / record a CUDA graph: not measured
                times = measure(processor, official, TASK, geometry, steps, n, p.hops + SETTLE_HOPS, speech, None)
                times = times[SETTLE_HOPS:]
                p99 = float(np.percentile(times, 99))
                peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
                report.add(
                    {
                        **base,
                        "hop_ms_p50": float(np.percentile(times, 50)),
                        "hop_ms_p99": p99,
                        "chunk_ms": chunk_ms,
                        "real_time": p99 < chunk_ms,
                        "peak_gib": peak,
                        "point_s": time.perf_counter() - t0,
                    }
                )
                failed = p.stop_when_late and p99 >= chunk_ms
    report.meta["total_s"] = time.perf_counter() - start
    report.write()
    print(markdown(report.meta, report.rows), flush=True)
    return report


def main(argv: list[str] | None = None) -> Report:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU, the same code path")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--streams", default="", help=f"comma-separated (default {','.join(map(str, STREAMS))})")
    ap.add_argument("--hops", type=int, default=5, help="measured steady-state hops per point")
    ap.add_argument("--modes", default="", help="comma-separated subset of eager,compiled (default both)")
    ap.add_argument("--geometries", default="", help="comma-separated subset of default,low-latency (default both)")
    ap.add_argument("--budget-s", type=float, default=400.0, help="no point starts after this many seconds")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
