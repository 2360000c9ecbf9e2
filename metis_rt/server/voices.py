"""Server-side voice library: named reference recordings whose tokens and features are computed once.

A voice is ``NAME.wav|flac|ogg`` in the voices folder; ``NAME.txt`` beside it (UTF-8), when present, is its
transcript: the words spoken in it, which TTS needs to speak in that voice.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from metis_rt.audio.files import load_for_model, resample, to_mono, validate_speech
from metis_rt.errors import AudioInputError, TextInputError
from metis_rt.streaming.window import ReferenceTokens

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
TRANSCRIPT_SUFFIX = ".txt"
MAX_TRANSCRIPT_CHARS = 1000
MIN_REFERENCE_S = 1.0
SSL_RATE, CODEC_RATE = 16000, 24000
MIN_REFERENCE_RATE, MAX_REFERENCE_RATE = 8000, 192000  # Hz a reference file may declare
MAX_REFERENCE_CHANNELS = 8
MAX_NAME_CHARS = 128  # a longer voice name is no file here (and would make the file system raise)

Prepare = Callable[[np.ndarray, np.ndarray], ReferenceTokens]  # (16 kHz, 24 kHz) -> tokens, on the engine


def decode_reference(data: bytes, max_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """An uploaded audio file -> (16 kHz, 24 kHz) mono float32; AudioInputError if unusable.

    The header is checked before any sample is decoded (rate, channels, declared length), and at most
    ``max_seconds`` (+1 frame) are decoded, so a small compressed file cannot expand into a large allocation."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            check_reference_header(rate, channels, frames, max_seconds)
            limit = int(max_seconds * rate) + 1
            samples = f.read(min(frames, limit) if frames > 0 else limit, dtype="float32", always_2d=True)
    except AudioInputError:
        raise
    except MemoryError:
        raise AudioInputError("the reference could not be decoded: not enough memory for it") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OverflowError) as exc:
        reason = str(exc)[:120]
        raise AudioInputError(f"the reference is not a readable audio file (wav, flac, ogg): {reason}") from None
    if len(samples) > max_seconds * rate:  # a header that understated its length
        raise AudioInputError(f"the reference is longer than {max_seconds:g} s; at most {max_seconds:g} s")
    mono = to_mono(samples)
    validate_speech(mono, rate, min_seconds=MIN_REFERENCE_S, name="reference")
    return (resample(mono, rate, SSL_RATE).astype(np.float32), resample(mono, rate, CODEC_RATE).astype(np.float32))


def check_reference_header(rate: int, channels: int, frames: int, max_seconds: float) -> None:
    """AudioInputError unless a reference file's header declares a sane rate, channel count and length."""
    if not MIN_REFERENCE_RATE <= rate <= MAX_REFERENCE_RATE:
        raise AudioInputError(
            f"the reference declares {rate} Hz; a reference must be recorded at "
            f"{MIN_REFERENCE_RATE}-{MAX_REFERENCE_RATE} Hz"
        )
    if not 1 <= channels <= MAX_REFERENCE_CHANNELS:
        raise AudioInputError(f"the reference has {channels} channels; at most {MAX_REFERENCE_CHANNELS}")
    if frames > max_seconds * rate:
        raise AudioInputError(f"the reference is {frames / rate:.1f} s long; at most {max_seconds:g} s")


class VoiceLibrary:
    """Voices in a folder: ``NAME.wav|flac|ogg``. Prepared on first use, then cached (thread-safe)."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        self._cache: dict[str, ReferenceTokens] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)

    def path(self, name: str) -> Path:
        if self.folder is not None and "/" not in name and "\\" not in name and 0 < len(name) <= MAX_NAME_CHARS:
            for suffix in AUDIO_SUFFIXES:
                candidate = self.folder / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
        raise KeyError(name)

    def with_transcript(self) -> list[str]:
        """The voices TTS can speak in without a client-given transcript."""
        return [name for name in self.names() if self.transcript(name) is not None]

    def audio(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The voice's recording at (16 kHz, 24 kHz); KeyError for an unknown name, AudioInputError if unusable."""
        audio = load_for_model(self.path(name), rates=(SSL_RATE, CODEC_RATE), min_seconds=MIN_REFERENCE_S)
        return audio[SSL_RATE], audio[CODEC_RATE]

    def transcript(self, name: str) -> str | None:
        """The words spoken in voice ``name`` (``NAME.txt`` beside its audio), or None when there is none."""
        try:
            file = self.path(name).with_suffix(TRANSCRIPT_SUFFIX)
        except KeyError:
            return None
        try:
            text = file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise TextInputError(f"cannot read the transcript {file} of voice {name!r} as UTF-8 text: {exc}") from exc
        if len(text) > MAX_TRANSCRIPT_CHARS:
            raise TextInputError(
                f"the transcript {file} has {len(text)} characters; at most {MAX_TRANSCRIPT_CHARS} (use a shorter clip)"
            )
        return text or None

    def get(self, name: str, prepare: Prepare) -> ReferenceTokens:
        with self._lock:
            if name in self._cache:
                return self._cache[name]
        tokens = prepare(*self.audio(name))
        with self._lock:
            self._cache[name] = tokens
        log.info("voice %r prepared (%d frames)", name, tokens.frames)
        return tokens
