"""The inference engine: the single owner of the model device, running in its own thread.

Any session on the engine contract (``streaming.base.EngineSession``) can run here: Metis windows
(``StreamSession`` + ``MetisWindowProcessor``, batched) or frame-wise denoisers (``FrameSession`` +
``FrameProcessor``, see :func:`metis_rt.streaming.frame_session.frame_engine`).

Each step collects the ready hops of up to ``max_batch`` sessions (round-robin, so every session gets its turn),
runs them as one batch through the processor and hands every session its result. Sessions wake the engine when
they receive audio; the engine never polls. Nothing here runs on an asyncio event loop: async code pushes audio
into sessions (cheap, lock-protected) and reads their output.

Overload policy lives in the sessions (bounded backlog: the oldest unprocessed input is dropped and counted), so a
slow engine shows up as dropped milliseconds and bounded delay, never as a queue that grows without end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from metis_rt.streaming.base import EngineSession as StreamSession
from metis_rt.streaming.config import EngineConfig
from metis_rt.streaming.processor import WindowProcessor

if TYPE_CHECKING:
    from metis_rt.streaming.frame_session import FrameProcessor

log = logging.getLogger(__name__)

RECENT_STEPS = 200
CALL_MAX_WAIT_S = 1.0  # a call (reference preparation) waits for a step with no ready hop at most this long


class Engine:
    def __init__(self, processor: WindowProcessor | FrameProcessor, cfg: EngineConfig | None = None):
        cfg = cfg or EngineConfig()
        if cfg.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.processor = processor
        self.cfg = cfg
        self._sessions: dict[int, StreamSession] = {}
        self._order: deque[int] = deque()  # round-robin order of session ids
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stepping = False
        self._wakeups = 0
        # work for the device outside the streams (reference preparation): a lower-priority lane, one call between
        # steps, run when no hop is ready or when the oldest has waited CALL_MAX_WAIT_S (live hops come first)
        self._calls: deque[tuple[Callable[[], object], Future, float]] = deque()
        self.step_ms: deque[float] = deque(maxlen=RECENT_STEPS)
        self.batch_sizes: deque[int] = deque(maxlen=RECENT_STEPS)
        self.on_error: Callable[[StreamSession, BaseException], None] | None = None

    # --- sessions -------------------------------------------------------------------------------
    def add(self, session: StreamSession) -> None:
        with self._cond:
            self._sessions[session.id] = session
            self._order.append(session.id)
            session.wakeup = self.wake
            self._cond.notify_all()

    def remove(self, session_id: int) -> None:
        with self._cond:
            self._sessions.pop(session_id, None)
            if session_id in self._order:
                self._order.remove(session_id)

    def session_count(self) -> int:
        with self._cond:
            return len(self._sessions)

    def wake(self) -> None:
        with self._cond:
            self._wakeups += 1
            self._cond.notify_all()

    def submit(self, fn: Callable[[], object]) -> Future:
        """Run ``fn`` on the engine thread between steps (model work outside the stream, e.g. a reference)."""
        future: Future = Future()
        with self._cond:
            self._calls.append((fn, future, time.monotonic()))
            self._cond.notify_all()
        return future

    def _run_call(self, hops_ran: bool) -> bool:
        """Run the oldest waiting call if no hop ran in this step or it has waited too long; True if one ran."""
        with self._cond:
            if not self._calls or (hops_ran and time.monotonic() - self._calls[0][2] < CALL_MAX_WAIT_S):
                return False
            fn, future, _ = self._calls.popleft()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:  # delivered to the caller
                future.set_exception(exc)
        return True

    # --- one step -------------------------------------------------------------------------------
    def step(self, now: float | None = None) -> int:
        """Run one batch of ready hops; returns how many hops ran (0 = nothing was ready).

        ``now`` (seconds, perf_counter clock) overrides the emission time recorded in metrics (simulations).
        """
        with self._cond:
            order = list(self._order)
            sessions = [self._sessions[i] for i in order]
        picked = []
        for session in sessions:
            if len(picked) >= self.cfg.max_batch:
                break
            job = session.take_window()
            if job is not None:
                picked.append((session, job))
        if not picked:
            return 0
        with self._cond:  # served sessions go to the back of the queue
            for session, _ in picked:
                if session.id in self._order:
                    self._order.remove(session.id)
                    self._order.append(session.id)
        started = time.perf_counter()
        try:
            results = self.processor.run([job for _, job in picked])
        except Exception as exc:  # a failing batch must not take the engine (and every other session) down
            log.exception("engine step failed for sessions %s", [s.id for s, _ in picked])
            for session, job in picked:
                session.fail(job, exc)
                if self.on_error is not None:
                    self.on_error(session, exc)
            return len(picked)
        elapsed = time.perf_counter() - started
        self.step_ms.append(elapsed * 1000)
        self.batch_sizes.append(len(picked))
        for (session, job), result in zip(picked, results, strict=True):
            session.complete(job, result, elapsed, now)
        return len(picked)

    # --- thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="metis-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                seen = self._wakeups
                self._stepping = True
            hops = self.step()
            ran = self._run_call(hops > 0) or hops > 0
            with self._cond:
                self._stepping = False
                self._cond.notify_all()  # wait_idle() watchers
                if not ran and self._wakeups == seen and not self._calls and not self._stopping:
                    self._cond.wait()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no session has a runnable hop and the engine is not stepping (simulation, tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                busy = self._stepping or any(s.ready() or s.in_flight for s in self._sessions.values())
                if not busy:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
