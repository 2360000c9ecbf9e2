"""English text normalisation and the punctuation cleanup done before espeak-ng.

Reproduces the text the MaskGCT / Metis reference frontend hands to the phonemizer (specification: the ``g2p_en``
check of ``tests/data/parity/tts/cases/manifest.json`` and section 10.4 of ``tests/data/parity/README.md``):

1. :func:`expand_abbreviations`: whole words, case-insensitive ("Dr" -> "doctor", "St" -> "saint").
2. :func:`normalize_numbers`: thousands commas, pounds, dollars, fractions, decimals, percent, ordinals, then plain
   numbers with inflect; 1001..2999 are read as years ("1999" -> "nineteen ninety-nine").
3. :func:`clean_punctuation`: full-width punctuation to ASCII, "..." -> "…", every character outside
   ``[\\w\\s,.?!;:'…]`` dropped, spaces around punctuation removed, runs of spaces collapsed.

Every function is pure (str -> str). The spoken words are inflect's; the inserted padding spaces are removed by
step 3, exactly as in the reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import inflect

from metis_rt.errors import TextInputError

_INFLECT = inflect.engine()

# (abbreviation, spoken form), applied in this order as case-insensitive whole words.
ENGLISH_ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    ("mrs", "misess"),
    ("mr", "mister"),
    ("dr", "doctor"),
    ("st", "saint"),
    ("co", "company"),
    ("jr", "junior"),
    ("maj", "major"),
    ("gen", "general"),
    ("drs", "doctors"),
    ("rev", "reverend"),
    ("lt", "lieutenant"),
    ("hon", "honorable"),
    ("sgt", "sergeant"),
    ("capt", "captain"),
    ("esq", "esquire"),
    ("ltd", "limited"),
    ("col", "colonel"),
    ("ft", "fort"),
    ("etc", "et cetera"),
    ("btw", "by the way"),
)
_ABBREVIATION_PATTERNS = tuple(
    (re.compile(rf"\b{abbreviation}\b", re.IGNORECASE), spoken) for abbreviation, spoken in ENGLISH_ABBREVIATIONS
)

# Years: numbers strictly between these bounds are read in pairs of digits ("1066" -> "ten sixty-six").
_YEAR_MIN_EXCLUSIVE = 1000
_YEAR_MAX_EXCLUSIVE = 3000
_MILLENNIUM = 2000
_FIRST_DECADE_OF_MILLENNIUM_END = 2010  # 2001..2009 -> "two thousand one" .. "two thousand nine"

# Only ASCII digits count as digits (Python's \d would also match other scripts' digits).
_COMMA_NUMBER = re.compile(r"[0-9][0-9,]+[0-9]")
_POUNDS = re.compile(r"£([0-9,]*[0-9]+)")
_DOLLARS = re.compile(r"\$([0-9.,]*[0-9]+)")
_FRACTION = re.compile(r"([0-9]+)/([0-9]+)")
_DECIMAL = re.compile(r"[0-9]+\.[0-9]+")
_PERCENT = re.compile(r"[0-9.,]*[0-9]+%")
_ORDINAL = re.compile(r"[0-9]+(?:st|nd|rd|th)")
_NUMBER = re.compile(r"[0-9]+")


def expand_abbreviations(text: str) -> str:
    """Replace the abbreviations of :data:`ENGLISH_ABBREVIATIONS` (whole words, any case) by their spoken form."""
    for pattern, spoken in _ABBREVIATION_PATTERNS:
        text = pattern.sub(spoken, text)
    return text


def _words(number: int | str, **options: object) -> str:
    """inflect's words for ``number``; inflect's own errors (too many digits) become a :class:`TextInputError`."""
    try:
        return _INFLECT.number_to_words(number, **options)
    except Exception as exc:  # inflect raises its own NumOutOfRangeError (and typeguard errors)
        raise TextInputError(
            f"cannot read out the number {str(number)[:40]!r} ({exc!r}); write it in words or with fewer digits"
        ) from exc


def _digits_value(digits: str) -> int:
    """Integer value of a run of digits that may hold stray commas ("" -> 0)."""
    cleaned = digits.replace(",", "")
    return int(cleaned) if cleaned else 0


def _unit(count: int, singular: str) -> str:
    return singular if count == 1 else singular + "s"


def _dollars(match: re.Match[str]) -> str:
    amount = match.group(1)
    parts = amount.split(".")
    if len(parts) > 2:  # "1.2.3": not an amount, keep the digits
        return f" {amount} dollars "
    dollars = _digits_value(parts[0])
    cents = _digits_value(parts[1]) if len(parts) == 2 else 0
    if dollars and cents:
        return f" {dollars} {_unit(dollars, 'dollar')}, {cents} {_unit(cents, 'cent')} "
    if dollars:
        return f" {dollars} {_unit(dollars, 'dollar')} "
    if cents:
        return f" {cents} {_unit(cents, 'cent')} "
    return " zero dollars "


def fraction_to_words(numerator: int, denominator: int) -> str:
    """Spoken fraction, padded with spaces: 1/2 "one half", 3/4 "three quarters", 2/3 "two third" (sic)."""
    if denominator == 2:
        return " one half " if numerator == 1 else f" {_words(numerator)} halves "
    if denominator == 4:
        return " one quarter " if numerator == 1 else f" {_words(numerator)} quarters "
    return f" {_words(numerator)} {_INFLECT.ordinal(_words(denominator))} "


def _fraction(match: re.Match[str]) -> str:
    return fraction_to_words(int(match.group(1)), int(match.group(2)))


def _ordinal(match: re.Match[str]) -> str:
    return f" {_words(match.group(0))} "


def number_to_spoken(number: int) -> str:
    """Words for a non-negative integer; 1001..2999 read as a year, other numbers without "and"."""
    if not _YEAR_MIN_EXCLUSIVE < number < _YEAR_MAX_EXCLUSIVE:
        return _words(number, andword="")
    if number == _MILLENNIUM:
        return "two thousand"
    if _MILLENNIUM < number < _FIRST_DECADE_OF_MILLENNIUM_END:
        return "two thousand " + _words(number % 100)
    if number % 100 == 0:
        return _words(number // 100) + " hundred"
    return _words(number, andword="", zero="oh", group=2).replace(", ", " ")


def _number(match: re.Match[str]) -> str:
    return f" {number_to_spoken(int(match.group(0)))} "


_NUMBER_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (_COMMA_NUMBER, lambda m: m.group(0).replace(",", "")),
    (_POUNDS, lambda m: m.group(1) + " pounds"),
    (_DOLLARS, _dollars),
    (_FRACTION, _fraction),
    (_DECIMAL, lambda m: m.group(0).replace(".", " point ")),
    (_PERCENT, lambda m: m.group(0).replace("%", " percent ")),
    (_ORDINAL, _ordinal),
    (_NUMBER, _number),
)


def normalize_numbers(text: str) -> str:
    """Spell out the numbers of ``text`` (see the module docstring for the order of the rules).

    The replacements are padded with spaces ("2 pears" -> "  two  pears"); :func:`clean_punctuation` collapses them.
    """
    for pattern, spoken in _NUMBER_RULES:
        text = pattern.sub(spoken, text)
    return text


def normalize_english(text: str) -> str:
    """Abbreviations, then numbers: the English text before the punctuation cleanup."""
    return normalize_numbers(expand_abbreviations(text))


# Applied in order with str.replace (so "···" and "..." become "…" after the single characters).
_ASCII_PUNCTUATION: tuple[tuple[str, str], ...] = (
    ("，", ","),
    ("。", "."),
    ("！", "!"),
    ("？", "?"),
    ("；", ";"),
    ("：", ":"),
    ("、", ","),
    ("‘", "'"),
    ("’", "'"),
    ("⋯", "…"),
    ("···", "…"),
    ("・・・", "…"),
    ("...", "…"),
)
KEPT_PUNCTUATION = ",.?!;:'…"
_DROPPED_CHARACTERS = re.compile(r"[^\w\s,.?!;:'…]")
_SPACES_AROUND_PUNCTUATION = re.compile(r"\s*([,.?!;:'…])\s*")
_SPACES = re.compile(r"\s+")


def clean_punctuation(line: str) -> str:
    """The text espeak-ng receives: ASCII punctuation, unsupported characters dropped, spaces tidied.

    ``line`` is one line (no line breaks); e.g. ``'She said: "Never again!"'`` -> ``"She said:Never again!"``.
    """
    line = line.strip()
    for original, ascii_form in _ASCII_PUNCTUATION:
        line = line.replace(original, ascii_form)
    line = _DROPPED_CHARACTERS.sub("", line)
    line = _SPACES_AROUND_PUNCTUATION.sub(r"\1", line)
    return _SPACES.sub(" ", line)
