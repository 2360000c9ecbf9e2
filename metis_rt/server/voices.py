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

Prepare = Callable[[np.ndarray, np.ndarray], ReferenceTokens]  # (16 kHz, 24 kHz) -> tokens, on the engine


def decode_reference(data: bytes, max_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """An uploaded audio file -> (16 kHz, 24 kHz) mono float32; AudioInputError if unusable."""
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioInputError(f"the reference is not a readable audio file (wav, flac, ogg): {exc}") from None
    mono = to_mono(samples)
    if len(mono) > max_seconds * rate:
        raise AudioInputError(f"the reference is {len(mono) / rate:.1f} s long; at most {max_seconds:g} s")
    validate_speech(mono, rate, min_seconds=MIN_REFERENCE_S, name="reference")
    return (resample(mono, rate, SSL_RATE).astype(np.float32), resample(mono, rate, CODEC_RATE).astype(np.float32))


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
        if self.folder is not None and "/" not in name and "\\" not in name:
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
