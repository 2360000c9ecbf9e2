"""RNNoise (Xiph) through ``pyrnnoise``'s bundled library (RNNoise BSD-3-Clause, the wrapper Apache-2.0).

48 kHz, 10 ms frames (480 samples), samples scaled to the int16 range the library expects. Output sample ``n`` is
input sample ``n - 960`` (20 ms), measured by ``bench/denoisers.py``. RNNoise has no attenuation limit of its own;
FramewiseDenoiser mixes the delayed input back in. Only this module imports the package (an evaluation extra:
``pip install -e ".[eval]"``).
"""

from __future__ import annotations

import ctypes
import functools
import weakref

import numpy as np

from metis_rt.denoisers.framewise import FramewiseDenoiser

PACKAGE = "pyrnnoise>=0.4.5"
RNNOISE_RATE_HZ = 48000
RNNOISE_FRAME_SAMPLES = 480  # checked against rnnoise_get_frame_size
RNNOISE_LATENCY_SAMPLES = 960
RNNOISE_SCALE = 32768.0  # the library works on int16-scaled float samples

_FLOAT_P = ctypes.POINTER(ctypes.c_float)


def _unavailable(reason: str) -> Exception:
    from metis_rt.denoisers import EngineUnavailable

    return EngineUnavailable(f'the rnnoise engine needs the package {PACKAGE} ({reason}): pip install "{PACKAGE}"')


@functools.cache
def _library() -> ctypes.CDLL:
    try:
        from pyrnnoise import rnnoise
    except (ImportError, OSError) as exc:
        raise _unavailable(f"cannot import it: {exc}") from exc
    lib = rnnoise.lib
    lib.rnnoise_create.restype = ctypes.c_void_p
    lib.rnnoise_create.argtypes = [ctypes.c_void_p]
    lib.rnnoise_destroy.restype = None
    lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
    lib.rnnoise_get_frame_size.restype = ctypes.c_int
    lib.rnnoise_process_frame.restype = ctypes.c_float
    lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, _FLOAT_P, _FLOAT_P]  # (state, out, in)
    frame = lib.rnnoise_get_frame_size()
    if frame != RNNOISE_FRAME_SAMPLES:
        raise _unavailable(f"the library reports {frame}-sample frames, this adapter expects {RNNOISE_FRAME_SAMPLES}")
    return lib


def check_available() -> None:
    """Raise EngineUnavailable if the library cannot be loaded here."""
    _library()


class RNNoise(FramewiseDenoiser):
    """One RNNoise stream (native state freed when the object goes)."""

    name = "rnnoise"
    sample_rate = RNNOISE_RATE_HZ
    frame_samples = RNNOISE_FRAME_SAMPLES
    latency_samples = RNNOISE_LATENCY_SAMPLES

    def __init__(self) -> None:
        super().__init__()
        self._lib = _library()
        self._scaled_in = np.zeros(RNNOISE_FRAME_SAMPLES, np.float32)
        self._scaled_out = np.zeros(RNNOISE_FRAME_SAMPLES, np.float32)
        self._create()

    def _create(self) -> None:
        state = self._lib.rnnoise_create(None)
        if not state:
            raise _unavailable("rnnoise_create returned no state")
        self._state = state
        self._finalizer = weakref.finalize(self, self._lib.rnnoise_destroy, state)

    def _denoise_frame(self, frame: np.ndarray, out: np.ndarray) -> None:
        np.multiply(frame, RNNOISE_SCALE, out=self._scaled_in)
        self._lib.rnnoise_process_frame(
            self._state, self._scaled_out.ctypes.data_as(_FLOAT_P), self._scaled_in.ctypes.data_as(_FLOAT_P)
        )
        np.divide(self._scaled_out, RNNOISE_SCALE, out=out)

    def _reset_native(self) -> None:
        old = self._finalizer
        self._create()  # the new state first, then the old one goes
        old()
