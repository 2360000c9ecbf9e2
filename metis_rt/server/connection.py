"""One WebSocket client: handshake, audio in, audio and events out. A thin asyncio shell around a StreamSession.

Structure: after ``session.start`` the connection runs a TaskGroup of a sender (the only task that writes to the
socket, fed by a bounded queue) and a stats ticker, while the receive loop runs in the group's body; when the
client ends or disconnects the other tasks are cancelled and the session leaves the engine. Model work never runs
here: audio is pushed into the session (resampling only) and references are prepared on the engine thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
from websockets.exceptions import ConnectionClosed

from metis_rt.errors import AudioInputError
from metis_rt.server import protocol as proto
from metis_rt.server.voices import decode_reference
from metis_rt.streaming.config import StepsConfig, stream_decoding
from metis_rt.streaming.session import SessionSpec, StreamSession
from metis_rt.streaming.window import ReferenceTokens

if TYPE_CHECKING:
    from metis_rt.server.app import MetisServer

log = logging.getLogger(__name__)

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_INTERNAL, CLOSE_TRY_LATER = 1000, 1001, 1008, 1011, 1013
OUTPUT_QUEUE_ITEMS = 64  # hops of output waiting for the socket; beyond it the oldest is dropped (counted)
FLUSHED = object()


class Outbox:
    """Everything the sender writes, in order. Audio items are bounded: beyond ``max_audio`` the oldest audio item
    is dropped (its length is returned so it can be counted). ``drained()`` waits until all was written."""

    def __init__(self, max_audio: int):
        self.items: deque = deque()
        self.max_audio = max_audio
        self.audio = 0
        self.pending = 0  # items put and not yet fully written
        self.ready = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    def put(self, item) -> int:
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
        self.pending -= 1
        if self.pending == 0:
            self.idle.set()

    async def drained(self) -> None:
        await self.idle.wait()


class Connection:
    def __init__(self, server: MetisServer, ws):
        self.server = server
        self.ws = ws
        self.session: StreamSession | None = None
        self.start: proto.SessionStart | None = None
        self.out = Outbox(OUTPUT_QUEUE_ITEMS)
        self.flushed = asyncio.Event()
        self.reply_flushed = True
        self.mix, self.bypass = 1.0, False
        self.loop = asyncio.get_running_loop()
        self.session_id = ""

    # --- lifecycle ------------------------------------------------------------------------------
    async def run(self) -> None:
        start = await self._handshake()
        if start is None:
            return
        try:
            async with asyncio.TaskGroup() as tg:
                sender = tg.create_task(self._send_loop(), name="sender")
                stats = tg.create_task(self._stats_loop(), name="stats")
                await self._receive_loop()
                sender.cancel()
                stats.cancel()
        finally:
            self.server.release(self)

    async def _handshake(self) -> proto.SessionStart | None:
        """Wait for a valid session.start (errors let the client retry); None when the connection ended."""
        while True:
            message = await self._recv()
            if message is None:
                return None
            if isinstance(message, bytes):
                await self._event(proto.ErrorEvent("audio_before_start", "send session.start before audio"))
                await self.ws.close(CLOSE_POLICY, "audio before session.start")
                return None
            try:
                start = proto.parse_client_message(message)
                if not isinstance(start, proto.SessionStart):
                    raise proto.ProtocolError("not_started", f"{start.type} before session.start")
                self.server.check_task(start.task)
                if not self.server.acquire(self):
                    await self._event(proto.Busy(self.server.cfg.busy_retry_after_s))
                    await self.ws.close(CLOSE_TRY_LATER, "server busy")
                    return None
                try:
                    await self._open(start)
                except BaseException:
                    self.server.release(self)
                    raise
                return start
            except proto.ProtocolError as exc:
                await self._event(proto.ErrorEvent(exc.code, exc.message))
            except AudioInputError as exc:
                await self._event(proto.ErrorEvent("invalid_reference", str(exc)))

    async def _open(self, start: proto.SessionStart) -> None:
        reference = await self._reference(start.task, start.voice, start.reference)
        steps = self._steps(start.task, start.options)
        spec = SessionSpec(
            start.task,
            start.sample_rate,
            start.output_sample_rate,
            stream_decoding(self.server.official, start.task, steps),
            self.server.deterministic,
        )
        sid = self.server.new_session_id()
        session = StreamSession(
            int(sid),
            spec,
            self.server.geometry,
            self.server.stream_cfg.engine,
            self.server.processor.num_quantizers,
            reference,
            on_output=self._output_from_engine,
            on_done=self._done_from_engine,
        )
        self.mix, self.bypass = start.options.mix, start.options.bypass
        session.set_mix(self.mix, self.bypass)
        self.session, self.start, self.session_id = session, start, sid
        self.server.engine.add(session)
        await self._event(
            proto.SessionReady(
                sid,
                start.sample_rate,
                start.output_sample_rate,
                start.format,
                round(session.latency_ms, 2),
                self.server.geometry.chunk_ms,
            )
        )

    # --- receiving ------------------------------------------------------------------------------
    async def _recv(self):
        try:
            async with asyncio.timeout(self.server.cfg.idle_timeout_s):
                return await self.ws.recv()
        except TimeoutError:
            await self.ws.close(CLOSE_NORMAL, "idle timeout")
            return None
        except ConnectionClosed:
            return None

    async def _receive_loop(self) -> None:
        while True:
            message = await self._recv()
            if message is None:
                return
            if isinstance(message, bytes):
                self._audio(message)
                continue
            try:
                control = proto.parse_client_message(message)
                if isinstance(control, proto.SessionStart):
                    raise proto.ProtocolError("already_started", "the session has started; send session.update")
                if isinstance(control, proto.SessionUpdate):
                    await self._update(control)
                elif isinstance(control, proto.Flush):
                    await self._flush()
                elif isinstance(control, proto.SessionEnd):
                    await self._flush(reply=False)
                    await self.out.drained()
                    await self.ws.close(CLOSE_NORMAL, "session ended")
                    return
            except proto.ProtocolError as exc:
                self._queue_event(proto.ErrorEvent(exc.code, exc.message))
            except AudioInputError as exc:
                self._queue_event(proto.ErrorEvent("invalid_reference", str(exc)))

    def _audio(self, frame: bytes) -> None:
        start, session = self.start, self.session
        try:
            samples = proto.decode_pcm(frame, start.format, start.sample_rate)
        except proto.ProtocolError as exc:
            width = proto.FORMATS[start.format].itemsize
            session.metrics.dropped_ms += len(frame) // width * 1000 / start.sample_rate
            self._queue_event(proto.ErrorEvent(exc.code, exc.message))
            return
        session.push(samples)

    async def _flush(self, reply: bool = True) -> None:
        """End the current input, deliver all its output (then ``flushed``), and start a fresh stream."""
        self.flushed.clear()
        self.reply_flushed = reply
        self.session.finish()
        await self.flushed.wait()

    async def _update(self, update: proto.SessionUpdate) -> None:
        session, task = self.session, self.start.task
        opts = update.options
        if "mix" in opts or "bypass" in opts:
            self.mix, self.bypass = opts.get("mix", self.mix), opts.get("bypass", self.bypass)
            session.set_mix(self.mix, self.bypass)
        if "stage1_steps" in opts or "s2a_steps" in opts:
            current = self._steps(task, proto.Options(**{k: v for k, v in opts.items() if k.endswith("steps")}))
            session.update_settings(stream_decoding(self.server.official, task, current))
        if update.voice is not None:
            if task not in ("tse", "vc"):
                raise proto.ProtocolError("invalid_voice", f"task {task!r} takes no voice")
            session.reference = await self._reference(task, update.voice, None)
        self._queue_event(proto.Updated(dict(opts), update.voice))

    # --- helpers --------------------------------------------------------------------------------
    def _steps(self, task: str, options: proto.Options) -> StepsConfig:
        base = self.server.stream_cfg.steps_for(task)
        s2a = options.s2a_steps or base.s2a
        if len(s2a) != len(base.s2a):
            raise proto.ProtocolError("invalid_options", f"s2a_steps needs {len(base.s2a)} values, got {len(s2a)}")
        return StepsConfig(options.stage1_steps or base.stage1, s2a)

    async def _reference(self, task: str, voice: str | None, data: bytes | None) -> ReferenceTokens | None:
        if task not in ("tse", "vc"):
            return None
        prepare = self.server.prepare_reference
        if voice is not None:
            try:
                return await asyncio.to_thread(self.server.voices.get, voice, prepare)
            except KeyError:
                names = self.server.voices.names()
                raise proto.ProtocolError("unknown_voice", f"no voice {voice!r}; available: {names}") from None
        # decoding + resampling up to 30 s of audio is CPU work: off the event loop, like the model work
        return await asyncio.to_thread(lambda: prepare(*decode_reference(data, proto.MAX_REFERENCE_S)))

    # --- sending --------------------------------------------------------------------------------
    async def _event(self, message) -> None:
        """Direct write, only before the sender task exists."""
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(proto.encode(message))

    def _queue_event(self, message) -> None:
        self.out.put(proto.encode(message))

    def _output_from_engine(self, samples: np.ndarray) -> None:  # engine thread
        self.loop.call_soon_threadsafe(self._enqueue_audio, samples)

    def _done_from_engine(self) -> None:  # engine thread
        self.loop.call_soon_threadsafe(self.out.put, FLUSHED)

    def _enqueue_audio(self, samples: np.ndarray) -> None:
        dropped = self.out.put(samples)
        if dropped:
            self.session.metrics.dropped_output_ms += dropped * 1000 / self.start.output_sample_rate

    async def _send_loop(self) -> None:
        while True:
            item = await self.out.get()
            try:
                if item is FLUSHED:
                    self.session.reset()
                    if self.reply_flushed:
                        await self.ws.send(proto.encode(proto.Flushed()))
                    self.flushed.set()
                elif isinstance(item, np.ndarray):
                    await self.ws.send(proto.encode_pcm(item, self.start.format))
                else:
                    await self.ws.send(item)
            except ConnectionClosed:
                self.flushed.set()
                return
            finally:
                self.out.written()

    async def _stats_loop(self) -> None:
        dropped_before = 0.0
        while True:
            await asyncio.sleep(self.server.cfg.stats_interval_s)
            session = self.session
            if session.error is not None:
                self._queue_event(proto.ErrorEvent("engine_error", f"processing failed: {session.error}"))
                await self.ws.close(CLOSE_INTERNAL, "processing failed")
                return
            snap = session.metrics.snapshot()
            if snap["hops"] == 0:
                continue  # nothing measured yet: no zeros that look like measurements
            self._queue_event(
                proto.Stats(
                    round(snap["rtf"], 3),
                    round(snap["hop_compute_ms_p50"], 1),
                    round(snap["queue_ms"], 1),
                    round(snap["dropped_ms"], 1),
                    round(snap["latency_ms_p50"], 1),
                    int(snap["hops"]),
                )
            )
            if snap["dropped_ms"] > dropped_before:
                self._queue_event(
                    proto.Warning(
                        "overload",
                        f"the server fell behind: dropped {snap['dropped_ms'] - dropped_before:.0f} ms of input",
                    )
                )
                dropped_before = snap["dropped_ms"]
