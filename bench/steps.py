"""Cost of one streaming hop vs decoding steps (how the streaming step defaults were chosen).

Measures the per-hop compute of one SE stream (tiny reference-layout model, CPU) for several step settings, and
computes the official-size cost per hop from the per-token forward costs measured with FlopCounterMode in
tests/data/spec/keys/flops_measured.json (stage 1 ~1.25 GFLOP/token/pass, S2A ~0.57, w2v-BERT 42 GFLOP per second of
window, codec decoder 12.8 GFLOP per second decoded).

  python bench/steps.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from streaming import PARITY, REPO, measure  # noqa: E402

from metis_rt.pipeline.components import load_components, resolve_config  # noqa: E402
from metis_rt.streaming.config import StepsConfig, load_stream_config  # noqa: E402
from metis_rt.streaming.geometry import Geometry  # noqa: E402
from metis_rt.streaming.processor import MetisWindowProcessor  # noqa: E402

SETTINGS = {
    "official offline (10; 40,16,1x10)": StepsConfig(10, (40, 16) + (1,) * 10),
    "streaming default (4; 8,4,1x10)": StepsConfig(4, (8, 4) + (1,) * 10),
    "lighter (2; 4,2,1x10)": StepsConfig(2, (4, 2) + (1,) * 10),
    "minimum (1; 1x12)": StepsConfig(1, (1,) * 12),
}
GFLOP_STAGE1_TOKEN, GFLOP_S2A_TOKEN, GFLOP_W2V_S, GFLOP_DEC_S = 1.25, 0.57, 42.0, 12.8


def official_gflop_per_hop(g: Geometry, steps: StepsConfig, s2a_cfg: float = 2.5) -> float:
    """SE, steady state: stage 1 over [left | target], S2A over [s2a_left | target] (+ target-only CFG passes)."""
    target = g.chunk + g.lookahead
    stage1 = steps.stage1 * (g.left + target) * GFLOP_STAGE1_TOKEN
    s2a_cond = (steps.s2a[0] + sum(steps.s2a[1:])) * (g.s2a_left + target) * GFLOP_S2A_TOKEN
    s2a_uncond = (sum(steps.s2a[1:]) * target * GFLOP_S2A_TOKEN) if s2a_cfg > 0 else 0.0
    w2v = (g.left + target) * 0.02 * GFLOP_W2V_S
    decoder = (g.decoder_left + target) * 0.02 * GFLOP_DEC_S
    return stage1 + s2a_cond + s2a_uncond + w2v + decoder


def main() -> None:
    torch.set_grad_enabled(False)
    cfg, official = resolve_config(PARITY / "se", "se")
    processor = MetisWindowProcessor(load_components(PARITY / "se", ["se"], cfg))
    speech, _ = sf.read(REPO / "examples" / "speech_noisy.wav", dtype="float32")
    geometry = Geometry.from_config(load_stream_config().geometry)
    print(
        f"geometry: chunk {geometry.chunk * 20} ms, lookahead {geometry.lookahead * 20} ms, "
        f"left {geometry.left * 20} ms"
    )
    print(
        "| steps (stage 1; S2A per layer) | tiny CPU ms/hop p50 | official GFLOP/hop | official GFLOP per s of audio |"
    )
    print("|---|---|---|---|")
    for name, steps in SETTINGS.items():
        times = measure(processor, official, "se", geometry, steps, 1, 6, np.tile(speech, 8), None)
        gflop = official_gflop_per_hop(geometry, steps)
        print(f"| {name} | {np.percentile(times, 50):.0f} | {gflop:.0f} | {gflop / (geometry.chunk * 0.02):.0f} |")


if __name__ == "__main__":
    main()
