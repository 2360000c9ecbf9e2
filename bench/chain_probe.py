"""Where a trained SE chain breaks: token statistics stage by stage, on evaluation items.

For each SE item (clean reference + noisy input) of an evaluation set, with noise-free decoding and the model
directory's own decoding settings:

- semantic tokens of the clean speech: how many distinct codes, and how often the noisy speech gets the same code;
- stage 1 on the noisy input: distinct output tokens and the share of the most frequent one (collapse shows as one
  token everywhere);
- the S2A given the *clean* speech's semantic tokens (no prompt): distinct layer-0 codes, and the level of the
  decoded audio (a collapsed S2A emits one code: silence or a constant sound).

  python bench/chain_probe.py --model-dir out/compact/runs/se_after/export --set /tmp/fulleval/set --items 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import soxr
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from codec_resynthesis import read_16k  # noqa: E402

from metis_rt.model_settings import load_official_for  # noqa: E402
from metis_rt.pipeline.components import load_components, resolve_config  # noqa: E402
from metis_rt.pipeline.offline import MetisPipeline  # noqa: E402
from metis_rt.pipeline.process import make_noise, task_settings  # noqa: E402


def level_dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12))


def probe(pipeline: MetisPipeline, settings, clean: np.ndarray, noisy: np.ndarray) -> dict:
    device = pipeline.comps.device
    sem_clean = pipeline.semantic_tokens(torch.from_numpy(clean))
    sem_noisy = pipeline.semantic_tokens(torch.from_numpy(noisy))
    n = min(sem_clean.shape[1], sem_noisy.shape[1])
    stage1 = pipeline.run("se", torch.from_numpy(noisy), settings, make_noise(True, 0, device)).semantic_ids
    n_q = pipeline.comps.cfg.codec_decoder.num_quantizers
    no_prompt = torch.zeros(1, 0, n_q, dtype=torch.long, device=device)
    ids, _ = pipeline.semantic_to_acoustic(sem_clean, no_prompt, settings.s2a, make_noise(True, 0, device))
    wav = soxr.resample(pipeline.code_to_wav(ids)[0].numpy(), 24000, 16000)
    return {
        "semantic_distinct": int(torch.unique(sem_clean).numel()),
        "semantic_clean_noisy_agreement": float((sem_clean[0, :n] == sem_noisy[0, :n]).float().mean()),
        "stage1_distinct": int(torch.unique(stage1).numel()),
        "stage1_mode_share": float((stage1 == stage1.mode().values).float().mean()),
        "s2a_layer0_distinct": int(torch.unique(ids[..., 0]).numel()),
        "s2a_audio_dbfs": level_dbfs(wav),
        "clean_dbfs": level_dbfs(clean),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True, help="a model directory with an SE adapter")
    ap.add_argument("--set", type=Path, required=True, help="an evaluation set folder")
    ap.add_argument("--items", type=int, default=3, help="SE items, the first N in manifest order")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    official = load_official_for(args.model_dir)
    cfg, _ = resolve_config(args.model_dir, "se", official)
    pipeline = MetisPipeline(load_components(args.model_dir, ["se"], cfg))
    settings = task_settings(official, "se")
    manifest = json.loads((args.set / "manifest.json").read_text())
    items = [it for it in manifest["items"] if it["task"] == "se"][: args.items]
    if not items:
        raise SystemExit(f"{args.set}: no SE items")
    for it in items:
        row = probe(pipeline, settings, read_16k(args.set / it["clean"]), read_16k(args.set / it["input"]))
        print(json.dumps({"id": it["id"], **row}), flush=True)


if __name__ == "__main__":
    main()
