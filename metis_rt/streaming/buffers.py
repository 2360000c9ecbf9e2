"""Timeline buffers: audio samples and committed tokens addressed by absolute position, trimmed from the front.

The stream *timeline* is the input with dropped spans cut out (see ``StreamSession``). Pure code.
"""

from __future__ import annotations

import numpy as np

from metis_rt.streaming.overlap_add import splice


class AudioTimeline:
    """Samples ``[start, end)`` of a mono float32 signal."""

    def __init__(self) -> None:
        self.data = np.zeros(0, dtype=np.float32)
        self.start = 0
        self.skip = 0  # samples of a cut span that have not arrived yet: discarded when they do

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def append(self, x: np.ndarray) -> None:
        if self.skip and len(x):
            n = min(self.skip, len(x))
            x, self.skip = x[n:], self.skip - n
        if len(x):
            self.data = np.concatenate([self.data, np.asarray(x, dtype=np.float32)])

    def pad_to(self, end: int) -> None:
        """Append zeros up to absolute position ``end``."""
        if end > self.end:
            self.append(np.zeros(end - self.end, dtype=np.float32))

    def read(self, a: int, b: int) -> np.ndarray:
        """Copy of samples [a, b); must lie inside the buffer."""
        if a < self.start or b > self.end or a > b:
            raise IndexError(f"samples [{a}, {b}) not in buffer [{self.start}, {self.end})")
        return self.data[a - self.start : b - self.start].copy()

    def trim_before(self, position: int) -> None:
        if position > self.start:
            cut = min(position, self.end) - self.start
            self.data = self.data[cut:]
            self.start += cut

    def cut(self, position: int, length: int, fade: int) -> None:
        """Remove [position, position + length) with a ``fade``-sample crossfade into what follows.

        The span may reach past the buffer's end: the part not yet appended is skipped when it arrives.
        """
        rel = position - self.start
        if rel < 0 or rel > len(self.data):
            raise IndexError(f"cut at {position} outside [{self.start}, {self.end}]")
        available = len(self.data) - rel
        if length > available:
            self.data = self.data[:rel]
            self.skip += length - available
            return
        fade = min(fade, length, len(self.data) - rel - length)
        self.data = splice(self.data[: rel + fade], self.data[rel + length :], fade)


class TokenTimeline:
    """Committed tokens of frames ``[start, end)``; rows are scalars (semantic) or vectors (acoustic layers)."""

    def __init__(self, width: int | None = None) -> None:
        shape = (0,) if width is None else (0, width)
        self.data = np.zeros(shape, dtype=np.int64)
        self.start = 0

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def append(self, tokens: np.ndarray) -> None:
        self.data = np.concatenate([self.data, np.asarray(tokens, dtype=np.int64)])

    def last(self, n: int) -> np.ndarray:
        """The last ``n`` committed rows (fewer at stream start)."""
        n = min(n, len(self.data))
        return self.data[len(self.data) - n :].copy()

    def keep_last(self, n: int) -> None:
        extra = len(self.data) - n
        if extra > 0:
            self.data = self.data[extra:]
            self.start += extra
