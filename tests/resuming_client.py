"""A test client that follows its stream across workers (docs/protocol.md, "Resume"), with timings for every move.

It streams a signal in 20 ms frames at real-time pace, never more than the server's latency plus half a chunk
ahead of its output (so the server's overload rule never cuts input; after a move the input the new worker lacks
is re-sent as fast as that allows, to catch up with the real-time clock),
keeps the latest ``session.checkpoint``, and when the connection ends before ``flushed`` (a killed worker: 1006; a
drain: 1012) it reconnects to the same URL (the balancer) with ``session.resume``, re-sends its input after
``input_samples_acked`` and keeps the first ``output_samples`` of its output. ``gaps_s``: per move, the time from
the last output frame on the old worker to the first on the new one.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

RATE = 16000
FRAME = RATE // 50  # 20 ms
WAIT_S = 15.0


def start_message() -> str:
    return json.dumps(
        {"type": "session.start", "protocol": 1, "task": "se", "sample_rate": RATE, "format": "f32le", "channels": 1}
    )


class ResumingStream:
    def __init__(self, url: str, x: np.ndarray, max_moves: int = 3):
        self.url, self.x, self.max_moves = url, x.astype(np.float32), max_moves
        self.output: list[np.ndarray] = []
        self.received = self.sent = 0
        self.checkpoint: dict | None = None
        self.session_ids: list[str] = []
        self.close_codes: list[int | None] = []
        self.gaps_s: list[float] = []
        self.dropped_ms = 0.0
        self.last_output_at: float | None = None
        self.outputs_on_connection = 0
        self.checkpoints_on_connection = 0
        self.progress = asyncio.Event()
        self.began: float | None = None  # the stream's real-time clock (kept across moves)

    def result(self) -> np.ndarray:
        return np.concatenate(self.output) if self.output else np.zeros(0, np.float32)

    async def run(self) -> None:
        message = start_message()
        for _ in range(self.max_moves + 1):
            async with connect(self.url, open_timeout=WAIT_S, max_size=None) as ws:
                await ws.send(message)
                ready = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
                self._attach(ready)
                if await self._stream(ws, ready):
                    return
            self.close_codes.append(ws.close_code)
            assert self.checkpoint is not None, f"connection lost before any checkpoint (close {ws.close_code})"
            message = json.dumps({"type": "session.resume", "protocol": 1, "token": self.checkpoint["token"]})
        raise AssertionError(f"more than {self.max_moves} moves: {self.close_codes}")

    def _attach(self, ready: dict) -> None:
        assert ready["type"] in ("session.ready", "session.resumed"), ready
        self.session_ids.append(ready["session_id"])
        self.outputs_on_connection = self.checkpoints_on_connection = 0
        if ready["type"] == "session.resumed":
            kept = self.result()[: ready["output_samples"]]
            assert len(kept) == ready["output_samples"], "the checkpoint counts output this client never got"
            self.output, self.received, self.sent = [kept], len(kept), ready["input_samples_acked"]

    async def _stream(self, ws, ready: dict) -> bool:
        """True once ``flushed`` arrived; False when the connection ended first."""
        ahead_limit = (ready["algorithmic_latency_ms"] + ready["chunk_ms"] / 2) * RATE / 1000
        sender = asyncio.create_task(self._send(ws, ahead_limit), name="sender")
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    self._output(np.frombuffer(message, dtype="<f4"), resumed=ready["type"] == "session.resumed")
                    continue
                event = json.loads(message)
                if event["type"] == "session.checkpoint":
                    self.checkpoint = event
                    self.checkpoints_on_connection += 1
                elif event["type"] == "warning" and event.get("code") == "overload":
                    self.dropped_ms += event["dropped_ms"]
                elif event["type"] == "flushed":
                    return True
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
        return False

    def _output(self, samples: np.ndarray, resumed: bool) -> None:
        now = time.monotonic()
        if resumed and self.outputs_on_connection == 0 and self.last_output_at is not None:
            self.gaps_s.append(now - self.last_output_at)
        self.outputs_on_connection += 1
        self.last_output_at = now
        self.output.append(samples.copy())
        self.received += len(samples)
        self.progress.set()

    async def _send(self, ws, ahead_limit: float) -> None:
        if self.began is None:
            self.began = time.monotonic()
        try:
            while self.sent < len(self.x):
                due = self.began + (self.sent + FRAME) / RATE  # behind after a move: at once
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                while self.sent - self.received > ahead_limit:
                    self.progress.clear()
                    await self.progress.wait()
                frame = self.x[self.sent : self.sent + FRAME]
                await ws.send(frame.astype("<f4").tobytes())
                self.sent += len(frame)
            await ws.send(json.dumps({"type": "flush"}))
        except ConnectionClosed:
            pass
