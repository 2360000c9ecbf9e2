"""Pure mixing arithmetic: levels on active speech, scaling to an exact SNR / SIR, reverb, peak limits.

Definitions (all signals are mono float [N]):

- *active power* of speech: the mean power of the 20 ms frames whose power is within
  `ACTIVE_RANGE_DB` of the loudest frames (the 99th percentile of frame powers), a simplified ITU-T P.56
  active level; pauses do not dilute it.
- SNR (speech vs noise) = active power of the speech / mean power of the noise over the whole signal.
- SIR (speech vs competing speech) = active power of the target / active power of the interferer.
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.02  # frame length of the level measurement
ACTIVE_RANGE_DB = 35.0  # frames quieter than the loud frames by more than this are pauses
LOUD_PERCENTILE = 99.0  # "the loudest frames": robust against a single click
SPEECH_LEVEL_DBFS = -26.0  # active level utterances are normalised to (ITU-T P.56 convention)
PEAK_LIMIT = 0.99  # written mixtures never exceed this peak (no clipping in PCM16)


def frame_powers(x: np.ndarray, sr: int, frame_s: float = FRAME_S) -> np.ndarray:
    """Mean power of consecutive non-overlapping frames: [N] -> [N // frame]; the last partial frame is dropped
    (a signal shorter than one frame is one frame)."""
    frame = max(1, round(frame_s * sr))
    x = np.asarray(x, dtype=np.float64)
    if x.size < frame:
        return np.array([np.mean(x**2) if x.size else 0.0])
    n_frames = x.size // frame
    return np.mean(x[: n_frames * frame].reshape(n_frames, frame) ** 2, axis=1)


def active_frames(x: np.ndarray, sr: int, range_db: float = ACTIVE_RANGE_DB) -> np.ndarray:
    """Boolean [N // frame]: the frames that carry speech (see the module docstring)."""
    powers = frame_powers(x, sr)
    loud = np.percentile(powers, LOUD_PERCENTILE)
    if loud <= 0.0:
        return np.zeros(powers.shape, dtype=bool)
    return powers >= loud * 10.0 ** (-range_db / 10.0)


def active_power(x: np.ndarray, sr: int) -> float:
    """Mean power over the active frames; 0.0 for digital silence."""
    powers = frame_powers(x, sr)
    mask = active_frames(x, sr)
    return float(np.mean(powers[mask])) if mask.any() else 0.0


def mean_power(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x**2)) if x.size else 0.0


def db(ratio: float) -> float:
    return 10.0 * np.log10(ratio)


def measure_snr_db(speech: np.ndarray, noise: np.ndarray, sr: int) -> float:
    return db(active_power(speech, sr) / mean_power(noise))


def measure_sir_db(target: np.ndarray, interferer: np.ndarray, sr: int) -> float:
    return db(active_power(target, sr) / active_power(interferer, sr))


def set_active_level(x: np.ndarray, sr: int, level_dbfs: float = SPEECH_LEVEL_DBFS) -> np.ndarray:
    """Scale speech so that its active level is `level_dbfs` (re full scale 1.0)."""
    power = active_power(x, sr)
    if power <= 0.0:
        raise ValueError("cannot set the level of a silent signal (no active frames)")
    return (x * np.sqrt(10.0 ** (level_dbfs / 10.0) / power)).astype(x.dtype, copy=False)


def scale_noise_to_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, sr: int) -> np.ndarray:
    """The noise, scaled so that `measure_snr_db(speech, scaled, sr)` equals `snr_db`. Same length required."""
    _check_same_length(speech, noise)
    noise_power = mean_power(noise)
    if noise_power <= 0.0:
        raise ValueError("cannot scale an all-zero noise to an SNR")
    gain = np.sqrt(active_power(speech, sr) / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (noise * gain).astype(noise.dtype, copy=False)


def scale_interferer_to_sir(target: np.ndarray, interferer: np.ndarray, sir_db: float, sr: int) -> np.ndarray:
    """The interferer, scaled so that `measure_sir_db(target, scaled, sr)` equals `sir_db`."""
    _check_same_length(target, interferer)
    interferer_power = active_power(interferer, sr)
    if interferer_power <= 0.0:
        raise ValueError("cannot scale a silent interferer to an SIR")
    gain = np.sqrt(active_power(target, sr) / (interferer_power * 10.0 ** (sir_db / 10.0)))
    return (interferer * gain).astype(interferer.dtype, copy=False)


def apply_rir(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve [N] with a room impulse response [L] (FFT); output [N], aligned with the RIR's sample 0.

    With the direct path at sample 0 (see `rir.py`), the dry input stays time-aligned with the reverberant
    output; the reverberant tail past the end of `x` is cut.
    """
    n = x.size + rir.size - 1
    n_fft = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, n_fft) * np.fft.rfft(rir, n_fft), n_fft)[: x.size]
    return y.astype(x.dtype, copy=False)


def peak_safe_gain(mixture: np.ndarray, peak: float = PEAK_LIMIT) -> float:
    """1.0, or the gain that brings the mixture's peak down to `peak`; apply it to every component alike."""
    current = float(np.max(np.abs(mixture))) if mixture.size else 0.0
    return 1.0 if current <= peak else peak / current


def _check_same_length(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"signals must have the same shape [N] to be mixed, got {a.shape} and {b.shape}")
