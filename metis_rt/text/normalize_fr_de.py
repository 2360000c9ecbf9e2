"""French and German text normalisation of the reference frontend. **Not verified against reference vectors.**

Both languages: full-width and typographic punctuation mapped (``"…"`` and ``"..."`` -> ``"."``, quotes and
brackets dropped, line breaks -> ``"."``), ``;`` and ``:`` -> ``,``, ``-`` -> space, leading ``,.!?`` removed,
whitespace collapsed. French also expands abbreviations ("M." -> "monsieur", "Mme" -> "Madame") and ``&`` -> "et".
Numbers are left to espeak-ng. Pure functions.
"""

from __future__ import annotations

import re

# Replaced all at once (one pass, no rescanning of replacements).
_PUNCTUATION_MAP: dict[str, str] = {
    "：": ",",
    "；": ",",
    "，": ",",
    "。": ".",
    "！": "!",
    "？": "?",
    "\n": ".",
    "·": ",",
    "、": ",",
    "...": ".",
    "…": ".",
    "$": ".",
    "“": "",
    "”": "",
    "‘": "",
    "’": "",
    "（": "",
    "）": "",
    "(": "",
    ")": "",
    "《": "",
    "》": "",
    "【": "",
    "】": "",
    "[": "",
    "]": "",
    "—": "",
    "～": "-",
    "~": "-",
    "「": "",
    "」": "",
    "¿": "",
    "¡": "",
}
_PUNCTUATION = re.compile("|".join(re.escape(original) for original in _PUNCTUATION_MAP))
_AUX_SYMBOLS = re.compile(r"[<>()\[\]\"«»]+")
_LEADING_PUNCTUATION = re.compile(r"^[,.!?]+")
_WHITESPACE = re.compile(r"\s+")

# French abbreviations: (regular expression fragment, spoken form), applied in order. The first group must be
# followed by a full stop and matches any case; its fragments are regular expressions ("." in "N.B" is any
# character), as in the reference. The second group matches a case-sensitive word start without a full stop.
_FRENCH_ABBREVIATIONS_WITH_STOP: tuple[tuple[str, str], ...] = (
    ("M", "monsieur"),
    ("Mlle", "mademoiselle"),
    ("Mlles", "mesdemoiselles"),
    ("Mme", "Madame"),
    ("Mmes", "Mesdames"),
    ("N.B", "nota bene"),
    ("p.c.q", "parce que"),
    ("Pr", "professeur"),
    ("qqch", "quelque chose"),
    ("rdv", "rendez-vous"),
    ("max", "maximum"),
    ("min", "minimum"),
    ("no", "numéro"),
    ("adr", "adresse"),
    ("dr", "docteur"),
    ("st", "saint"),
    ("co", "companie"),
    ("jr", "junior"),
    ("sgt", "sergent"),
    ("capt", "capitain"),
    ("col", "colonel"),
    ("av", "avenue"),
    ("av. J.-C", "avant Jésus-Christ"),
    ("apr. J.-C", "après Jésus-Christ"),
    ("art", "article"),
    ("boul", "boulevard"),
    ("c.-à-d", "c’est-à-dire"),
    ("etc", "et cetera"),
    ("ex", "exemple"),
    ("excl", "exclusivement"),
)
_FRENCH_TITLES: tuple[tuple[str, str], ...] = (
    ("Mlle", "mademoiselle"),
    ("Mlles", "mesdemoiselles"),
    ("Mme", "Madame"),
    ("Mmes", "Mesdames"),
)
_FRENCH_ABBREVIATION_PATTERNS = tuple(
    (re.compile(rf"\b{fragment}\.", re.IGNORECASE), spoken) for fragment, spoken in _FRENCH_ABBREVIATIONS_WITH_STOP
) + tuple((re.compile(rf"\b{fragment}"), spoken) for fragment, spoken in _FRENCH_TITLES)


def _normalize_common(text: str, ampersand: str | None) -> str:
    text = _PUNCTUATION.sub(lambda m: _PUNCTUATION_MAP[m.group(0)], text)
    text = text.replace(";", ",").replace("-", " ").replace(":", ",")
    if ampersand is not None:
        text = text.replace("&", ampersand)
    text = _AUX_SYMBOLS.sub("", text)
    text = _LEADING_PUNCTUATION.sub("", text)
    return _WHITESPACE.sub(" ", text).strip()


def expand_french_abbreviations(text: str) -> str:
    """Replace French abbreviations ("M." -> "monsieur", "etc." -> "et cetera", "Mme" -> "Madame")."""
    for pattern, spoken in _FRENCH_ABBREVIATION_PATTERNS:
        text = pattern.sub(spoken, text)
    return text


def normalize_french(text: str) -> str:
    """French text before the shared punctuation cleanup (not verified against reference vectors)."""
    return _normalize_common(expand_french_abbreviations(text), ampersand=" et ")


def normalize_german(text: str) -> str:
    """German text before the shared punctuation cleanup (not verified against reference vectors)."""
    return _normalize_common(text, ampersand=None)
