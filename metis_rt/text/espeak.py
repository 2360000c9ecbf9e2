"""espeak-ng through phonemizer: one cached backend per voice, serialised calls, clear errors when absent.

The backend options are those of the MaskGCT / Metis reference frontend: punctuation ``,.?!;:'…`` preserved, no
stress marks, no tie bars, language-switch flags removed, word separator ``|_|``, phone separator ``|``.
Phones depend on the espeak-ng version; the reference vectors were made with espeak-ng 1.51.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from metis_rt.errors import TextFrontendError

logger = logging.getLogger(__name__)

PUNCTUATION_MARKS = ",.?!;:'…"
WORD_SEPARATOR = "|_|"
SYLLABLE_SEPARATOR = "-"
PHONE_SEPARATOR = "|"
VERIFIED_ESPEAK_VERSION = (1, 51)
INSTALL_HINT = "install espeak-ng (Debian/Ubuntu: `apt-get install espeak-ng`) and `pip install phonemizer==3.4.0`"

# espeak-ng is a C library with global state: one lock serialises backend creation and every call.
_LOCK = threading.Lock()
_BACKENDS: dict[str, tuple[Any, Any]] = {}  # voice -> (EspeakBackend, Separator), built on first use


def _phonemizer_logger() -> logging.Logger:
    """phonemizer's own messages ("words count mismatch", expected with preserved punctuation): errors only."""
    quiet = logging.getLogger(f"{__name__}.phonemizer")
    quiet.setLevel(logging.ERROR)
    return quiet


def _create_backend(voice: str) -> tuple[Any, Any]:
    """A phonemizer ``EspeakBackend`` for ``voice`` and the ``Separator`` to call it with."""
    try:
        from phonemizer.backend import EspeakBackend
        from phonemizer.separator import Separator
    except ImportError as exc:
        raise TextFrontendError(f"the text frontend needs phonemizer, which is not importable: {INSTALL_HINT}") from exc
    try:
        backend = EspeakBackend(
            voice,
            punctuation_marks=PUNCTUATION_MARKS,
            preserve_punctuation=True,
            with_stress=False,
            tie=False,
            language_switch="remove-flags",
            words_mismatch="ignore",
            logger=_phonemizer_logger(),
        )
    except RuntimeError as exc:  # library not found, or voice unknown to this espeak-ng
        raise TextFrontendError(f"espeak-ng cannot provide the voice {voice!r}: {exc}; {INSTALL_HINT}") from exc
    version = tuple(backend.version()[:2])
    if version != VERIFIED_ESPEAK_VERSION:
        logger.warning(
            "espeak-ng %s found; phone ids were verified against espeak-ng %s and may differ",
            ".".join(map(str, backend.version())),
            ".".join(map(str, VERIFIED_ESPEAK_VERSION)),
        )
    return backend, Separator(word=WORD_SEPARATOR, syllable=SYLLABLE_SEPARATOR, phone=PHONE_SEPARATOR)


def espeak_phones(line: str, voice: str) -> str:
    """Phones of one line of cleaned text, e.g. ``"hello,world"`` -> ``"h|ə|l|oʊ,w|ɜː|l|d"`` (``en-us``).

    Words are separated by ``|_|``, phones by ``|``; preserved punctuation is glued to the phone before it.
    An empty line gives ``""``.
    Raises :class:`TextFrontendError` when espeak-ng or phonemizer is missing or the voice is unknown.
    """
    with _LOCK:
        if voice not in _BACKENDS:
            _BACKENDS[voice] = _create_backend(voice)
        backend, separator = _BACKENDS[voice]
        phonemized = backend.phonemize([line], separator=separator, strip=True, njobs=1)
    return phonemized[0] if phonemized else ""  # phonemizer drops an empty line


def espeak_available() -> bool:
    """True when phonemizer imports and finds the espeak-ng library (does not build a backend)."""
    try:
        from phonemizer.backend import EspeakBackend
    except ImportError:
        return False
    return bool(EspeakBackend.is_available())
