"""The bounded, ordered queue between a connection and its socket writer (audio frames, events, markers)."""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np


class Outbox:
    """Everything the sender writes, in order. Audio items are bounded: beyond ``max_audio`` the oldest audio item
    is dropped (its length is returned so it can be counted). ``drained()`` waits until all was written.

    Other items (events, pre-encoded binary frames, callables the sender calls when it reaches them) are not
    dropped: their producers bound them (events are rare; a TTS session puts one sentence of frames at a time and
    waits for ``drained()``). After ``close()`` (the socket is gone) puts are ignored and ``drained()`` returns at
    once, so no producer waits for a dead connection."""

    def __init__(self, max_audio: int):
        self.items: deque = deque()
        self.max_audio = max_audio
        self.audio = 0
        self.pending = 0  # items put and not yet fully written
        self.ready = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.closed = False

    def close(self) -> None:
        """The socket is gone: drop what waits, ignore later puts, release every ``drained()`` waiter."""
        self.closed = True
        self.items.clear()
        self.audio = self.pending = 0
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
        self.items.append(item)
        self.pending += 1
        self.ready.set()
        self.idle.clear()
        return dropped

    async def get(self):
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        item = self.items.popleft()
        if isinstance(item, np.ndarray):
            self.audio -= 1
        return item

    def written(self) -> None:
        if self.closed:
            return
        self.pending -= 1
        if self.pending == 0:
            self.idle.set()

    async def drained(self) -> None:
        await self.idle.wait()
