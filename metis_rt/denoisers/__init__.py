"""Frame-wise third-party denoisers (CPU engines) behind one small contract.

Each package sits behind its own adapter module (``deepfilternet3.py``, ``rnnoise.py``) so it can be
swapped without touching the streaming session, the server or the evaluation harness.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from metis_rt.errors import MetisError

STRENGTH_RANGE_DB = (0.0, 100.0)
"""Attenuation limit range in dB: 0 = no reduction (delayed input), 100 = unlimited (the default)."""

DENOISER_NAMES = ("deepfilternet3", "rnnoise")


class EngineUnavailable(MetisError):
    """A denoiser cannot run here: its package is missing or failed to load. The message names the package."""


class FrameDenoiser(Protocol):
    """One instance holds one stream's state; not thread-safe (one thread at a time).

    Output sample ``n`` corresponds to input sample ``n - latency_samples``.
    """

    name: str
    sample_rate: int
    frame_samples: int
    latency_samples: int

    def process(self, frames: np.ndarray) -> np.ndarray:
        """float32 mono ``[T]`` with ``T % frame_samples == 0`` -> float32 ``[T]``."""
        ...

    def reset(self) -> None:
        """Return to the fresh state (as just opened), keeping the strength."""
        ...

    def set_strength(self, attenuation_limit_db: float) -> None:
        """Attenuation limit in dB within STRENGTH_RANGE_DB; 0 gives the input delayed by latency_samples."""
        ...


def open_denoiser(name: str) -> FrameDenoiser:
    """A fresh denoiser by name; EngineUnavailable if its package cannot run here."""
    raise EngineUnavailable(f"denoiser {name!r} is not implemented yet (stub)")


def denoiser_status() -> dict[str, str | None]:
    """Name -> None if usable here, else the reason it is not."""
    return {name: "not implemented yet (stub)" for name in DENOISER_NAMES}
