"""Baseline systems: what a user would pick instead of metis-rt, evaluated with the same metrics.

Each baseline has a ``name`` and ``process(x, rate) -> y``: mono float32 ``[N]`` in, float32 ``[N]`` out, time-aligned
with the input (known delays are removed here, so metrics need no help). Every call starts from fresh state and the
same input always gives the same output. The packages come with ``pip install -e ".[eval]"`` and are imported on use.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from metis_rt.audio.files import resample
from metis_rt.errors import AudioInputError
from metis_rt.eval.metrics import require

RNNOISE_RATE_HZ = 48000  # RNNoise's only rate
RNNOISE_FRAME_SAMPLES = 480  # 10 ms at 48 kHz, checked against the library's own frame size
RNNOISE_DELAY_SAMPLES = 2 * RNNOISE_FRAME_SAMPLES  # 20 ms at 48 kHz: output[n + delay] corresponds to input[n]
RNNOISE_SCALE = 32768.0  # RNNoise works on int16-scaled float samples


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


@dataclass(frozen=True)
class RNNoise:
    """RNNoise (Xiph, the recurrent denoiser in many conferencing tools) through pyrnnoise's bundled library.

    The input is resampled to 48 kHz with soxr, processed in 10 ms frames by one fresh RNNoise state, shifted back by
    its 20 ms delay (the tail is flushed with zeros) and resampled to `rate`. We call the library's frame function
    directly instead of ``pyrnnoise.RNNoise.denoise_chunk``: that wrapper resamples with its own filter graph (whose
    extra delay would have to be measured too) and rounds every frame to int16.
    """

    name: str = "rnnoise"

    def process(self, x: np.ndarray, rate: int = 16000) -> np.ndarray:
        x = _check_input(x, rate, self.name)
        rnnoise = require("pyrnnoise.rnnoise", "the RNNoise baseline")
        if rnnoise.FRAME_SIZE != RNNOISE_FRAME_SAMPLES or rnnoise.SAMPLE_RATE != RNNOISE_RATE_HZ:
            raise AudioInputError(
                f"pyrnnoise reports frames of {rnnoise.FRAME_SIZE} samples at {rnnoise.SAMPLE_RATE} Hz; this baseline "
                f"expects {RNNOISE_FRAME_SAMPLES} at {RNNOISE_RATE_HZ} Hz: pin the pyrnnoise version of pyproject.toml"
            )
        x48 = resample(x, rate, RNNOISE_RATE_HZ)
        n_frames = -(-(x48.shape[0] + RNNOISE_DELAY_SAMPLES) // RNNOISE_FRAME_SAMPLES)
        buffer = np.zeros(n_frames * RNNOISE_FRAME_SAMPLES, np.float32)  # [F * 480], denoised in place
        buffer[: x48.shape[0]] = x48 * RNNOISE_SCALE
        state = rnnoise.create()
        try:
            for start in range(0, buffer.shape[0], RNNOISE_FRAME_SAMPLES):
                frame = buffer[start : start + RNNOISE_FRAME_SAMPLES]  # contiguous view
                pointer = frame.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                rnnoise.lib.rnnoise_process_frame(state, pointer, pointer)
        finally:
            rnnoise.destroy(state)
        y48 = buffer[RNNOISE_DELAY_SAMPLES : RNNOISE_DELAY_SAMPLES + x48.shape[0]] / RNNOISE_SCALE
        return _fit_length(resample(y48, RNNOISE_RATE_HZ, rate), x.shape[0])


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


BASELINES: dict[str, type[Baseline]] = {cls.name: cls for cls in (Unprocessed, RNNoise, SpectralGating)}
