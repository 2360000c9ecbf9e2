"""A jitter buffer between network arrival and a sound card's output callback (pure: numpy and a lock, no I/O).

The network delivers audio in bursts (one server hop at a time); the sound card pulls small blocks at a steady
rate. The buffer is a bounded ring of float32 samples:

- **prefill**: reads return silence until ``prefill_samples`` are buffered *and* the oldest buffered sample has
  waited ``prefill_samples`` (at the start and after every underrun). The second condition matters when audio
  arrives in bursts (one server hop, e.g. 240 ms, at a time): a single burst larger than the prefill would
  otherwise start playback with no margin left for the next burst's jitter;
- **underrun**: a read that finds too little audio plays what there is, pads with silence, counts one underrun
  and re-enters prefill;
- **overrun** (overload policy): a write that would exceed ``capacity_samples`` drops the *oldest* buffered
  samples (counted), so the delay through the buffer never exceeds the capacity whatever the arrival rate;
- **standing delay** (latency policy): audio that piled up once (a start-up burst, a stall that let input queue
  up) would otherwise stay in the buffer for good, since writer and reader then run at the same rate. With
  ``trim_window_samples`` set, the buffer watches the least depth left after reads over each window of that many
  samples played; when even that least depth exceeds the prefill margin, the excess is cut out at the next read
  with a ``TRIM_FADE_SAMPLES`` crossfade (no click) and counted, so the delay returns to the prefill margin.

Thread safety: one writer (the asyncio thread) and one reader (the audio callback thread). The lock is held
only for array copies; :meth:`read_into` never waits for data.
"""

from __future__ import annotations

import threading

import numpy as np

TRIM_FADE_SAMPLES = 240  # crossfade over a cut of standing delay (5 ms at 48 kHz)


