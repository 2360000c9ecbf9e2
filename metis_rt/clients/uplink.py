"""Microphone blocks to the server, across moves between workers: the send side of the mic client and the bridge.

While connected, blocks wait in a bounded queue (``queue_blocks``; overload policy: when the socket cannot keep up
the *oldest* block is dropped and counted) and the sender coalesces what is waiting into frames of at most
``max_frame_samples``. Every frame sent is kept by the :class:`~metis_rt.clients.live_resume.LiveStream` until a
checkpoint acknowledges it.

While the stream moves (:meth:`Uplink.moving`) there is no socket: new blocks wait aside, bounded by the stream's
hold (oldest dropped, counted). After ``session.resumed`` the sender first re-sends, in order, the held input after
the new worker's ``input_samples_acked``, then the blocks queued before the loss, then those captured during the
gap; so the server sees the microphone without a hole (unless the gap outlasted the hold).
"""

from __future__ import annotations

import asyncio
import collections

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from metis_rt.clients import wire
from metis_rt.clients.live_resume import LiveStream, frames

END = object()  # queue sentinel: the input has ended (the sender then sends session.end)


class Uplink:
    def __init__(self, live: LiveStream, queue_blocks: int, max_frame_samples: int, fmt: str):
        self.live, self.fmt = live, fmt
        self.max_frame = max(1, max_frame_samples)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max(1, queue_blocks))
        self.dropped_samples = 0  # blocks dropped: the socket could not keep up, or a gap outlasted the hold
        self.sent_samples = 0
        self._aside: collections.deque[np.ndarray] = collections.deque()  # captured while moving
        self._aside_samples = 0
        self._moving = False
        self._replay: list[np.ndarray] = []  # held input to re-send first on a resumed connection
        self._backlog: collections.deque[np.ndarray] = collections.deque()  # blocks not sent yet, then the queue

    # --- the loop side: blocks in -----------------------------------------------------------------------
    def push(self, item) -> None:
        """A block (or END). Connected: into the queue (drop oldest when full). Moving: aside (bounded)."""
        if self._moving and item is not END:
            self._aside.append(item)
            self._aside_samples += len(item)
            while self._aside_samples > self.live.hold_samples and len(self._aside) > 1:
                oldest = self._aside.popleft()
                self._aside_samples -= len(oldest)
                self.dropped_samples += len(oldest)
            return
        if self.queue.full():
            oldest = self.queue.get_nowait()
            if oldest is not END:
                self.dropped_samples += len(oldest)
        self.queue.put_nowait(item)

    def moving(self) -> None:
        """The connection is gone: hold new blocks aside until the stream is resumed."""
        self._moving = True

    def resumed(self, replay: np.ndarray) -> None:
        """The new connection's first frames: the held input (``replay``, already recorded by the stream), then the
        blocks not sent yet: those queued before the loss and those put aside during the gap, in order."""
        self._replay = frames(replay, self.max_frame)
        ended = False
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is END:
                ended = True
            else:
                self._backlog.append(item)
        for item in self._aside:
            if item is END:
                ended = True
            else:
                self._backlog.append(item)
        self._aside.clear()
        self._aside_samples = 0
        self._moving = False
        if ended:
            self.queue.put_nowait(END)

    # --- the connection side: frames out ------------------------------------------------------------------
    async def send_loop(self, ws: ClientConnection) -> None:
        """Send until END (then ``session.end``) or until the connection closes (its receiver says why)."""
        try:
            while self._replay:  # held input: the stream keeps it until acknowledged, whatever happens here
                await ws.send(wire.encode_audio(self._replay[0], self.fmt))
                self._replay.pop(0)
            while self._backlog:
                await self._send(ws, self._take_backlog())
            while True:
                item = await self.queue.get()
                blocks = []
                while item is not END:
                    blocks.append(item)
                    if self.queue.empty() or sum(map(len, blocks)) >= self.max_frame:
                        break
                    item = self.queue.get_nowait()
                if blocks:
                    await self._send(ws, np.concatenate(blocks))
                if item is END:
                    await ws.send(wire.control_message("session.end"))
                    return
        except ConnectionClosed:
            return

    def _take_backlog(self) -> np.ndarray:
        blocks = [self._backlog.popleft()]
        while self._backlog and sum(map(len, blocks)) + len(self._backlog[0]) <= self.max_frame:
            blocks.append(self._backlog.popleft())
        return np.concatenate(blocks)

    async def _send(self, ws: ClientConnection, frame: np.ndarray) -> None:
        """Recorded first: if the connection fails during the send, the next resume re-sends it from the record."""
        self.live.sent(frame)
        self.sent_samples += len(frame)
        await ws.send(wire.encode_audio(frame, self.fmt))
