"""Where one streaming hop spends its time, stage by stage, for one stream on the CPU.

For each model x geometry x decoding-steps setting, one session of ``--task`` (SE by default; TSE and VC with
examples/reference.wav as the reference) is fed chunk by chunk and the engine runs one step per chunk (as
``bench/streaming.py`` does for one stream); the window processor's four stages are timed separately: w2v-BERT
features, stage 1 (masked generative decoding of semantic tokens), S2A (semantic to acoustic tokens, one layer per
codebook) and the codec decoder (Vocos + iSTFT). Steady-state hops only (left context full).
RTF = hop compute / chunk duration; real time needs RTF < 1, issue 8 asks for <= 0.5 at <= 300 ms latency.

  python bench/cpu_profile.py --models tiny,dir:out/chain2/models/small \\
      --geometries 240/160/1600,160/80/960,160/80/480 --steps 4:8,4,1 --steps 2:4,2,1 --steps 1:1,1,1

``--steps S1:A,B,C``: S1 stage-1 steps; S2A steps A for the 1-layer model, B for layer 1 of the full model and C
for every later layer (default: the model directory's streaming steps, configs/streaming.yaml < metis-rt.yaml).
Writes JSON (``--out``) and prints a markdown table. Record results in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from streaming import PARITY, machine_info, measure, parse_geometry  # noqa: E402

from metis_rt.audio.files import resample  # noqa: E402
from metis_rt.model_settings import check_codebooks, load_official_for, load_stream_config_for  # noqa: E402
from metis_rt.pipeline.components import load_components, resolve_config  # noqa: E402
from metis_rt.streaming.config import StepsConfig  # noqa: E402
from metis_rt.streaming.geometry import Geometry  # noqa: E402
from metis_rt.streaming.processor import MetisWindowProcessor  # noqa: E402

STAGES = ("features", "stage1", "s2a", "decode")
TASKS = ("se", "tse", "vc")


class TimedProcessor(MetisWindowProcessor):
    """The real window processor with a wall-clock timer around each of its four stages."""

    def __init__(self, comps):
        super().__init__(comps)
        self.spent: dict[str, list[float]] = defaultdict(list)

    def _timed(self, stage: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.spent[stage].append((time.perf_counter() - t0) * 1000)
        return out

    def _features(self, jobs):
        return self._timed("features", super()._features, jobs)

    def _stage1(self, jobs, features):
        return self._timed("stage1", super()._stage1, jobs, features)

    def _s2a(self, jobs, semantic):
        return self._timed("s2a", super()._s2a, jobs, semantic)

    def _decode(self, jobs, acoustic):
        return self._timed("decode", super()._decode, jobs, acoustic)


def parse_steps(text: str, layers: int) -> StepsConfig:
    """'S1:A,B,C' -> StepsConfig(stage1=S1, s2a=(A, B, C, C, ... one per codebook layer))."""
    stage1, rest = text.split(":")
    a, b, c = (int(v) for v in rest.split(","))
    return StepsConfig(stage1=int(stage1), s2a=(a, b) + (c,) * (layers - 2))


def load(model: str, task: str):
    """(components, decoding settings, streaming settings) of a model directory (its metis-rt.yaml applied)."""
    if model == "tiny":
        model_dir = PARITY / task
    elif model.startswith("dir:"):
        model_dir = Path(model[4:])
    else:
        raise SystemExit(f"--models: 'tiny' or 'dir:PATH', got {model!r}")
    official, stream_cfg = load_official_for(model_dir), load_stream_config_for(model_dir)
    cfg, _ = resolve_config(model_dir, task, official)
    check_codebooks(model_dir, cfg, [task], official, stream_cfg)
    return load_components(model_dir, [task], cfg), official, stream_cfg


def parameters(comps) -> dict[str, int]:
    """Parameter counts per component (stage 1: every loaded variant)."""

    def count(*modules: torch.nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    names = ("ssl", "semantic_codec", "s2a_1layer", "s2a_full", "acoustic_codec")
    return {"stage1": count(*comps.stage1.values()), **{name: count(getattr(comps, name)) for name in names}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--task", default="se", choices=TASKS, help="tse/vc: with examples/reference.wav as the reference")
    ap.add_argument("--geometries", default="240/160/1600,160/80/960,160/80/480")
    ap.add_argument("--steps", action="append", help="S1:A,B,C (repeatable; default: the model's streaming steps)")
    ap.add_argument("--hops", type=int, default=8, help="measured steady-state hops per point")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu_profile.json")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    speech, _ = sf.read(REPO / "examples" / "speech_noisy.wav", dtype="float32")
    speech = np.tile(speech, 8)
    ref16, _ = sf.read(REPO / "examples" / "reference.wav", dtype="float32")
    ref24 = resample(ref16, 16000, 24000).astype(np.float32)
    rows = []
    for model in args.models.split(","):
        comps, official, stream_cfg = load(model, args.task)
        layers = comps.cfg.codec_decoder.num_quantizers
        steps_list = [parse_steps(s, layers) for s in args.steps] if args.steps else [stream_cfg.steps_for(args.task)]
        for text in args.geometries.split(","):
            geometry = Geometry.from_config(parse_geometry(text))
            chunk_ms = geometry.chunk * 20
            for steps in steps_list:
                processor = TimedProcessor(comps)
                ref = processor.prepare_reference(ref16, ref24) if args.task != "se" else None
                times = measure(processor, official, args.task, geometry, steps, 1, args.hops, speech, ref)
                n = len(times)  # the last n entries of each stage are the measured hops
                stage_ms = {s: float(np.median(processor.spent[s][-n:])) for s in STAGES}
                p50 = float(np.median(times))
                row = {
                    "model": model,
                    "task": args.task,
                    "geometry": text,
                    "latency_ms": geometry.latency_ms,
                    "steps": f"{steps.stage1}:{steps.s2a[0]},{steps.s2a[1]},{steps.s2a[2]}",
                    "hop_ms_p50": p50,
                    "hop_ms_p99": float(np.percentile(times, 99)),
                    **{f"{s}_ms": v for s, v in stage_ms.items()},
                    "rtf": p50 / chunk_ms,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        print(model, "parameters:", parameters(comps), flush=True)
    machine = machine_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(table(rows))


def table(rows) -> str:
    lines = [
        "| model | task | chunk/lookahead/left ms | latency ms | steps | hop p50 ms | features | stage 1 | S2A | "
        "decoder | RTF |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['task']} | {r['geometry']} | {r['latency_ms']:.0f} | {r['steps']} | "
            f"{r['hop_ms_p50']:.0f} | {r['features_ms']:.0f} | {r['stage1_ms']:.0f} | {r['s2a_ms']:.0f} | "
            f"{r['decode_ms']:.0f} | {r['rtf']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
