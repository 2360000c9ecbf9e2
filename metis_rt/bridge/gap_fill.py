"""What the bridge plays while its stream moves to another worker: the raw microphone, in the stream's own timeline
(pure: numpy, no I/O, no clock).

The conferencing call must never go silent. Output sample *k* of the stream belongs to microphone sample *k* (at the
output rate), so when the connection is lost the bridge goes on filling positions ``delivered, delivered + 1, ...``
with the *raw* microphone samples of the same positions, one captured block at a time: the delay the listener
hears stays what it was, nothing is skipped or repeated. The positions filled are :meth:`LiveStream.cover`-ed, so
the resumed worker's output for them is dropped. States:

- ``processed``: the server's output plays (normal);
- ``raw``: the connection is lost or the resumed worker has not caught up: each captured block plays raw;
- ``hold``: the resumed worker's output is within one hop of the raw fill: the fill pauses so that the next hop
  takes over (without the pause a worker a few ms slower than the old one would never catch up); after
  ``max_hold`` samples without it the fill starts again.

The switch back crossfades raw into processed over ``fade`` samples (both are known at those positions); a move
that ended before any block was filled raw needs no switch.
"""

from __future__ import annotations

import numpy as np

from metis_rt.audio.stream_resampler import StreamResampler
from metis_rt.clients.live_resume import LiveStream

PROCESSED, RAW, HOLD = "processed", "raw", "hold"


class RawHistory:
    """The microphone at the output rate, indexed from the stream's first block; the last ``capacity`` samples, in a
    ring (a block costs a copy of itself, not of the history)."""

    def __init__(self, input_rate: int, output_rate: int, capacity: int):
        self.resampler = StreamResampler(input_rate, output_rate)
        self.capacity = capacity
        self._ring = np.zeros(capacity, np.float32)
        self.end = 0  # stream index one past the newest sample

    def push(self, block: np.ndarray) -> int:
        """A captured block (input rate) -> how many output-rate samples it added."""
        y = self.resampler.push(block)[-self.capacity :]
        at = self.end % self.capacity
        first = min(len(y), self.capacity - at)
        self._ring[at : at + first] = y[:first]
        self._ring[: len(y) - first] = y[first:]
        self.end += len(y)
        return len(y)

    def read(self, start: int, n: int) -> np.ndarray:
        """Positions ``[start, start + n)``; silence where nothing is held."""
        out = np.zeros(max(0, n), np.float32)
        lo, hi = max(start, self.end - self.capacity, 0), min(start + n, self.end)
        while lo < hi:  # at most two pieces: the ring wraps once
            piece_end = min(hi, (lo // self.capacity + 1) * self.capacity)
            out[lo - start : piece_end - start] = self._ring[lo % self.capacity : (piece_end - 1) % self.capacity + 1]
            lo = piece_end
        return out


class GapFill:
    """The bridge's output across a move: raw microphone during the gap, the server's output otherwise."""

    def __init__(self, live: LiveStream, history: RawHistory, *, fade: int, hop: int):
        self.live, self.history = live, history
        self.fade = max(1, fade)
        self.hop = max(1, hop)  # one hop of output: how far behind the fill the resumed output may be to hold
        self.max_hold = 2 * self.hop
        self.state = PROCESSED
        self.held = 0  # samples the fill has paused for
        self.filled = 0  # positions filled raw during the current gap
        self.raw_samples = 0  # output positions filled with the raw microphone, in all

    @property
    def moving(self) -> bool:
        return self.state != PROCESSED

    def lost(self) -> None:
        """The connection is gone: play the raw microphone from the next block on."""
        self.state, self.held, self.filled = RAW, 0, 0

    def restarted(self) -> None:
        """The stream started afresh (its positions restart at zero): no fill; the history is indexed anew from
        the next block (the blocks re-sent to the fresh session shift it by their length, until the next restart)."""
        self.state, self.held = PROCESSED, 0
        old = self.history
        self.history = RawHistory(old.resampler.rate_in, old.resampler.rate_out, old.capacity)

    def on_block(self, block: np.ndarray) -> np.ndarray:
        """A captured block -> what to play now: raw samples while moving (as many as the block adds), else none."""
        added = self.history.push(block)
        if self.state == HOLD:
            self.held += added
            if self.held < self.max_hold:
                return np.zeros(0, np.float32)
            self.state = RAW  # the resumed worker did not take over in time: fill again
        if self.state != RAW or added == 0:
            return np.zeros(0, np.float32)
        raw = self.history.read(self.live.delivered, added)
        self.live.cover(added)
        self.raw_samples += added
        self.filled += added
        return raw

    def on_output(self, samples: np.ndarray) -> np.ndarray:
        """Output from the server -> what to play: all of it normally; while moving, only what lies beyond the
        raw fill, crossfaded in."""
        fresh = self.live.output(samples)
        if self.state == PROCESSED:
            return fresh
        if len(fresh) == 0:
            if self.state == RAW and self.live.delivered - self.live.connection_out <= self.hop:
                self.state, self.held = HOLD, 0
            return fresh
        self.state = PROCESSED
        if self.filled == 0:  # the stream moved before a block was due: the processed audio simply goes on
            return fresh
        first = self.live.delivered - len(fresh)
        n = min(self.fade, len(fresh))
        weight = (np.arange(1, n + 1, dtype=np.float32) / np.float32(n + 1)).astype(np.float32)
        out = fresh.astype(np.float32, copy=True)
        out[:n] = weight * fresh[:n] + (1 - weight) * self.history.read(first, n)
        return out
