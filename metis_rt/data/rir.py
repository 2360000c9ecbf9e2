"""Synthetic room impulse responses: a direct path, sparse early reflections and an exponential noise tail.

The direct path is sample 0 with amplitude 1, so speech convolved with the RIR stays time-aligned with the
dry speech (the clean reference of a reverberant item). The tail is Gaussian noise under an envelope that
falls by 60 dB in `rt60_s`, gently low-passed (air and walls absorb high frequencies); its energy relative
to the direct path is set by the direct-to-reverberant ratio `drr_db`.
"""

from __future__ import annotations

import numpy as np

DECAY_DB = 60.0  # RT60: the time the energy takes to fall by this much
LENGTH_PER_RT60 = 1.2  # the RIR is this many RT60s long (the tail ends 72 dB down)
MIN_LENGTH_S = 0.05
EARLY_REFLECTIONS = 8
EARLY_WINDOW_S = (0.002, 0.03)  # early reflections arrive within this window after the direct path
TAIL_ONSET_S = 0.002  # the diffuse tail starts after this
TAIL_LOWPASS_HZ = 5000.0  # first-order low-pass corner of the tail
EDC_FIT_DB = (-5.0, -25.0)  # T20: the part of the energy decay curve fitted by `estimate_rt60`


def synthetic_rir(rng: np.random.Generator, sr: int, rt60_s: float, drr_db: float) -> np.ndarray:
    """RIR float32 [L]: rir[0] == 1 (direct path), reverberant energy / direct energy = 10^(-drr_db / 10)."""
    if rt60_s <= 0:
        raise ValueError(f"rt60_s must be positive, got {rt60_s}")
    n = max(round(LENGTH_PER_RT60 * rt60_s * sr), round(MIN_LENGTH_S * sr))
    t = np.arange(n) / sr
    envelope = 10.0 ** (-(DECAY_DB / 20.0) * t / rt60_s)  # amplitude: -60 dB of energy at rt60_s
    tail = rng.standard_normal(n) * envelope * (t >= TAIL_ONSET_S)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    tail = np.fft.irfft(np.fft.rfft(tail) / np.sqrt(1.0 + (freqs / TAIL_LOWPASS_HZ) ** 2), n)
    early = np.zeros(n)
    delays = rng.uniform(*EARLY_WINDOW_S, size=EARLY_REFLECTIONS)
    for delay in delays:
        index = min(n - 1, max(1, round(delay * sr)))
        early[index] += rng.choice((-1.0, 1.0)) * rng.uniform(0.3, 0.8) * envelope[index] * 4.0
    reverberant = tail + early
    reverberant[0] = 0.0
    reverberant *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(reverberant**2))
    reverberant[0] = 1.0
    return reverberant.astype(np.float32)


def energy_decay_db(rir: np.ndarray) -> np.ndarray:
    """Schroeder's backward-integrated energy decay curve [L], in dB re the total energy."""
    energy = np.cumsum(np.asarray(rir, dtype=np.float64)[::-1] ** 2)[::-1]
    return 10.0 * np.log10(np.maximum(energy / energy[0], 1e-30))


def estimate_rt60(rir: np.ndarray, sr: int) -> float:
    """RT60 in seconds from a T20 fit of the energy decay curve (a line through its -5 to -25 dB part)."""
    edc = energy_decay_db(rir)
    upper, lower = EDC_FIT_DB
    fit = np.flatnonzero((edc <= upper) & (edc >= lower))
    if fit.size < 2:
        raise ValueError("the energy decay curve does not span the -5 to -25 dB fit range")
    slope_db_per_s = np.polyfit(fit / sr, edc[fit], 1)[0]
    return -DECAY_DB / slope_db_per_s
