"""The engine contract: what every stream session shares, whatever model runs it.

Two kinds of session meet one :class:`~metis_rt.streaming.engine.Engine` (a worker thread, never the event loop):
``StreamSession`` (Metis windows, batched across sessions) and ``FrameSession`` (a frame-wise denoiser such as
DeepFilterNet3, one denoiser instance per session). Both implement :class:`EngineSession` towards the engine and
:class:`Stream` towards their users (server connection, ``process``, ``bridge --local``, ``eval``), and both derive
from :class:`SessionBase`, which owns the parts that must behave identically on every engine:

* sample accounting: the output is time-aligned with the input (the engine's delay is compensated) and its total
  duration equals the input's (minus dropped input), exactly, at the output rate;
* mix / bypass: output = wet * processed + (1 - wet) * dry, changes ramp linearly over the next emitted block;
* undelivered output is bounded (``max_output_ms``; the oldest is dropped and counted);
* input checks, per-stream metrics, ``reset()``, ``finish()`` -> ``on_done`` after the last output.

Overload policy (bounded delay, dropped input counted in ``metrics.dropped_ms``) is the session's: each kind cuts
whole units of its own (Metis chunks, denoiser frames) out of the timeline with a short crossfade.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from metis_rt.streaming.config import EngineConfig
from metis_rt.streaming.metrics import SessionMetrics


class SessionClosed(RuntimeError):
    """Audio pushed after the input was finished."""


def same_duration(samples: int, rate: int, other_rate: int) -> int:
    """Samples at ``other_rate`` lasting as long as ``samples`` at ``rate`` (rounded half up, integer maths)."""
    return (samples * other_rate + rate // 2) // rate


class EngineSession(Protocol):
    """What the engine thread sees of a session."""

    id: int
    in_flight: bool
    wakeup: Callable[[], None] | None

    def ready(self) -> bool: ...

    def take_window(self) -> Any | None: ...

    def complete(self, job: Any, result: Any, compute_s: float, now: float | None = None) -> None: ...

    def fail(self, job: Any, exc: BaseException) -> None: ...


class Stream(Protocol):
    """What the users of a session see (the same for every engine)."""

    id: int
    metrics: SessionMetrics
    done: bool
    error: BaseException | None

    @property
    def latency_ms(self) -> float: ...

    def push(self, samples: np.ndarray, now: float | None = None) -> None: ...

    def finish(self) -> None: ...

    def read_output(self) -> np.ndarray: ...

    def reset(self) -> None: ...

    def set_mix(self, mix: float, bypass: bool = False) -> None: ...


def checked_samples(samples: np.ndarray) -> np.ndarray:
    """Mono float32 samples, or ValueError saying what is wrong."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples [N], got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("samples contain NaN or Inf")
    return x


class SessionBase:
    """Shared state and behaviour of a session (see the module docstring). Subclasses have ``spec`` with
    ``task``, ``input_rate`` and ``output_rate``, and implement ``_reset_state`` (calling ``_reset_common``)."""

    spec: Any

    def __init__(
        self,
        session_id: int,
        engine_cfg: EngineConfig,
        on_output: Callable[[np.ndarray], None] | None,
        on_done: Callable[[], None] | None,
    ):
        self.id = session_id
        self.engine_cfg = engine_cfg
        self.on_output = on_output
        self.on_done = on_done  # called (engine thread) after the last output of a finished stream
        self.wet = 1.0  # processed share of the output (0 = bypass, dry input delayed by the latency)
        self.lock = threading.Lock()
        self.wakeup: Callable[[], None] | None = None  # set by the engine; called after new input (outside the lock)
        self.generation = 0  # bumped by restart(): results of jobs taken before it are discarded

    # --- lifecycle ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything about the stream (the spec and settings stay)."""
        with self.lock:
            self._reset_state()

    def _reset_state(self) -> None:  # lock held
        raise NotImplementedError

    def _reset_common(self, metrics: SessionMetrics) -> None:  # lock held
        self.in_flight, self.ending, self.done = False, False, False
        self.error: BaseException | None = None
        self.received_in = 0
        self.target_out, self.delivered_out = 0, 0
        self.output: deque[np.ndarray] = deque()
        self.output_samples = 0
        self.metrics = metrics
        self._wet_now = self.wet  # wet gain at the end of the last emitted block

    def latency_samples(self, rate: int) -> int:
        return round(self.latency_ms * rate / 1000)

    @property
    def latency_ms(self) -> float:
        raise NotImplementedError

    def _wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup()

    def ready(self) -> bool:
        with self.lock:
            return self._ready()

    def _ready(self) -> bool:  # lock held
        raise NotImplementedError

    def fail(self, job: Any, exc: BaseException) -> None:
        """The engine could not run ``job``: the session stops producing (``error`` says why)."""
        with self.lock:
            if job.generation != self.generation:
                return
            self.in_flight = False
            self.error = exc

    # --- mix ------------------------------------------------------------------------------------
    def set_mix(self, mix: float, bypass: bool = False) -> None:
        """Output = wet * processed + (1 - wet) * dry, wet = 0 in bypass; changes ramp over the next block (before
        any output, there is nothing to ramp from: the stream starts with the new setting)."""
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must lie in [0, 1], got {mix}")
        with self.lock:
            self.wet = 0.0 if bypass else float(mix)
            if self.delivered_out == 0:
                self._wet_now = self.wet

    def _mix(self, wet: np.ndarray, dry: np.ndarray) -> np.ndarray:
        """Blend processed and dry audio of one block; the wet gain ramps linearly from its last value."""
        start, end = self._wet_now, self.wet
        self._wet_now = end
        if start == end == 1.0:
            return wet
        gain = np.linspace(start, end, len(wet), endpoint=False) if start != end else np.full(len(wet), end)
        return gain * wet + (1.0 - gain) * dry

    # --- output ---------------------------------------------------------------------------------
    def read_output(self) -> np.ndarray:
        """All output produced so far and not yet read (float32 at the output rate)."""
        with self.lock:
            out = np.concatenate(list(self.output)) if self.output else np.zeros(0, dtype=np.float32)
            self.output.clear()
            self.output_samples = 0
            return out

    def _deliver(self, out: np.ndarray) -> None:  # lock held
        if not len(out):
            return
        self.delivered_out += len(out)
        if self.on_output is not None:
            self.on_output(out)
            return
        self.output.append(out)
        self.output_samples += len(out)
        limit = self.engine_cfg.max_output_ms * self.spec.output_rate // 1000
        while self.output_samples > limit and len(self.output) > 1:
            old = self.output.popleft()
            self.output_samples -= len(old)
            self.metrics.dropped_output_ms += len(old) * 1000 / self.spec.output_rate

    def _finalise(self, tail: np.ndarray) -> None:  # lock held
        """Deliver the output resampler's ``tail``, padded or cut so the total is exactly ``target_out``."""
        missing = self.target_out - self.delivered_out - len(tail)
        if missing > 0:
            tail = np.concatenate([tail, np.zeros(missing, dtype=np.float32)])
        elif missing < 0:
            tail = tail[: max(0, len(tail) + missing)]
        self._deliver(tail)
        self.done = True
        if self.on_done is not None:
            self.on_done()
