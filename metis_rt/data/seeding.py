"""Reproducible random streams: one independent generator per (seed, name), whatever the order of use.

Python's ``hash()`` is salted per process, so names are hashed with SHA-256 instead; the generator is numpy's
PCG64, whose streams are the same on every platform.
"""

from __future__ import annotations

import hashlib

import numpy as np


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator that depends only on `seed` and the `names` (e.g. ``rng_for(0, "noise", item_id)``)."""
    digest = hashlib.sha256("\x1f".join(names).encode("utf-8")).digest()
    words = np.frombuffer(digest, dtype="<u4").tolist()
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))
