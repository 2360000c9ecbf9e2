"""The bounded, ordered queue between a connection and its socket writer (audio frames, events, markers)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import numpy as np

MAX_EVENTS = 256  # text frames (events) waiting for the socket
MAX_FRAME_BYTES = 32 * 1024 * 1024  # bytes of text and binary frames waiting (a 1000-character TTS sentence at
# 48 kHz float32 is ~14 MB; its producer puts one sentence at a time)


class Outbox:
    """Everything the sender writes, in order, bounded in every kind of item.

    Overload policy:

    * audio items (numpy arrays): beyond ``max_audio`` the oldest audio item is dropped and its length returned, so
      it is counted as dropped output (a slow reader loses old audio, not new);
    * text frames (events) beyond ``max_events``, or text + binary frames beyond ``max_bytes``: the client is not
      reading what it asked for. The outbox closes (everything waiting is dropped) and ``on_overflow`` is called once,
      so the connection can close the client (code 1008) and count it;
    * callables (markers the sender calls when it reaches them) are not counted: their producer puts one per item.

    Producers of events are bounded too (events are rare; a TTS session puts one sentence of frames at a time and
    waits for ``drained()``). After ``close()`` (the socket is gone) puts are ignored and ``drained()`` returns at
    once, so no producer waits for a dead connection."""

    def __init__(self, max_audio: int, max_events: int = MAX_EVENTS, max_bytes: int = MAX_FRAME_BYTES):
        self.items: deque = deque()
        self.max_audio, self.max_events, self.max_bytes = max_audio, max_events, max_bytes
        self.audio = 0
        self.events = 0  # text frames waiting
        self.bytes = 0  # bytes of text and binary frames waiting
        self.peak_bytes = 0  # the most bytes of frames that ever waited (metrics, tests)
        self.pending = 0  # items put and not yet fully written
        self.ready = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.closed = False
        self.overflowed = False
        self.on_overflow: Callable[[], None] | None = None

    def close(self) -> None:
        """The socket is gone: drop what waits, ignore later puts, release every ``drained()`` waiter."""
        self.closed = True
        self.items.clear()
        self.audio = self.pending = self.events = self.bytes = 0
        self.idle.set()

    def put(self, item) -> int:
        if self.closed:
            return 0
        dropped = 0
        if isinstance(item, np.ndarray):
            if self.audio >= self.max_audio:
                oldest = next(i for i in self.items if isinstance(i, np.ndarray))
                self.items.remove(oldest)
                self.audio -= 1
                self.pending -= 1
                dropped = len(oldest)
            self.audio += 1
        elif isinstance(item, (str, bytes)):
            events = self.events + isinstance(item, str)
            if events > self.max_events or self.bytes + len(item) > self.max_bytes:
                self._overflow()
                return 0
            self.events, self.bytes = events, self.bytes + len(item)
            self.peak_bytes = max(self.peak_bytes, self.bytes)
        self.items.append(item)
        self.pending += 1
        self.ready.set()
        self.idle.clear()
        return dropped

    def _overflow(self) -> None:
        self.overflowed = True
        self.close()
        if self.on_overflow is not None:
            self.on_overflow()

    async def get(self):
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        item = self.items.popleft()
        if isinstance(item, np.ndarray):
            self.audio -= 1
        elif isinstance(item, (str, bytes)):
            self.events -= isinstance(item, str)
            self.bytes -= len(item)
        return item

    def written(self) -> None:
        if self.closed:
            return
        self.pending -= 1
        if self.pending == 0:
            self.idle.set()

    async def drained(self) -> None:
        await self.idle.wait()
