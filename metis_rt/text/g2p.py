"""Text -> phone string, as the MaskGCT / Metis reference frontend (``g2p_(text, language)``) writes it.

English (``"en"``, verified against the reference vectors): :func:`~metis_rt.text.normalize.normalize_english`,
:func:`~metis_rt.text.normalize.clean_punctuation`, espeak-ng ``en-us``, then

* punctuation becomes a symbol of its own (``"oʊ,"`` -> ``"oʊ|,"``), runs of ``|`` collapse, a trailing ``|`` goes;
* a word boundary ``|_`` is appended when the last character is a sound (:data:`SOUND_FINAL_CHARACTERS`);
* :data:`SPECIAL_MERGES` rewrite whole symbols (``t|ɹ`` -> ``tɹ``, ``ɐ`` -> ``ɚ``...);
* the text is one Latin segment of the reference's Chinese/English splitter: ``|`` is appended, and a final
  ``_|`` is removed (so ``"Hello"`` -> ``"h|ə|l|oʊ|"``).

French (``"fr"``, espeak ``fr-fr``) and German (``"de"``, espeak ``de``) follow the reference's rules but are
**not verified against reference vectors**. Chinese, Japanese and Korean need lexicons and models of the reference
that are not available offline and are rejected, as is language detection (``None`` / ``"auto"``).
"""

from __future__ import annotations

import re

from metis_rt.errors import TextInputError
from metis_rt.text.espeak import PHONE_SEPARATOR, PUNCTUATION_MARKS, espeak_phones
from metis_rt.text.normalize import clean_punctuation, normalize_english
from metis_rt.text.normalize_fr_de import normalize_french, normalize_german

WORD_BOUNDARY = "_"
SUPPORTED_LANGUAGES = ("en", "fr", "de")
VERIFIED_LANGUAGES = ("en",)
_ESPEAK_VOICES = {"en": "en-us", "fr": "fr-fr", "de": "de"}
_UNAVAILABLE_LANGUAGES = {
    "zh": "Chinese needs the reference's pinyin lexicon and polyphone BERT model, which are not available offline",
    "ja": "Japanese needs the reference's MeCab/pyopenjtalk pipeline, which is not part of metis-rt",
    "ko": "Korean needs the reference's jamo/g2pk pipeline, which is not part of metis-rt",
}

# A phone string ending in one of these characters ends in a sound (not punctuation): a word boundary follows.
SOUND_FINAL_CHARACTERS = frozenset("p⁼ʰmftnlkxʃs`ɹaoəɛɪeɑʊŋiuɥwæjː")

# (symbols, replacement) applied in this order to whole symbols of an English phone string.
SPECIAL_MERGES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("t", "ɹ"), "tɹ"),
    (("d", "ɹ"), "dɹ"),
    (("t", "s"), "ts"),
    (("d", "z"), "dz"),
    (("ɪ", "ɹ"), "ɪɹ"),
    (("ɐ",), "ɚ"),
    (("ᵻ",), "ɪ"),
    (("əl",), "l"),
    (("x",), "k"),
    (("ɬ",), "l"),
    (("ʔ",), "t"),
    (("n̩",), "n"),
    (("oː", "ɹ"), "oːɹ"),
)

# The reference routes these characters (CJK unified ideographs U+4E00..U+9FA5) to its Chinese frontend.
_HAN = re.compile("[\u4e00-\u9fa5]")
_MARKED_PUNCTUATION = re.compile(f"([{re.escape(PUNCTUATION_MARKS)}])")
_SEPARATOR_RUNS = re.compile(r"\|+")


def check_language(language: str | None) -> str:
    """Return ``language`` when this frontend supports it; otherwise raise :class:`TextInputError` saying why."""
    if language in SUPPORTED_LANGUAGES:
        return language
    supported = ", ".join(repr(code) for code in SUPPORTED_LANGUAGES)
    if language is None or language == "auto":
        raise TextInputError(f"language detection is not supported: pass the language explicitly ({supported})")
    if language in _UNAVAILABLE_LANGUAGES:
        raise TextInputError(f"language {language!r} is not supported: {_UNAVAILABLE_LANGUAGES[language]}")
    raise TextInputError(f"language {language!r} is not supported; supported languages: {supported}")


