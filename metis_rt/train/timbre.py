"""Timbre perturbation of the VC source in the condition (so stage 1 cannot copy the voice from there).

Metis's VC fine-tuning conditions stage 1 on SSL features of the source while the target is the source's own
semantic tokens; the voice must then come from the prompt. If the condition still carries the source's timbre,
the model can take it from there and ignore the prompt. The paper perturbs the source's timbre; this is our own
perturbation (the paper's exact one is not specified here), applied to the 16 kHz condition input only:

1. **Formant shift** by a factor ``alpha`` (log-uniform in ``formant_shift``): each frame's smooth spectral
   envelope (cepstrally liftered log magnitude) is warped so that the envelope at ``f`` becomes the one at
   ``f / alpha`` (a vocal-tract-length change), while the harmonics (the pitch) and the phases stay. Only the
   ratio of the warped to the original envelope multiplies each bin, limited to ±``max_gain_db``.
2. **Random equaliser**: ``eq_bands`` Gaussian bumps on a log-frequency axis, each with a gain drawn
   uniformly in ±``eq_db``.
3. The result is rescaled to the input's RMS, and its length is unchanged.

The content (timing, phones) stays, which the frame-energy envelope shows (``tests/test_train_data.py``).
Every draw comes from the caller's Generator, and ``meta`` records them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SR = 16000
N_FFT = 512  # 32 ms frames, 8 ms hop
HOP = 128


@dataclass(frozen=True)
class TimbreConfig:
    prob: float = 1.0  # share of VC examples perturbed
    formant_shift: tuple[float, float] = (0.85, 1.18)  # warp factor range (drawn log-uniform)
    eq_bands: int = 3
    eq_db: float = 6.0
    lifter: int = 24  # cepstral coefficients kept for the envelope (about 1.5 ms at 16 kHz)
    max_gain_db: float = 20.0


def draw(rng: np.random.Generator, cfg: TimbreConfig) -> dict | None:
    """The perturbation's parameters, or None when this example is left as it is."""
    if rng.random() >= cfg.prob:
        return None
    lo, hi = np.log(cfg.formant_shift[0]), np.log(cfg.formant_shift[1])
    return {
        "alpha": float(np.exp(rng.uniform(lo, hi))),
        "eq_centres_hz": [float(v) for v in np.exp(rng.uniform(np.log(150.0), np.log(7000.0), cfg.eq_bands))],
        "eq_gains_db": [float(v) for v in rng.uniform(-cfg.eq_db, cfg.eq_db, cfg.eq_bands)],
        "lifter": cfg.lifter,
        "max_gain_db": cfg.max_gain_db,
    }


def eq_curve(params: dict, n_bins: int) -> np.ndarray:
    """Linear gain per rfft bin [n_bins] of the random equaliser (bumps one octave wide at half height)."""
    freqs = np.maximum(np.linspace(0, SR / 2, n_bins), 1.0)
    log_gain_db = np.zeros(n_bins)
    for centre, gain in zip(params["eq_centres_hz"], params["eq_gains_db"], strict=True):
        log_gain_db += gain * np.exp(-0.5 * (np.log2(freqs / centre) / 0.42) ** 2)
    return 10.0 ** (log_gain_db / 20.0)


def smooth_envelope(log_mag: torch.Tensor, lifter: int) -> torch.Tensor:
    """Log magnitude [F, T] -> its smooth envelope [F, T]: the real cepstrum cut to ``lifter`` coefficients."""
    cepstrum = torch.fft.irfft(log_mag, dim=0)  # [2 (F - 1), T], real and even
    cepstrum[lifter + 1 : cepstrum.shape[0] - lifter] = 0
    return torch.fft.rfft(cepstrum, dim=0).real


def apply(x: np.ndarray, params: dict) -> np.ndarray:
    """x [N] float at 16 kHz -> the perturbed signal [N] float32 at the same RMS."""
    if x.ndim != 1:
        raise ValueError(f"timbre perturbation expects a mono waveform [N], got shape {x.shape}")
    if len(x) < N_FFT:
        return x.astype(np.float32, copy=True)
    signal = torch.from_numpy(np.asarray(x, dtype=np.float64))
    window = torch.hann_window(N_FFT, dtype=torch.float64)
    spec = torch.stft(signal, N_FFT, HOP, window=window, return_complex=True, center=True)  # [F, T]
    n_bins = spec.shape[0]
    log_mag = torch.log(spec.abs() + 1e-8)
    envelope = smooth_envelope(log_mag, params.get("lifter", TimbreConfig.lifter))  # [F, T]
    source = torch.arange(n_bins, dtype=torch.float64) / params["alpha"]  # bin k reads the envelope at k / alpha
    lower = source.floor().clamp(max=n_bins - 1).long()
    upper = (lower + 1).clamp(max=n_bins - 1)
    frac = (source - lower).clamp(0, 1)[:, None]
    warped = envelope[lower] * (1 - frac) + envelope[upper] * frac
    limit = params.get("max_gain_db", TimbreConfig.max_gain_db) * np.log(10) / 20
    gain = torch.exp((warped - envelope).clamp(-limit, limit))
    gain = gain * torch.from_numpy(eq_curve(params, n_bins))[:, None]
    spec = spec * gain
    out = torch.istft(spec, N_FFT, HOP, window=window, center=True, length=len(x)).numpy()
    rms_in, rms_out = np.sqrt(np.mean(np.square(x))), np.sqrt(np.mean(np.square(out)))
    if rms_out > 0:
        out = out * (rms_in / rms_out)
    return out.astype(np.float32)
