"""What one streaming hop is made of: per stage, forwards, operator launches, kernel vs Python time, allocations
and host syncs (issue 20). Counts do not depend on the machine's load; times do, so read them as shares.

  python bench/hop_profile.py --sizes tiny,compact --modes old,fast --threads 1

For each size x mode one SE session is warmed up, then a fresh session's hops (warm-up + one steady hop) run under
``torch.profiler``; all figures are means per hop over them, profiler overhead included. ``ops`` = ATen operators
dispatched (each roughly a kernel launch on a GPU), ``op self ms`` = time inside them, ``Python etc.`` = the hop's
wall time minus that (interpreter, module calls, dispatch), ``allocs`` = allocator events, ``syncs`` =
``aten::_local_scalar_dense`` calls (``.item()``/``int(tensor)``: a device-to-host sync on a GPU). Transformer-stack
calls are counted per stage. Writes JSON (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hop_models import build_chain  # noqa: E402
from hop_speed import MODES  # noqa: E402
from streaming import machine_info, measure  # noqa: E402

from metis_rt.models.transformer import DiffusionTransformer  # noqa: E402
from metis_rt.streaming.geometry import Geometry  # noqa: E402
from metis_rt.streaming.processor import MetisWindowProcessor  # noqa: E402

STAGES = ("_features", "_stage1", "_s2a", "_decode")


class CountingProcessor(MetisWindowProcessor):
    """Counts transformer-stack calls (forward + guided) per stage and times each stage."""

    def __init__(self, comps, speed):
        super().__init__(comps, speed)
        self.stage = "other"
        self.stack_calls: Counter = Counter()
        self.stage_ms: dict[str, float] = {}
        for stage in STAGES:
            setattr(self, stage, self._wrap(stage, getattr(self, stage)))

    def _wrap(self, stage, fn):
        def run(*args):
            self.stage, t0 = stage.strip("_"), time.perf_counter()
            out = fn(*args)
            self.stage_ms[self.stage] = (time.perf_counter() - t0) * 1000
            return out

        return run


def profile_hop(size: str, mode: str, speech) -> dict:
    comps, official, stream_cfg = build_chain(size, "se")
    processor = CountingProcessor(comps, MODES[mode])
    counts = processor.stack_calls
    originals = (DiffusionTransformer.forward, DiffusionTransformer.guided)

    def counted(fn, name):
        def call(self, *a, **k):
            counts[f"{processor.stage}.{name}"] += 1
            return fn(self, *a, **k)

        return call

    geometry = Geometry.from_config(stream_cfg.geometry)
    steps = stream_cfg.steps_for("se")
    measure(processor, official, "se", geometry, steps, 1, 1, speech, None)  # warm caches and allocator
    DiffusionTransformer.forward = counted(originals[0], "forward")
    DiffusionTransformer.guided = counted(originals[1], "guided")
    try:
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            measure(processor, official, "se", geometry, steps, 1, 1, speech, None)
        block_ms = (time.perf_counter() - t0) * 1000
    finally:
        DiffusionTransformer.forward, DiffusionTransformer.guided = originals
    events = prof.key_averages()
    self_ms = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::")) / 1000
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    allocs = sum(e.count for e in events if e.key == "[memory]")
    syncs = sum(e.count for e in events if e.key == "aten::_local_scalar_dense")
    # the profiled block is a fresh session's warm-up hops (growing context) + one steady hop: per-hop means
    warm = int(np.ceil(geometry.left / geometry.chunk)) + 2
    return {
        "size": size,
        "mode": mode,
        "hop_ms": block_ms / warm,  # mean over the profiled hops, profiler overhead included
        "stage_ms": processor.stage_ms,
        "stack_calls_per_hop": {k: v / warm for k, v in sorted(counts.items())},
        "ops_per_hop": ops / warm,
        "op_self_ms_per_hop": self_ms / warm,
        "allocs_per_hop": allocs / warm,
        "syncs_per_hop": syncs / warm,
        "top_ops": [(e.key, e.count // warm, e.self_cpu_time_total / 1000 / warm) for e in _top(events)],
    }


def _top(events, n: int = 8):
    return sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,compact")
    ap.add_argument("--modes", default="old,fast")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hop_profile.json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    speech, _ = sf.read(REPO / "examples" / "speech_noisy.wav", dtype="float32")
    speech = np.tile(speech, 8)
    rows = []
    for size in args.sizes.split(","):
        for mode in args.modes.split(","):
            rows.append(profile_hop(size, mode, speech))
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(load_avg=os.getloadavg()), "rows": rows}, indent=1))
    print(table(rows))


def table(rows) -> str:
    lines = [
        "| size | mode | hop ms | features / stage 1 / S2A / decode ms | stack calls (stage 1, S2A) | ops | "
        "op self ms | Python etc. ms | allocs | syncs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        st = r["stage_ms"]
        calls = r["stack_calls_per_hop"]
        s1 = sum(v for k, v in calls.items() if k.startswith("stage1"))
        s2 = sum(v for k, v in calls.items() if k.startswith("s2a"))
        lines.append(
            f"| {r['size']} | {r['mode']} | {r['hop_ms']:.0f} | "
            f"{st.get('features', 0):.0f} / {st.get('stage1', 0):.0f} / {st.get('s2a', 0):.0f} / "
            f"{st.get('decode', 0):.0f} | {s1:.0f}, {s2:.0f} | {r['ops_per_hop']:.0f} | "
            f"{r['op_self_ms_per_hop']:.0f} | {r['hop_ms'] - r['op_self_ms_per_hop']:.0f} | "
            f"{r['allocs_per_hop']:.0f} | {r['syncs_per_hop']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
