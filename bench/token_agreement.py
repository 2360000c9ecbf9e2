"""How stable a model directory's semantic tokens are under degradation: the ceiling of what SE can learn.

For validation examples of a training set (``metis-rt data build-train``), the clean speech and its degraded
version are tokenised (w2v-BERT features -> semantic codec) and compared frame by frame. If the tokens of
noisy speech rarely equal those of the clean speech, and consecutive clean tokens rarely repeat, the tokens
carry noise, not phones, and an SE adapter has nothing stable to predict. Also reports how close the SSL
features themselves stay (centred cosine, same frame clean vs degraded, against unrelated frames).

  python bench/token_agreement.py --model-dir out/chain2/models/small --set out/chain/data --examples 24
  python bench/token_agreement.py --ssl-dir RUN/ssl/export --semantic-codec-dir RUN/semantic_codec/export --set ...
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metis_rt.models.semantic_codec import SemanticCodec  # noqa: E402
from metis_rt.models.ssl import SslFeatures  # noqa: E402
from metis_rt.pipeline.components import SEMANTIC_CODEC_FILE, resolve_config  # noqa: E402
from metis_rt.train.data import TrainingExamples  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help="a model directory (or give the two export folders below)")
    ap.add_argument("--ssl-dir", type=Path, help="default: --model-dir")
    ap.add_argument("--semantic-codec-dir", type=Path, help="default: --model-dir")
    ap.add_argument("--set", type=Path, required=True, help="a training set folder (its valid split is used)")
    ap.add_argument("--examples", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    ssl_dir, codec_dir = args.ssl_dir or args.model_dir, args.semantic_codec_dir or args.model_dir
    if ssl_dir is None or codec_dir is None:
        raise SystemExit("give --model-dir, or both --ssl-dir and --semantic-codec-dir")
    index = resolve_config(ssl_dir, "base")[0].ssl.hidden_state_index
    codec_cfg = resolve_config(codec_dir, "base")[0].semantic_codec
    ssl = SslFeatures.load(ssl_dir, hidden_state_index=index)
    codec = SemanticCodec.load(codec_dir / SEMANTIC_CODEC_FILE, codec_cfg)
    # the valid split is small: later epochs draw fresh degradations of the same speech
    examples = (
        ex for epoch in itertools.count() for ex in TrainingExamples(args.set, "se", args.seed, "valid", 4.0, epoch)
    )
    agree, repeat, feature_same, feature_other, snrs = [], [], [], [], []
    clean_ids, noisy_ids = [], []
    for _ in range(args.examples):
        ex = next(examples)
        clean, noisy = ssl(ex.clean_16k), ssl(ex.degraded_16k)
        n = min(clean.shape[1], noisy.shape[1])
        clean, noisy = clean[:, :n], noisy[:, :n]
        a, _ = codec.quantize(clean)
        b, _ = codec.quantize(noisy)
        agree.append(float((a == b).float().mean()))
        clean_ids.append(a.flatten())
        noisy_ids.append(b.flatten())
        repeat.append(float((a[0, 1:] == a[0, :-1]).float().mean()))
        centre = clean[0].mean(0)
        c, d = F.normalize(clean[0] - centre, dim=-1), F.normalize(noisy[0] - centre, dim=-1)
        feature_same.append(float((c * d).sum(-1).mean()))
        feature_other.append(float((c @ c.T).mean()))
        snrs.append(float(ex.meta.get("snr_db", float("nan"))))
    size = codec_cfg.codebook_size
    p_clean = torch.bincount(torch.cat(clean_ids), minlength=size).double()
    p_noisy = torch.bincount(torch.cat(noisy_ids), minlength=size).double()
    p_clean, p_noisy = p_clean / p_clean.sum(), p_noisy / p_noisy.sum()
    used = p_clean[p_clean > 0]
    result = {
        "ssl_dir": str(ssl_dir),
        "semantic_codec_dir": str(codec_dir),
        "examples": len(agree),
        "token_agreement_clean_vs_degraded": float(np.mean(agree)),
        "chance_agreement": float((p_clean * p_noisy).sum()),  # if frames were matched at random
        "clean_token_repeats_previous": float(np.mean(repeat)),
        "clean_codes_used": int((p_clean > 0).sum()),
        "clean_token_entropy_bits": float(-(used * used.log2()).sum()),
        "feature_cosine_same_frame": float(np.mean(feature_same)),
        "feature_cosine_other_frames": float(np.mean(feature_other)),
        "median_snr_db": float(np.nanmedian(snrs)),
        "codebook_size": codec_cfg.codebook_size,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
