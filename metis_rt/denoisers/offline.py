"""A whole signal through a frame-wise denoiser, as long as it came in and with the delay removed.

For files and evaluation: the signal is resampled (soxr, whole-signal, delay-free) to the denoiser's native rate,
followed by ``latency_samples`` of zeros (rounded up to whole frames) that flush the tail, processed, shifted back by
exactly ``latency_samples`` and resampled to the input rate. Output sample ``n`` corresponds to input sample ``n``.
"""

from __future__ import annotations

import numpy as np

from metis_rt.audio.files import resample
from metis_rt.denoisers import FrameDenoiser
from metis_rt.errors import AudioInputError


def denoise_signal(denoiser: FrameDenoiser, x: np.ndarray, rate: int) -> np.ndarray:
    """Mono float ``[N]`` at ``rate`` Hz -> float32 ``[N]`` at ``rate`` Hz, time-aligned with the input.

    Runs on the denoiser's current state: pass a fresh (or reset) one for a result that depends on ``x`` alone.
    """
    x = np.asarray(x)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise AudioInputError(f"{denoiser.name}: expected a finite mono [N] signal, got shape {x.shape}")
    if rate <= 0:
        raise AudioInputError(f"{denoiser.name}: the sample rate must be positive, got {rate} Hz")
    native = denoiser.sample_rate
    x_native = resample(x.astype(np.float32, copy=False), rate, native).astype(np.float32)
    frame, lag = denoiser.frame_samples, denoiser.latency_samples
    padded_len = -(-(x_native.shape[0] + lag) // frame) * frame
    padded = np.zeros(padded_len, np.float32)
    padded[: x_native.shape[0]] = x_native
    y_native = denoiser.process(padded)[lag : lag + x_native.shape[0]]
    y = resample(y_native, native, rate).astype(np.float32)
    out = np.zeros(x.shape[0], np.float32)
    count = min(out.shape[0], y.shape[0])
    out[:count] = y[:count]
    return out
