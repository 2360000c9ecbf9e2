"""What the training speech is made from: TTS engines, recorded speech and text, each from a Debian package.

Every source names the package that provides it, the licence its copyright file states and a probe (an
executable on ``PATH`` or a file) that exists only when the package is installed. `require` checks a list of
sources at once and raises `TrainDataError` naming every package to install.

Sources (all in Debian main unless said otherwise):

- ``espeak-ng``: formant synthesis, 8 English accents × about 100 voice variants.
- ``flite``: CMU Flite with four voices built from recordings of real speakers (awb, kal16, rms, slt).
- ``festival``: Festival with the kal and ked diphone voices and the slt HTS voice.
- ``mbrola``: espeak-ng driving MBROLA diphone voices. **Off by default**: mbrola is in Debian's contrib and
  its voices in non-free, under a non-commercial licence; enable contrib/non-free in apt's sources to use it.
- ``ktuberling``: real recordings of single words, one speaker per language, from the KTuberling game.
- the text: the first two chapters of *Alice's Adventures in Wonderland*, public domain, shipped by flite.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from metis_rt.data.sources import installed_versions
from metis_rt.errors import MetisError

INSTALL_HINT = "sudo apt-get install -y --no-install-recommends"


class TrainDataError(MetisError):
    """The training data cannot be built or read: a tool or package is missing, or a set is unusable."""


@dataclass(frozen=True)
class Source:
    """One thing the training set is made from, and how to tell it is installed."""

    name: str
    packages: tuple[str, ...]  # Debian packages that provide it (all needed)
    licence: str  # as stated in /usr/share/doc/<package>/copyright
    description: str
    executables: tuple[str, ...] = ()  # must be on PATH
    files: tuple[str, ...] = ()  # absolute paths that must exist
    components: str = "main"  # Debian archive components needed


SOURCES: tuple[Source, ...] = (
    Source(
        "espeak-ng",
        ("espeak-ng",),
        "GPL-3+",
        "espeak-ng formant synthesis, English accents x voice variants",
        executables=("espeak-ng",),
    ),
    Source(
        "flite",
        ("flite",),
        "BSD-like (CMU Flite licence)",
        "CMU Flite voices awb, kal16, rms, slt (CMU ARCTIC / diphone recordings of real speakers)",
        executables=("flite",),
    ),
    Source(
        "festival",
        ("festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts"),
        "X11-like (Festival and festvox voice licences, free use with attribution)",
        "Festival voices kal and ked (diphone) and slt (HTS)",
        executables=("festival",),
        files=(
            "/usr/share/festival/voices/english/kal_diphone",
            "/usr/share/festival/voices/english/ked_diphone",
            "/usr/share/festival/voices/us/cmu_us_slt_arctic_hts",
        ),
    ),
    Source(
        "mbrola",
        ("espeak-ng", "mbrola", "mbrola-us1", "mbrola-us2", "mbrola-us3", "mbrola-en1"),
        "mbrola: AGPL-3; voices: non-commercial use only (see each mbrola-* copyright file)",
        "MBROLA diphone voices us1, us2, us3, en1 driven by espeak-ng (optional, off by default)",
        executables=("espeak-ng", "mbrola"),
        files=("/usr/share/mbrola/us1", "/usr/share/mbrola/us2", "/usr/share/mbrola/us3", "/usr/share/mbrola/en1"),
        components="main contrib non-free",
    ),
    Source(
        "ktuberling",
        ("ktuberling-data",),
        "GPL-2+",
        "KTuberling word recordings, one speaker per language (real speech, 22-48 kHz)",
        files=("/usr/share/ktuberling/sounds",),
    ),
)
TEXT_SOURCE = Source(
    "alice",
    ("flite",),
    "public domain (Project Gutenberg text; listed as public domain in /usr/share/doc/flite/copyright)",
    "Lewis Carroll, Alice's Adventures in Wonderland, chapters I-II, as shipped in flite's examples",
    files=("/usr/share/doc/flite/examples/alice",),
)
DEFAULT_SOURCES = ("espeak-ng", "flite", "festival", "ktuberling")  # mbrola only on request


def source_by_name(name: str) -> Source:
    for source in (*SOURCES, TEXT_SOURCE):
        if source.name == name:
            return source
    raise TrainDataError(f"unknown training source {name!r}; known: {', '.join(s.name for s in SOURCES)}")


def under_root(root: Path, absolute: str) -> Path:
    return Path(root) / Path(absolute).relative_to("/")


def missing_parts(source: Source, root: Path = Path("/")) -> list[str]:
    """What of `source` is absent: executables not on PATH and files not under `root`."""
    gone = [f"executable {exe!r} on PATH" for exe in source.executables if shutil.which(exe) is None]
    return gone + [f"{path}" for path in source.files if not under_root(root, path).exists()]


def require(names: list[str] | tuple[str, ...], root: Path = Path("/")) -> list[dict]:
    """Manifest records of the named sources (package versions, licences); `TrainDataError` if any is missing."""
    sources = [source_by_name(name) for name in names]
    problems = [(s, missing_parts(s, root)) for s in sources]
    problems = [(s, parts) for s, parts in problems if parts]
    if problems:
        raise TrainDataError(_missing_message(problems))
    versions = installed_versions(root)
    return [
        {
            "name": s.name,
            "packages": {p: versions.get(p, "unknown") for p in s.packages},
            "licence": s.licence,
            "description": s.description,
            "components": s.components,
        }
        for s in sources
    ]


def _missing_message(problems: list[tuple[Source, list[str]]]) -> str:
    lines = [f"  - {s.name} ({s.description}): missing {', '.join(parts)}" for s, parts in problems]
    packages = sorted({p for s, _ in problems for p in s.packages})
    text = "the training set needs these sources, which are not installed:\n" + "\n".join(lines)
    text += f"\nInstall them with:\n  {INSTALL_HINT} {' '.join(packages)}"
    if any(s.components != "main" for s, _ in problems):
        text += (
            "\n(mbrola and its voices are in Debian's contrib and non-free components, under a non-commercial "
            "licence: add 'contrib non-free' to apt's sources first, or leave 'mbrola' out of the sources)"
        )
    return text
