"""Synthetic examples for smoke tests of the training plumbing (``data.source: synthetic``): nothing to learn from.

Each "voice" is a harmonic tone with a vibrato f0 contour and a syllable-rate envelope, written in closed form so
the 16 and 24 kHz versions are the same signal. SE adds white noise; TSE adds a second voice; VC's source is the
same "content" (envelope) in another voice; references are other content in the target voice.
"""

from __future__ import annotations

import math

import numpy as np

from metis_rt.train.example import TASKS, Example

RATE_16K, RATE_24K = 16000, 24000
HARMONICS = 8
F0_RANGE_HZ = (90.0, 220.0)
VIBRATO_DEPTH, VIBRATO_HZ = 0.08, 3.0
SYLLABLE_HZ = 4.0
SNR_DB = 5.0
INTERFERER_GAIN = 0.7
PEAK = 0.5


def _voice(f0: float, content: int, seconds: float, rate: int) -> np.ndarray:
    """[seconds * rate] float32: harmonics of ``f0`` with vibrato, shaped by the envelope of ``content``."""
    gen = np.random.default_rng(content)
    phase0, env_phase, tilt = gen.uniform(0, 2 * math.pi), gen.uniform(0, 2 * math.pi), gen.uniform(0.5, 1.5)
    t = np.arange(int(round(seconds * rate))) / rate
    vib = VIBRATO_DEPTH * np.cos(2 * math.pi * VIBRATO_HZ * t + phase0) / (2 * math.pi * VIBRATO_HZ)
    phase = 2 * math.pi * f0 * (t - vib)
    wav = sum(np.sin(k * phase) / k**tilt for k in range(1, HARMONICS + 1))
    envelope = np.clip(np.sin(2 * math.pi * SYLLABLE_HZ * t + env_phase), 0, None) ** 2
    out = wav * envelope
    return (PEAK * out / max(1e-9, np.abs(out).max())).astype(np.float32)


def _pair(f0: float, content: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    return _voice(f0, content, seconds, RATE_16K), _voice(f0, content, seconds, RATE_24K)


def synthetic_example(task: str, index: int, seconds: float, seed: int) -> Example:
    if task not in TASKS:
        raise ValueError(f"unknown example task {task!r}; expected one of {TASKS}")
    gen = np.random.default_rng([seed, index])
    f0, other_f0 = gen.uniform(*F0_RANGE_HZ, size=2)
    content, other_content = (int(c) for c in gen.integers(0, 2**31, size=2))
    clean_16k, clean_24k = _pair(f0, content, seconds)
    ref_16k = ref_24k = None
    if task == "se":
        noise = gen.standard_normal(len(clean_16k)).astype(np.float32)
        gain = np.sqrt(np.mean(clean_16k**2) / np.mean(noise**2) / 10 ** (SNR_DB / 10))
        degraded = clean_16k + gain * noise
    elif task == "tse":
        degraded = clean_16k + INTERFERER_GAIN * _voice(other_f0, other_content, seconds, RATE_16K)
        ref_16k, ref_24k = _pair(f0, other_content + 1, seconds)
    elif task == "vc":
        degraded = _voice(other_f0, content, seconds, RATE_16K)
        ref_16k, ref_24k = _pair(f0, other_content + 1, seconds)
    else:
        degraded = clean_16k
    return Example(
        task=task,
        clean_16k=clean_16k,
        clean_24k=clean_24k,
        degraded_16k=degraded.astype(np.float32),
        reference_16k=ref_16k,
        reference_24k=ref_24k,
        speaker=f"synthetic-{f0:.0f}hz",
        meta={"synthetic": True, "seed": seed, "index": index},
    )


def synthetic_examples(task: str, count: int, seconds: float, seed: int) -> list[Example]:
    return [synthetic_example(task, i, seconds, seed) for i in range(count)]
