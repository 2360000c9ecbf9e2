"""Audio files in and out: reading, mono mix-down, resampling (soxr), checks that an input is usable speech.

Shapes: a signal is ``[N]`` (mono) or ``[N, C]`` (N frames, C channels), float32 in [-1, 1] unless stated.
Sample rates (``sr``) are in Hz.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from metis_rt.errors import AudioInputError, ClippedInputError, MetisError

logger = logging.getLogger(__name__)

RESAMPLE_QUALITY = "HQ"  # soxr quality preset (librosa's default resampler, as used by the official code)
MODEL_RATES_HZ = (16000, 24000)  # w2v-BERT / semantic side, acoustic codec side
DEFAULT_MIN_SPEECH_S = 0.5  # shortest input worth processing
SILENCE_PEAK_DBFS = -60.0  # a peak below this is treated as silence
CLIP_LEVEL = 0.999  # |x| at or above this (of full scale 1.0) counts as clipped
DEFAULT_MAX_CLIPPED_FRACTION = 0.01  # more clipped samples than this fraction is rejected

# extension -> (soundfile format, default subtype). WAV keeps float32 exactly; FLAC has no float subtype.
WRITE_FORMATS = {
    ".wav": ("WAV", "FLOAT"),
    ".flac": ("FLAC", "PCM_24"),
    ".ogg": ("OGG", "VORBIS"),
}
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE", "VORBIS", "OPUS")


class AudioOutputError(MetisError):
    """An output audio file cannot be written (format, path...)."""


# ----------------------------------------------------------------------------- reading
def supported_read_formats() -> list[str]:
    return sorted(sf.available_formats())


def check_audio_file(path: str | Path, what: str = "audio file") -> None:
    """Cheap: `path` exists and its header is one libsndfile reads (nothing decoded). AudioInputError if not."""
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{what} {str(path)!r} does not exist (or is not a file); check the path")
    try:
        sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioInputError(
            f"cannot read {what} {str(path)!r}: soundfile says {exc}. "
            f"Supported formats: {', '.join(supported_read_formats())}; convert the file to WAV or FLAC."
        ) from exc


def check_output_extension(path: str | Path) -> Path:
    """AudioOutputError unless the extension of `path` is one :func:`write_audio` writes."""
    path = Path(path)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise AudioOutputError(f"cannot write {str(path)!r}: use one of the extensions {', '.join(WRITE_FORMATS)}")
    return path


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any file libsndfile understands; return (samples float32 [N, C], sample rate in Hz)."""
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"audio file {str(path)!r} does not exist (or is not a file); check the path")
    try:
        samples, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioInputError(
            f"cannot read audio file {str(path)!r}: soundfile says {exc}. "
            f"Supported formats: {', '.join(supported_read_formats())}; convert the file to WAV or FLAC."
        ) from exc
    return samples, int(sr)


def to_mono(x: np.ndarray) -> np.ndarray:
    """[N] -> [N] unchanged; [N, C] -> [N], the mean of the channels (dtype kept)."""
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise ValueError(f"expected a signal of shape [N] or [N, C], got shape {x.shape}")
    if x.shape[1] == 1:
        return x[:, 0]
    return x.mean(axis=1, dtype=x.dtype)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a [N] (or [N, C]) signal with soxr "HQ"; output dtype = input dtype (float32 or float64)."""
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} Hz -> {sr_out} Hz")
    if sr_in == sr_out:
        return x
    return soxr.resample(np.ascontiguousarray(x), sr_in, sr_out, quality=RESAMPLE_QUALITY)


# ----------------------------------------------------------------------------- validation
def validate_speech(
    x: np.ndarray,
    sr: int,
    *,
    min_seconds: float = DEFAULT_MIN_SPEECH_S,
    name: str = "input",
    max_clipped_fraction: float = DEFAULT_MAX_CLIPPED_FRACTION,
    allow_clipped: bool = False,
) -> None:
    """Raise AudioInputError if `x` ([N] or [N, C]) is not usable speech: NaN/Inf, too short, silent, clipped.

    With `allow_clipped=True`, heavy clipping is logged as a warning instead.
    """
    _check_finite(x, sr, name)
    _check_duration(x, sr, min_seconds, name)
    _check_not_silent(x, name)
    clipped = _clipping_problem(x, max_clipped_fraction, name)
    if clipped and allow_clipped:
        logger.warning("%s (continuing: clipping allowed)", clipped)
    elif clipped:
        raise ClippedInputError(clipped)


def _check_finite(x: np.ndarray, sr: int, name: str) -> None:
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad:
        first = np.argwhere(bad)[0]
        where = f"sample {first[0]} ({first[0] / sr:.3f} s)"
        if x.ndim == 2:
            where += f", channel {first[1]}"
        raise AudioInputError(
            f"{name}: {n_bad} of {x.size} sample(s) are NaN or Inf, the first at {where}; "
            "the file or the code producing it is corrupt: re-export the audio"
        )


def _check_duration(x: np.ndarray, sr: int, min_seconds: float, name: str) -> None:
    duration_s = x.shape[0] / sr
    if duration_s < min_seconds:
        raise AudioInputError(
            f"{name}: {duration_s:.3f} s of audio ({x.shape[0]} samples at {sr} Hz) is too short; "
            f"expected at least {min_seconds:g} s of speech"
        )


def peak_dbfs(x: np.ndarray) -> float:
    """Peak level in dB relative to full scale (1.0); -inf for an all-zero signal."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return 20.0 * np.log10(peak) if peak > 0.0 else float("-inf")


