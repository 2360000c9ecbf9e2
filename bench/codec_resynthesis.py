"""The quality ceiling an acoustic codec puts on a whole chain: clean speech -> codec tokens -> audio.

Whatever stage 1 and the S2A do, the chain's output is this codec's decoding of some token sequence, so the
codec's own resynthesis of the *clean* speech bounds what the chain can reach. For the SE items of an evaluation
set (``metis-rt data build-eval``), each clean reference is encoded and decoded with its first ``q`` codebooks
(every ``--quantizers`` value) and scored against the clean speech: DNSMOS OVRL, STOI, speaker similarity.
The clean and noisy signals are scored too, for scale.

  python bench/codec_resynthesis.py --model-dir out/compact/models/small --set /tmp/fulleval/set --items 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from streaming import machine_info  # noqa: E402

from metis_rt.eval.metrics import dnsmos, speaker_similarity, stoi  # noqa: E402
from metis_rt.models.acoustic_codec import AcousticCodec  # noqa: E402
from metis_rt.pipeline.components import CODEC_DECODER_FILE, CODEC_ENCODER_FILE, resolve_config  # noqa: E402

CODEC_RATE, METRIC_RATE = 24000, 16000


def read_16k(path: Path) -> np.ndarray:
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    return x if rate == METRIC_RATE else soxr.resample(x, rate, METRIC_RATE).astype(np.float32)


def resynthesise(codec: AcousticCodec, x16: np.ndarray, n_q: int) -> np.ndarray:
    x24 = soxr.resample(x16, METRIC_RATE, CODEC_RATE).astype(np.float32)
    hop = codec.hop_samples
    padded = np.pad(x24, (0, -len(x24) % hop))
    with torch.no_grad():
        ids = codec.encode(torch.from_numpy(padded)[None])
        y24 = codec.decode(ids, n_q)[0].numpy()[: len(x24)]
    return soxr.resample(y24, CODEC_RATE, METRIC_RATE).astype(np.float32)


def scores(y: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    n = min(len(y), len(clean))
    return {
        "dnsmos_ovrl": dnsmos(y)["dnsmos_ovrl"],
        "stoi": stoi(y[:n], clean[:n]),
        "speaker_sim": speaker_similarity(y, clean),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--set", type=Path, required=True, help="an evaluation set folder")
    ap.add_argument("--items", type=int, default=12, help="SE items, the first N in manifest order")
    ap.add_argument("--quantizers", default="", help="comma list of codebook counts (default: all of them)")
    ap.add_argument("--out", type=Path, help="JSON with per-item rows")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    cfg, _ = resolve_config(args.model_dir, "se")
    codec = AcousticCodec.load(
        args.model_dir / CODEC_ENCODER_FILE, args.model_dir / CODEC_DECODER_FILE, cfg.codec_encoder, cfg.codec_decoder
    )
    all_q = cfg.codec_decoder.num_quantizers
    qs = [int(q) for q in args.quantizers.split(",") if q] or [all_q]
    if any(not 1 <= q <= all_q for q in qs):
        raise SystemExit(f"--quantizers: each value must be in 1..{all_q}")
    manifest = json.loads((args.set / "manifest.json").read_text())
    items = [it for it in manifest["items"] if it["task"] == "se"][: args.items]
    if not items:
        raise SystemExit(f"{args.set}: no SE items")
    rows = []
    for it in items:
        clean, noisy = read_16k(args.set / it["clean"]), read_16k(args.set / it["input"])
        row = {"id": it["id"], "clean": scores(clean, clean), "noisy": scores(noisy, clean)}
        for q in qs:
            row[f"codec_q{q}"] = scores(resynthesise(codec, clean, q), clean)
        rows.append(row)
        print(json.dumps(row), flush=True)
    systems = [k for k in rows[0] if k != "id"]
    print(f"\n{len(rows)} SE items of {args.set}; model {args.model_dir}\n")
    print("| signal | DNSMOS OVRL | STOI | speaker sim |\n|---|---|---|---|")
    for s in systems:
        mean = {m: float(np.mean([r[s][m] for r in rows])) for m in ("dnsmos_ovrl", "stoi", "speaker_sim")}
        print(f"| {s} | {mean['dnsmos_ovrl']:.2f} | {mean['stoi']:.2f} | {mean['speaker_sim']:.2f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine_info(), "model_dir": str(args.model_dir), "rows": rows}))


if __name__ == "__main__":
    main()
