"""The sentences the TTS voices read: a public-domain English text cut into speakable pieces.

The text is the first two chapters of *Alice's Adventures in Wonderland* (Lewis Carroll, 1865) as flite ships
it in ``/usr/share/doc/flite/examples/alice`` (public domain; see `sources.TEXT_SOURCE`). Cleaning keeps what
a TTS engine reads naturally: headings dropped, the 19th-century quote marks (`` `...' ``) and dashes removed,
shouted words (``VERY``) lower-cased. Sentences longer than `MAX_WORDS` are cut at ``;``/``:``/``,`` into
pieces of at least `MIN_WORDS`; shorter pieces are joined to a neighbour. The order is the book's, so the
list depends only on the file.
"""

from __future__ import annotations

import re
from pathlib import Path

from metis_rt.train.sources import TEXT_SOURCE, TrainDataError, under_root

MIN_WORDS = 5
MAX_WORDS = 24
HEADING = re.compile(r"^\s*(CHAPTER\b|ALICE'S ADVENTURES)")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
CLAUSE_END = re.compile(r"(?<=[;:,])\s+")


def load_sentences(root: Path = Path("/")) -> list[str]:
    """The cleaned sentences of the text source, in the book's order."""
    path = under_root(root, TEXT_SOURCE.files[0])
    if not path.is_file():
        raise TrainDataError(
            f"the training text {TEXT_SOURCE.files[0]} is missing: it ships with the Debian package flite "
            "(sudo apt-get install -y --no-install-recommends flite). If flite is installed, this image "
            "excludes /usr/share/doc from packages (a dpkg path-exclude rule): allow /usr/share/doc/flite/*"
        )
    return split_sentences(path.read_text(encoding="utf-8", errors="replace"))


def split_sentences(text: str) -> list[str]:
    """Clean `text` and cut it into sentences of `MIN_WORDS` to `MAX_WORDS` words (see the module docstring)."""
    text = re.sub(r"-[ \t]*\n\s*", "-", text)  # words hyphenated across lines
    body = " ".join(line for line in text.splitlines() if not HEADING.match(line))
    pieces = []
    for sentence in SENTENCE_END.split(clean(body)):
        pieces += _cut(sentence.strip())
    return [p for p in _join_short(pieces) if len(p.split()) >= MIN_WORDS]


def clean(text: str) -> str:
    text = text.replace("`", " ").replace("--", ", ")
    text = re.sub(r"(?<![A-Za-z])'|'(?![A-Za-z])", " ", text)  # quote marks, not apostrophes
    text = re.sub(r"[()\[\]*_\"]", " ", text)
    text = re.sub(r"\b[A-Z]{2,}\b", lambda m: m.group(0).lower(), text)
    text = re.sub(r"\s+([,;:.!?])", r"\1", re.sub(r"\s+", " ", text))
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    return text.strip(" ,;:")


def _cut(sentence: str) -> list[str]:
    """A sentence of at most MAX_WORDS words as is, else its clauses greedily packed up to MAX_WORDS."""
    if len(sentence.split()) <= MAX_WORDS:
        return [sentence] if sentence else []
    pieces, current = [], ""
    for clause in CLAUSE_END.split(sentence):
        candidate = f"{current} {clause}".strip()
        if current and len(candidate.split()) > MAX_WORDS:
            pieces.append(current)
            candidate = clause
        current = candidate
    return [*pieces, current] if current else pieces


def _join_short(pieces: list[str]) -> list[str]:
    """Append each piece shorter than MIN_WORDS to the one before it (when that stays within MAX_WORDS)."""
    out: list[str] = []
    for piece in pieces:
        if out and len(piece.split()) < MIN_WORDS and len(f"{out[-1]} {piece}".split()) <= MAX_WORDS:
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    out = [p.rstrip(",;: ") + ("" if p.rstrip()[-1:] in ".!?" else ".") for p in out]
    return [p[0].upper() + p[1:] for p in out]
