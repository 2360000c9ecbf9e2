"""Checking a downloaded file against its published size and sha256 (pure: a path and expected values in).

A file is *verified* when every recorded value matches, *unverified* when nothing is recorded for it (the
caller says so plainly), and rejected with :class:`IntegrityError` naming the file when a value differs.
The size is compared first: it costs nothing and catches truncated or replaced files before hashing gigabytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from metis_rt.errors import MetisError

HASH_CHUNK_BYTES = 1 << 20

VERIFIED_SHA256 = "sha256"
VERIFIED_SIZE = "size only"
UNVERIFIED = "unverified"


@dataclass(frozen=True)
class Expected:
    """What a file must be, as published (an LFS pointer, a hub file page); None = not known."""

    sha256: str | None = None
    size_bytes: int | None = None

    @property
    def known(self) -> bool:
        return self.sha256 is not None or self.size_bytes is not None


NOTHING_KNOWN = Expected()


class IntegrityError(MetisError):
    """A file differs from its published size or sha256."""

    def __init__(self, name: str, what: str, expected: str, got: str, path: Path):
        self.name = name
        super().__init__(
            f"{name}: {what} mismatch: expected {expected}, got {got} ({path}). The file is corrupt, truncated "
            "or was replaced upstream; delete it (and its Hugging Face cache entry) and download again, or ask "
            "for `--revision main` to take whatever the repository holds now, unverified."
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected: Expected, name: str) -> str:
    """Check `path` against `expected`; return VERIFIED_SHA256, VERIFIED_SIZE or UNVERIFIED.

    Raises IntegrityError (naming `name`) when the size or the sha256 differs.
    """
    path = Path(path)
    if expected.size_bytes is not None:
        size = path.stat().st_size
        if size != expected.size_bytes:
            raise IntegrityError(name, "size", f"{expected.size_bytes:,} bytes", f"{size:,} bytes", path)
    if expected.sha256 is not None:
        got = file_sha256(path)
        if got != expected.sha256.lower():
            raise IntegrityError(name, "sha256", expected.sha256, got, path)
        return VERIFIED_SHA256
    return VERIFIED_SIZE if expected.size_bytes is not None else UNVERIFIED
