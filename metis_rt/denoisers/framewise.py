"""What every frame-wise denoiser adapter shares: input checks, the delay line and the strength mix.

An adapter subclasses ``FramewiseDenoiser`` and supplies ``_denoise_frame`` (one native frame in, one out) and
``_reset_native``. The strength (an attenuation limit in dB) is applied here, in the time domain, for every runtime
alike: ``out = (1 - keep) * denoised + keep * input delayed by latency_samples`` with ``keep = 10 ** (-limit / 20)``,
``keep = 0`` at the upper end of STRENGTH_RANGE_DB (unlimited). At 0 dB ``keep = 1`` and the output is exactly the
delayed input, while the runtime keeps running so its state stays continuous when the strength changes again.
"""

from __future__ import annotations

import math

import numpy as np

from metis_rt.errors import AudioInputError, ConfigError

STRENGTH_RANGE_DB = (0.0, 100.0)
"""Attenuation limit range in dB: 0 = no reduction (delayed input), 100 = unlimited (the default)."""


class StrengthError(ConfigError, ValueError):
    """A denoiser strength (attenuation limit) outside STRENGTH_RANGE_DB or not a finite number."""


def check_strength(attenuation_limit_db: float) -> float:
    """Return the limit as a float, or raise StrengthError naming the range."""
    low, high = STRENGTH_RANGE_DB
    try:
        value = float(attenuation_limit_db)
    except (TypeError, ValueError):
        raise StrengthError(
            f"denoiser strength must be a number of dB in [{low:g}, {high:g}], got {attenuation_limit_db!r}"
        ) from None
    if not (math.isfinite(value) and low <= value <= high):
        raise StrengthError(
            f"denoiser strength must be an attenuation limit in [{low:g}, {high:g}] dB "
            f"(0 = off, {high:g} = unlimited), got {attenuation_limit_db!r}"
        )
    return value


def keep_fraction(attenuation_limit_db: float) -> float:
    """Linear share of the delayed input mixed back in: 1 at 0 dB, 0 at the unlimited end."""
    if attenuation_limit_db >= STRENGTH_RANGE_DB[1]:
        return 0.0
    return 10.0 ** (-attenuation_limit_db / 20.0)


class FramewiseDenoiser:
    """Base of the adapters: one instance = one stream's state; one thread at a time.

    Subclasses set ``name``, ``sample_rate``, ``frame_samples``, ``latency_samples`` before calling ``__init__``
    (as class attributes) and implement ``_denoise_frame`` and ``_reset_native``. A strength change is ramped
    linearly over the first frame processed after it (no click); before any audio, it applies at once.
    """

    name: str
    sample_rate: int
    frame_samples: int
    latency_samples: int

    def __init__(self) -> None:
        self._history = np.zeros(self.latency_samples, np.float32)  # [latency_samples] newest input, oldest first
        self._keep = keep_fraction(STRENGTH_RANGE_DB[1])  # applied to the last sample out
        self._keep_target = self._keep
        self._fresh = True  # no audio since construction or reset(): a strength applies without a ramp

    # -- the contract ---------------------------------------------------------------------------------
    def process(self, frames: np.ndarray) -> np.ndarray:
        """float32 mono ``[T]`` with ``T % frame_samples == 0`` -> float32 ``[T]`` (delayed by latency_samples)."""
        x = self._check_frames(frames)
        denoised = np.empty_like(x)
        for start in range(0, x.shape[0], self.frame_samples):
            stop = start + self.frame_samples
            self._denoise_frame(x[start:stop], denoised[start:stop])
        delayed = self._delay(x)
        if x.shape[0]:
            self._fresh = False
        return self._mix(denoised, delayed)

    def reset(self) -> None:
        """The fresh state (as just opened); the strength set last stays. Free when no audio came since the last
        reset or the opening; otherwise the native state is rebuilt (DeepFilterNet3: a new model state, tenths of
        a second on one core)."""
        if not self._fresh:
            self._reset_native()
        self._history[:] = 0.0
        self._keep = self._keep_target
        self._fresh = True

    def set_strength(self, attenuation_limit_db: float) -> None:
        """Attenuation limit in dB within STRENGTH_RANGE_DB: 0 = the delayed input exactly, 100 = unlimited."""
        self._keep_target = keep_fraction(check_strength(attenuation_limit_db))
        if self._fresh:
            self._keep = self._keep_target

    # -- for subclasses -------------------------------------------------------------------------------
    def _denoise_frame(self, frame: np.ndarray, out: np.ndarray) -> None:
        """Denoise one contiguous float32 ``[frame_samples]`` frame into ``out`` (same shape), keeping state."""
        raise NotImplementedError

    def _reset_native(self) -> None:
        raise NotImplementedError

    # -- internals ------------------------------------------------------------------------------------
    def _check_frames(self, frames: np.ndarray) -> np.ndarray:
        what = f"{self.name} denoiser"
        if not isinstance(frames, np.ndarray):
            raise AudioInputError(f"{what}: expected a numpy float32 array, got {type(frames).__name__}")
        if frames.dtype != np.float32:
            raise AudioInputError(f"{what}: expected float32 samples, got {frames.dtype} (convert with .astype)")
        if frames.ndim != 1:
            raise AudioInputError(f"{what}: expected mono [T] samples, got shape {frames.shape}")
        if frames.shape[0] % self.frame_samples:
            raise AudioInputError(
                f"{what}: expected a whole number of {self.frame_samples}-sample frames "
                f"({1000 * self.frame_samples / self.sample_rate:g} ms at {self.sample_rate} Hz), "
                f"got {frames.shape[0]} samples: buffer the remainder until the next call"
            )
        bad = int(np.count_nonzero(~np.isfinite(frames)))
        if bad:
            raise AudioInputError(f"{what}: {bad} sample(s) are NaN or Inf; nothing was processed")
        return np.ascontiguousarray(frames)

    def _delay(self, x: np.ndarray) -> np.ndarray:
        """``[T]`` input -> ``[T]`` input delayed by latency_samples (the delay line carries across calls)."""
        joined = np.concatenate([self._history, x])
        self._history = joined[joined.shape[0] - self.latency_samples :].copy()
        return joined[: x.shape[0]]

    def _mix(self, denoised: np.ndarray, delayed: np.ndarray) -> np.ndarray:
        start, target = self._keep, self._keep_target
        if start == target:
            if target == 0.0:
                return denoised
            if target == 1.0:
                return delayed.copy()
            return ((1.0 - target) * denoised + target * delayed).astype(np.float32)
        keep = np.full(denoised.shape[0], target, np.float64)
        ramp = min(self.frame_samples, denoised.shape[0])
        keep[:ramp] = start + (target - start) * (np.arange(1, ramp + 1) / ramp)
        if denoised.shape[0]:
            self._keep = target
        return ((1.0 - keep) * denoised + keep * delayed).astype(np.float32)
