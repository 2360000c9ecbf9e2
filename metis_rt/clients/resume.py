"""What a client keeps so that a stream survives a move to another worker (pure: no sockets, no clock).

* ``UnackedInput`` holds the input samples the server has not acknowledged yet (``session.checkpoint`` carries
  ``input_samples_acked``), indexed by absolute position in the stream, so that after ``session.resume`` the client
  re-sends exactly what the new worker has not seen. Bounded: past ``capacity`` samples the oldest are dropped and
  counted (a resume then reports a gap instead of holding unbounded memory).
* ``Backoff`` is the reconnect schedule: exponential with full jitter, capped per wait and in total, reset after a
  success; seeded for tests.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field

import numpy as np

RESUMABLE_CLOSE_CODES = frozenset({1006, 1012, 1013})  # abnormal close, service restart, try again later
RESUMABLE_HTTP_STATUS = frozenset({502, 503, 504})


class UnackedInput:
    """Input samples from ``acked`` (absolute index) to ``sent`` not yet acknowledged by the server.

    Kept as the frames sent (a deque), so recording a frame costs no copy of what is already held."""

    def __init__(self, capacity_samples: int):
        if capacity_samples <= 0:
            raise ValueError(f"capacity_samples must be positive, got {capacity_samples}")
        self.capacity = capacity_samples
        self._chunks: collections.deque[np.ndarray] = collections.deque()  # oldest first
        self._held = 0  # samples in _chunks
        self._start = 0  # absolute index of the first held sample
        self.dropped_samples = 0  # unacknowledged samples given up to stay within capacity

    @property
    def sent(self) -> int:
        """Absolute index one past the last sample sent."""
        return self._start + self._held

    @property
    def oldest(self) -> int:
        """Absolute index of the oldest sample still held."""
        return self._start

    def record(self, samples: np.ndarray) -> None:
        """Keep samples just sent (mono float32 ``[T]``)."""
        chunk = np.asarray(samples, np.float32).reshape(-1)
        if len(chunk):
            self._chunks.append(chunk)
            self._held += len(chunk)
        excess = self._held - self.capacity
        if excess > 0:
            self._forget(excess)
            self.dropped_samples += excess

    def ack(self, input_samples_acked: int) -> None:
        """The server holds everything before ``input_samples_acked``: forget it (a stale ack is a no-op)."""
        if input_samples_acked > self.sent:
            raise ValueError(f"ack of {input_samples_acked} samples, but only {self.sent} were sent")
        if input_samples_acked > self._start:
            self._forget(input_samples_acked - self._start)

    def replay_from(self, input_samples_acked: int) -> tuple[np.ndarray, int]:
        """What to re-send after a resume acknowledged up to ``input_samples_acked``: ``(samples, gap)``, where
        ``gap`` samples were already given up (the stream continues after a gap of that length)."""
        self.ack(max(input_samples_acked, self._start))
        gap = max(0, self._start - input_samples_acked)
        held = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return held, gap

    def _forget(self, n: int) -> None:
        """Drop the ``n`` oldest held samples."""
        self._start += n
        self._held -= n
        while n > 0:
            first = self._chunks[0]
            if len(first) <= n:
                self._chunks.popleft()
                n -= len(first)
            else:
                self._chunks[0] = first[n:]
                n = 0


@dataclass
class Backoff:
    """Reconnect waits: ``min(cap_s, base_s * 2**attempt) * U(0.5, 1)``; gives up after ``max_total_s`` of waiting."""

    base_s: float = 0.05
    cap_s: float = 2.0
    max_total_s: float = 30.0
    seed: int | None = None
    attempt: int = 0
    waited_s: float = 0.0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def next_wait_s(self, retry_after_s: float | None = None) -> float | None:
        """The next wait (a server's Retry-After is honoured, within the cap); None once the total is spent."""
        if self.waited_s >= self.max_total_s:
            return None
        wait = min(self.cap_s, self.base_s * 2**self.attempt) * self._rng.uniform(0.5, 1.0)
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.cap_s))
        wait = min(wait, self.max_total_s - self.waited_s)
        self.attempt += 1
        self.waited_s += wait
        return wait

    def succeeded(self) -> None:
        self.attempt = 0
        self.waited_s = 0.0