def mark_punctuation(phones: str) -> str:
    """Make each punctuation mark a symbol: ``"h|ə|l|oʊ,|w"`` -> ``"h|ə|l|oʊ|,|w"`` (no trailing ``|``)."""
    phones = _MARKED_PUNCTUATION.sub(r"|\1|", phones)
    return _SEPARATOR_RUNS.sub(PHONE_SEPARATOR, phones).rstrip(PHONE_SEPARATOR)


def _merge(symbols: list[str], pattern: tuple[str, ...], replacement: str) -> list[str]:
    """Replace each non-overlapping run of ``pattern`` in ``symbols``, left to right."""
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if tuple(symbols[i : i + len(pattern)]) == pattern:
            merged.append(replacement)
            i += len(pattern)
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def apply_special_merges(phones: str) -> str:
    """Apply :data:`SPECIAL_MERGES` to whole ``|``-separated symbols: ``"t|ɹ|uː"`` -> ``"tɹ|uː"``.

    One left-to-right pass per rule reaches the fixed point: no replacement is an element of its own pattern.
    """
    symbols = phones.split(PHONE_SEPARATOR)
    for pattern, replacement in SPECIAL_MERGES:
        symbols = _merge(symbols, pattern, replacement)
    return PHONE_SEPARATOR.join(symbols)


def english_phones(text: str) -> str:
    """The reference's phone string for English ``text`` (see the module docstring), e.g. ``"Hi." -> "h|aɪ|.|"``.

    Line breaks are read as spaces (the reference phonemises each line apart and loses the first phone of every
    line after the first).
    """
    if _HAN.search(text):
        raise TextInputError(
            "the text holds Chinese characters, which the reference reads with its Chinese frontend "
            f"({_UNAVAILABLE_LANGUAGES['zh']}); remove them or spell them in Latin letters"
        )
    line = clean_punctuation(normalize_english(text).replace("\n", " "))
    phones = mark_punctuation(espeak_phones(line, _ESPEAK_VOICES["en"]))
    if not phones:
        raise TextInputError(f"the text {text[:80]!r} produces no phones: it holds no pronounceable words")
    if phones[-1] in SOUND_FINAL_CHARACTERS:
        phones += PHONE_SEPARATOR + WORD_BOUNDARY
    phones = apply_special_merges(phones) + PHONE_SEPARATOR
    final_boundary = WORD_BOUNDARY + PHONE_SEPARATOR
    return phones[: -len(final_boundary)] if phones.endswith(final_boundary) else phones


def european_phones(text: str, language: str) -> str:
    """The reference's phone string for French or German ``text``; **not verified against reference vectors**."""
    normalized = normalize_french(text) if language == "fr" else normalize_german(text)
    return mark_punctuation(espeak_phones(clean_punctuation(normalized), _ESPEAK_VOICES[language]))


def phonemize(text: str, language: str) -> str:
    """Phone string of ``text`` in ``language`` (``"en"``, ``"fr"``, ``"de"``), ``|``-separated, ``_`` between words.

    Raises :class:`TextInputError` for empty text, an unsupported language, or text without pronounceable words,
    and :class:`~metis_rt.errors.TextFrontendError` when espeak-ng is missing.
    """
    if not isinstance(text, str):
        raise TextInputError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise TextInputError("nothing to say: the text is empty or only whitespace")
    language = check_language(language)
    phones = english_phones(text) if language == "en" else european_phones(text, language)
    silent = set(PUNCTUATION_MARKS) | {WORD_BOUNDARY, ""}
    if all(symbol in silent for symbol in phones.split(PHONE_SEPARATOR)):
        raise TextInputError(f"the text {text[:80]!r} produces no phones: it holds no pronounceable words")
    return phones
