"""Hop cost of the previous code path vs issue 20's fast paths, in ONE run, old and new interleaved.

For each model size x task x stream count, the same components are measured under each mode, repeat after repeat
(old, fast, compiled, old, fast, compiled, ...), so that a shared CPU's load falls on all modes alike:

* ``old``      — ``HopSpeed(fast_path=False, compile="never", threads="default")``: the code path before issue 20,
  with torch's default thread count (one per core) and numpy's BLAS at its default (one thread per core);
* ``old_quiet_blas`` — the same code with numpy's BLAS held to one thread (what the pre-issue-20 code would cost
  without the two thread pools fighting over the cores: ``thread_choice.quiet_numpy_blas``);
* ``fast_torch_threads`` — the eager fast path (stacked projections, remembered step conditions; same results up to
  float rounding) with torch's default thread count: what the code changes buy alone;
* ``fast_unpacked`` — the eager fast path without oneDNN-packed weights (``packed_weights: false``: what packing
  buys, on the compact sizes; the tiny models' products are too narrow to be packed);
* ``fast``     — the eager fast path with ``threads: auto`` (the count measured on the models: the default);
* ``compiled`` — the fast path with the transformer stacks and w2v-BERT under ``torch.compile`` (compiled once per
  size x task before the timed repeats; the compile time is reported separately);
* ``compiled_stacks`` — the same with w2v-BERT left eager (its compile is the long one on a CPU).

  python bench/hop_speed.py --sizes tiny,compact --tasks se,tse,vc --streams 1,8 --repeats 3

A hop = one engine step of N sessions (``bench/streaming.py``'s ``measure``), steady state only. Prints a markdown
table with p50/p99 per mode, the old/new ratios and the 8-stream batching ratio; writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from threadpoolctl import threadpool_info, threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hop_models import build_chain  # noqa: E402
from streaming import machine_info, measure  # noqa: E402

from metis_rt.audio.files import resample  # noqa: E402
from metis_rt.models.hop_speed import BASELINE, HopSpeed  # noqa: E402
from metis_rt.streaming.geometry import Geometry  # noqa: E402
from metis_rt.streaming.processor import MetisWindowProcessor  # noqa: E402
from metis_rt.streaming.thread_probe import ProbeSettings  # noqa: E402

MODES = {
    "old": BASELINE,
    "old_quiet_blas": BASELINE,
    "fast_torch_threads": HopSpeed(compile="never", threads="default"),  # the eager fast path alone
    "fast_unpacked": HopSpeed(compile="never", packed_weights=False),  # the fast path with MKL's own products
    "fast": HopSpeed(compile="never"),
    "compiled": HopSpeed(compile="always"),
    "compiled_stacks": HopSpeed(compile="always", compile_ssl=False),  # w2v-BERT eager: a shorter compile
}


# numpy's BLAS threads as the process starts (one per core unless the environment says otherwise)
BLAS_DEFAULT = max((lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"), default=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,compact")
    ap.add_argument("--tasks", default="se,tse,vc")
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every mode")
    ap.add_argument("--hops", type=int, default=6, help="measured steady-state hops per repeat")
    ap.add_argument("--threads", type=int, help="one thread count for every mode (default: each mode's own)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hop_speed.json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    if args.threads is not None:
        MODES.update({name: speed.with_threads(args.threads) for name, speed in MODES.items()})
    speech, _ = sf.read(REPO / "examples" / "speech_noisy.wav", dtype="float32")
    speech = np.tile(speech, 8)
    ref16, _ = sf.read(REPO / "examples" / "reference.wav", dtype="float32")
    ref24 = resample(ref16, 16000, 24000).astype(np.float32)
    modes = args.modes.split(",")
    rows, compile_s = [], {}
    streams = [int(v) for v in args.streams.split(",")]
    for size in args.sizes.split(","):
        for task in args.tasks.split(","):
            chain_rows, seconds = measure_chain(size, task, modes, streams, args, (speech, ref16, ref24))
            rows += chain_rows
            if seconds is not None:
                compile_s[f"{size}/{task}"] = seconds
    machine = machine_info(load_avg=os.getloadavg(), interleaved_repeats=args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "compile_s": compile_s, "rows": rows}, indent=1))
    print(table(rows, modes))


def measure_chain(size, task, modes, streams, args, audio):
    """Rows of one size x task, every mode interleaved; also the compile seconds (None without ``compiled``)."""
    speech, ref16, ref24 = audio
    comps, official, stream_cfg = build_chain(size, task)
    geometry = Geometry.from_config(stream_cfg.geometry)
    steps = stream_cfg.steps_for(task)
    ref = MetisWindowProcessor(comps, BASELINE).prepare_reference(ref16, ref24) if task != "se" else None

    threads = {}

    def run(mode: str, n: int, hops: int):
        # numpy's BLAS pool per mode: the fast modes hold it to one thread themselves (process-wide, once), so the
        # old mode gets its default back for its own runs
        with threadpool_limits(limits=BLAS_DEFAULT if mode == "old" else 1, user_api="blas"):
            processor = MetisWindowProcessor(comps, MODES[mode], ProbeSettings(official, stream_cfg))
            threads[mode] = processor.threads.describe() if processor.threads else "torch's"
            return measure(processor, official, task, geometry, steps, n, hops, speech, ref)

    seconds = None
    compiled = [m for m in modes if m.startswith("compiled")]
    if compiled:  # compile every shape family once, before the timed repeats
        t0 = time.perf_counter()
        try:
            for n in streams:
                for mode in compiled:
                    run(mode, n, 1)
        except Exception as exc:  # noqa: BLE001 - report and measure the other modes
            print(f"{size} {task}: compiled mode failed, left out: {type(exc).__name__}: {exc}", flush=True)
            modes = [m for m in modes if m not in compiled]
        seconds = time.perf_counter() - t0
        print(f"{size} {task}: compiled in {seconds:.0f} s", flush=True)
    times = {(m, n): [] for m in modes for n in streams}
    for _ in range(args.repeats):
        for n in streams:
            for mode in modes:
                times[(mode, n)] += run(mode, n, args.hops)
    rows = []
    for (mode, n), t in times.items():
        row = {
            "size": size,
            "task": task,
            "geometry": f"{geometry.chunk * 20}/{geometry.lookahead * 20}/{geometry.left * 20}",
            "mode": mode,
            "threads": threads[mode],
            "streams": n,
            "hop_ms_p50": float(np.percentile(t, 50)),
            "hop_ms_p99": float(np.percentile(t, 99)),
            "hops": len(t),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows, seconds


def table(rows, modes) -> str:
    """One line per size x task x streams: p50/p99 per mode, old/new ratios, the batching ratio per mode."""
    by = {(r["size"], r["task"], r["streams"], r["mode"]): r["hop_ms_p50"] for r in rows}
    p99 = {(r["size"], r["task"], r["streams"], r["mode"]): r["hop_ms_p99"] for r in rows}
    keys = sorted({(r["size"], r["task"], r["streams"]) for r in rows})
    ratios = [m for m in modes if m != "old"]
    lines = [
        f"| size | task | streams | {' | '.join(f'{m} p50 / p99 ms' for m in modes)} | "
        f"{' | '.join(f'old / {m} (p50)' for m in ratios)} | {' | '.join(f'batching {m}' for m in modes)} |",
        "|---|---|---|" + "---|" * (2 * len(modes) + len(ratios)),
    ]
    for size, task, n in keys:
        got = {m: by.get((size, task, n, m)) for m in modes}
        cells = [f"{got[m]:.0f} / {p99[(size, task, n, m)]:.0f}" if got[m] else "-" for m in modes]
        old = got.get("old")
        rat = [f"{old / got[m]:.2f}" if old and got[m] else "-" for m in ratios]
        batch = []
        for m in modes:
            one = by.get((size, task, 1, m))
            batch.append(f"{got[m] / (n * one):.2f}" if one and got[m] and n > 1 else "-")
        lines.append(f"| {size} | {task} | {n} | {' | '.join(cells)} | {' | '.join(rat)} | {' | '.join(batch)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