def _check_not_silent(x: np.ndarray, name: str) -> None:
    level_dbfs = peak_dbfs(x)
    if level_dbfs < SILENCE_PEAK_DBFS:
        raise AudioInputError(
            f"{name}: the peak level is {level_dbfs:.1f} dBFS, below {SILENCE_PEAK_DBFS:g} dBFS: the audio "
            "is (nearly) silent; check that the right file/microphone was used and that it is not muted"
        )


def _clipping_problem(x: np.ndarray, max_fraction: float, name: str) -> str | None:
    fraction = float(np.mean(np.abs(x) >= CLIP_LEVEL)) if x.size else 0.0
    if fraction <= max_fraction:
        return None
    return (
        f"{name}: {100 * fraction:.2f} % of the samples are clipped (|x| >= {CLIP_LEVEL}), more than the "
        f"{100 * max_fraction:g} % allowed; lower the input gain and record again"
    )


# ----------------------------------------------------------------------------- model input
def load_for_model(
    path: str | Path,
    rates: Iterable[int] = MODEL_RATES_HZ,
    *,
    min_seconds: float = DEFAULT_MIN_SPEECH_S,
    allow_clipped: bool = False,
    max_clipped_fraction: float = DEFAULT_MAX_CLIPPED_FRACTION,
) -> dict[int, np.ndarray]:
    """Read, mix to mono and check a speech file once; return {rate in Hz: mono float32 [N_rate]} per rate."""
    samples, file_sr = read_audio(path)
    mono = to_mono(samples)
    validate_speech(
        mono,
        file_sr,
        min_seconds=min_seconds,
        name=str(path),
        max_clipped_fraction=max_clipped_fraction,
        allow_clipped=allow_clipped,
    )
    return {sr: resample(mono, file_sr, sr).astype(np.float32, copy=False) for sr in rates}


# ----------------------------------------------------------------------------- writing
def write_audio(path: str | Path, x: np.ndarray, sr: int, subtype: str | None = None) -> Path:
    """Write [N] or [N, C] samples; the extension picks the format (.wav float32, .flac 24-bit, .ogg Vorbis).

    Creates the parent directory. Integer subtypes clip samples outside [-1, 1] (a warning is logged).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_FORMATS:
        raise AudioOutputError(
            f"cannot write {str(path)!r}: unsupported extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(WRITE_FORMATS)}"
        )
    file_format, default_subtype = WRITE_FORMATS[suffix]
    subtype = subtype or default_subtype
    if subtype not in FLOAT_SUBTYPES and x.size and float(np.max(np.abs(x))) > 1.0:
        logger.warning("%s: samples beyond full scale (peak %.1f dBFS) are clipped by %s", path, peak_dbfs(x), subtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(path, x, sr, format=file_format, subtype=subtype)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioOutputError(f"cannot write {str(path)!r} as {file_format}/{subtype}: {exc}") from exc
    return path
