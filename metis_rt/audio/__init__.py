"""Audio I/O: files (soundfile), mono mix-down, resampling (soxr), input checks."""

from metis_rt.audio.files import (
    AudioOutputError,
    load_for_model,
    read_audio,
    resample,
    to_mono,
    validate_speech,
    write_audio,
)

__all__ = [
    "AudioOutputError",
    "load_for_model",
    "read_audio",
    "resample",
    "to_mono",
    "validate_speech",
    "write_audio",
]