class JitterBuffer:
    """Bounded float32 ring buffer with a prefill target and underrun / overrun counters."""

    def __init__(self, capacity_samples: int, prefill_samples: int, trim_window_samples: int | None = None):
        if capacity_samples <= 0:
            raise ValueError(f"capacity_samples must be positive, got {capacity_samples}")
        if not 0 <= prefill_samples <= capacity_samples:
            raise ValueError(f"prefill_samples must be in [0, capacity {capacity_samples}], got {prefill_samples}")
        self.capacity_samples = capacity_samples
        self.prefill_samples = prefill_samples
        self._ring = np.zeros(capacity_samples, dtype=np.float32)
        self._start = 0  # ring index of the oldest buffered sample
        self._depth = 0  # buffered samples
        self._priming = True
        self._held = 0  # while priming: samples of silence played since audio was first buffered
        self._lock = threading.Lock()
        self.trim_window_samples = trim_window_samples  # None: standing delay is never cut
        self._window_read = 0  # samples played in the current trim window
        self._window_min_depth: int | None = None  # least depth left after a read in the window
        self.trims = 0  # cuts of standing delay
        self.trimmed_samples = 0  # samples those cuts discarded
        self.underruns = 0  # reads that ran dry after playback had started
        self.overruns = 0  # writes that had to drop old audio
        self.dropped_samples = 0  # samples discarded by overruns
        self.written_samples = 0
        self.played_samples = 0  # real (non-silence) samples handed to the reader

    @classmethod
    def from_ms(
        cls, rate: int, capacity_ms: float, prefill_ms: float, trim_window_ms: float | None = 1000.0
    ) -> JitterBuffer:
        window = None if trim_window_ms is None else max(1, round(rate * trim_window_ms / 1000))
        return cls(max(1, round(rate * capacity_ms / 1000)), max(0, round(rate * prefill_ms / 1000)), window)

    @property
    def depth_samples(self) -> int:
        return self._depth

    @property
    def priming(self) -> bool:
        return self._priming

    def write(self, samples: np.ndarray) -> int:
        """Append mono samples; returns how many old samples were dropped to make room."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        with self._lock:
            self.written_samples += len(x)
            dropped = 0
            if len(x) > self.capacity_samples:  # a single write larger than the ring: keep its newest part
                dropped += len(x) - self.capacity_samples
                x = x[-self.capacity_samples :]
            excess = self._depth + len(x) - self.capacity_samples
            if excess > 0:
                self._start = (self._start + excess) % self.capacity_samples
                self._depth -= excess
                dropped += excess
            if dropped:
                self.overruns += 1
                self.dropped_samples += dropped
            self._copy_in(x)
            return dropped

    def read_into(self, out: np.ndarray) -> int:
        """Fill the 1-D float32 ``out`` (e.g. ``outdata[:, 0]``); returns the number of real samples, the rest is
        silence. Never blocks on missing data."""
        n = len(out)
        with self._lock:
            if self._priming:
                if self._depth and self._depth >= self.prefill_samples and self._held >= self.prefill_samples:
                    self._priming = False
                else:
                    self._held += n if self._depth else 0
                    out[:] = 0.0
                    return 0
            self._trim_if_standing()
            take = min(n, self._depth)
            self._copy_out(out[:take])
            if take < n:
                out[take:] = 0.0
                self.underruns += 1
                self._priming, self._held = True, 0
                self._window_read, self._window_min_depth = 0, None
            else:
                self._watch_depth(take)
            self.played_samples += take
            return take

    def read(self, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.float32)
        self.read_into(out)
        return out

    def clear(self) -> None:
        with self._lock:
            self._start, self._depth, self._priming, self._held = 0, 0, True, 0
            self._window_read, self._window_min_depth = 0, None

    # --- standing delay (lock held) ---------------------------------------------------------------
    def _watch_depth(self, played: int) -> None:
        if self.trim_window_samples is None:
            return
        least = self._depth if self._window_min_depth is None else min(self._window_min_depth, self._depth)
        self._window_min_depth = least
        self._window_read += played

    def _trim_if_standing(self) -> None:
        """At a window's end: cut the delay that stood above the prefill margin for the whole window."""
        if self.trim_window_samples is None or self._window_read < self.trim_window_samples:
            return
        excess = (self._window_min_depth or 0) - self.prefill_samples
        self._window_read, self._window_min_depth = 0, None
        fade = min(TRIM_FADE_SAMPLES, self._depth - excess) if excess > 0 else 0
        if excess <= 0 or fade <= 0:
            return
        old = np.empty(fade, np.float32)
        self._copy_out(old)  # the audio that would have played next, faded out ...
        self._start = (self._start + excess - fade) % self.capacity_samples
        self._depth -= excess - fade
        new = np.empty(fade, np.float32)
        self._copy_out(new)  # ... over the audio after the cut, faded in
        ramp = (np.arange(1, fade + 1, dtype=np.float32) / (fade + 1)).astype(np.float32)
        self._start = (self._start - fade) % self.capacity_samples
        self._depth += fade
        first = min(fade, self.capacity_samples - self._start)
        blended = old * (1.0 - ramp) + new * ramp
        self._ring[self._start : self._start + first] = blended[:first]
        self._ring[: fade - first] = blended[first:]
        self.trims += 1
        self.trimmed_samples += excess

    # --- ring copies (lock held) ------------------------------------------------------------------
    def _copy_in(self, x: np.ndarray) -> None:
        end = (self._start + self._depth) % self.capacity_samples
        first = min(len(x), self.capacity_samples - end)
        self._ring[end : end + first] = x[:first]
        self._ring[: len(x) - first] = x[first:]
        self._depth += len(x)

    def _copy_out(self, out: np.ndarray) -> None:
        n = len(out)
        first = min(n, self.capacity_samples - self._start)
        out[:first] = self._ring[self._start : self._start + first]
        out[first:] = self._ring[: n - first]
        self._start = (self._start + n) % self.capacity_samples
        self._depth -= n
