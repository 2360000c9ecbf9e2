"""One WebSocket client: handshake, audio in, audio and events out. A thin asyncio shell around a StreamSession.

Structure: after ``session.start`` the connection runs a TaskGroup of a sender (the only task that writes to the
socket, fed by a bounded queue) and a stats ticker, while the receive loop runs in the group's body; when the
client ends or disconnects the other tasks are cancelled and the session leaves the engine. Model work never runs
here: audio is pushed into the session (resampling only) and references are prepared on the engine thread.

Settings change through :meth:`Connection.apply_update`, whether the ``session.update`` came from the client or
from MQTT: it validates everything first (nothing changes on an error), applies, answers ``session.updated`` and
has the server publish the new state. A task switch restarts the stream (output pauses about one latency).

A ``task: tts`` session has no StreamSession: its messages go to ``metis_rt.server.tts_connection`` and a TTS worker
(``tts_session.TtsSession``) takes the stats ticker's place in the TaskGroup. Switching between tts and the
streaming tasks is refused (``task_switch_unsupported``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

import numpy as np
from websockets.exceptions import ConnectionClosed

from metis_rt.config import TaskDecoding
from metis_rt.engines import METIS
from metis_rt.errors import AudioInputError, ConfigError
from metis_rt.server import frame_connection, resume_connection, tts_connection
from metis_rt.server import protocol as proto
from metis_rt.server.outbox import Outbox
from metis_rt.server.voices import decode_reference
from metis_rt.streaming.config import StepsConfig, stream_decoding
from metis_rt.streaming.frame_session import FrameSession
from metis_rt.streaming.session import PROMPT_TASKS, SessionClosed, SessionSpec, StreamSession
from metis_rt.streaming.window import ReferenceTokens

if TYPE_CHECKING:
    from metis_rt.server.app import MetisServer
    from metis_rt.server.tts_session import TtsSession

log = logging.getLogger(__name__)

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_INTERNAL, CLOSE_TRY_LATER = 1000, 1001, 1008, 1011, 1013
Reference = ReferenceTokens | None
OUTPUT_QUEUE_ITEMS = 64  # hops of output waiting for the socket; beyond it the oldest is dropped (counted)
FLUSHED = object()


class Connection:
    def __init__(self, server: MetisServer, ws):
        self.server = server
        self.ws = ws
        self.session: StreamSession | FrameSession | None = None  # a streaming session (se, tse, vc)
        self.engine = METIS  # the engine running it (metis_rt.engines)
        self.tts: TtsSession | None = None  # a TTS session
        self.start: proto.SessionStart | None = None
        self.stage1 = "task"  # the stage-1 family running the session
        self.out = Outbox(OUTPUT_QUEUE_ITEMS)
        self.out.on_overflow = lambda: self._not_reading("its outbox is full")
        self.dropped_reported_ms = 0.0  # input drops of the current stream already reported in a warning
        self.flushed = asyncio.Event()
        self.reply_flushed = True
        self.mix, self.bypass = 1.0, False
        self.steps: StepsConfig | None = None  # decoding steps in use (the task's configured ones + overrides)
        self.reference: ReferenceTokens | None = None  # the voice for tse/vc, kept across task switches
        self.voice: str | None = None  # its server-side name (None: none, or an uploaded reference)
        self.loop = asyncio.get_running_loop()
        self.session_id = ""
        self._updating = asyncio.Lock()  # one update at a time (client and MQTT may overlap)
        self.resume_history = (0, 0.0)  # moves of this stream to another worker so far, and their gaps (ms)
        self.checkpoints_sent = 0
        self.closing_for_drain = False  # the drain took (or is taking) the final checkpoint: nothing more to say

    @property
    def task(self) -> str:
        return self.start.task

    # --- lifecycle ------------------------------------------------------------------------------
    async def run(self) -> None:
        self.server.unstarted += 1
        started = False
        try:
            start = await self._handshake()
            started = start is not None
        finally:
            self.server.unstarted -= 1
        if not started:
            return
        try:
            async with asyncio.TaskGroup() as tg:
                background = [tg.create_task(self._send_loop(), name="sender")]
                if self.tts is not None:
                    background.append(tg.create_task(self.tts.run(), name="tts"))
                else:
                    background.append(tg.create_task(self._stats_loop(), name="stats"))
                if self.server.resumer is not None and self.tts is None:
                    background.append(tg.create_task(resume_connection.checkpoint_loop(self), name="checkpoints"))
                await self._receive_loop()
                for task in background:
                    task.cancel()
        finally:
            self.server.release(self)

    async def _handshake(self) -> proto.SessionStart | None:
        """Wait for a valid session.start (errors let the client retry, within ``handshake_timeout_s`` of the
        connection's opening); None when the connection ended."""
        deadline = self.loop.time() + self.server.cfg.handshake_timeout_s
        while True:
            message = await self._recv(deadline)
            if message is None:
                return None
            if isinstance(message, bytes):
                await self._event(proto.ErrorEvent("audio_before_start", "send session.start before audio"))
                await self.ws.close(CLOSE_POLICY, "audio before session.start")
                return None
            try:
                start = proto.parse_client_message(message)
                if isinstance(start, proto.SessionResume):
                    return await self._resume(start)
                if not isinstance(start, proto.SessionStart):
                    raise proto.ProtocolError("not_started", f"{start.type} before session.start")
                self.server.catalogue.check(start.engine, start.task)
                self.server.check_task(start.task)
                engine = self.server.catalogue.resolve(start.engine, start.task)
                family = self.server.check_stage1(start.stage1, start.task) if engine == METIS else "task"
                if not self.server.acquire(self):
                    await self._event(proto.Busy(self.server.cfg.busy_retry_after_s))
                    await self.ws.close(CLOSE_TRY_LATER, "server busy")
                    return None
                try:
                    if start.task == "tts":
                        await tts_connection.open_tts(self, start, family)
                    elif engine == METIS:
                        await self._open(start, family)
                    else:
                        await frame_connection.open_frames(self, start, engine)
                except BaseException:
                    self.server.release(self)
                    raise
                return start
            except proto.ProtocolError as exc:
                await self._event(proto.ErrorEvent(exc.code, exc.message))
            except AudioInputError as exc:
                await self._event(proto.ErrorEvent("invalid_reference", str(exc)))

    async def _resume(self, message: proto.SessionResume) -> proto.SessionResume | None:
        """``session.resume`` in the handshake: the slot first (busy: 1013), then the token (errors: the slot is
        freed again and the ProtocolError goes back to the handshake loop)."""
        if not self.server.acquire(self):
            await self._event(proto.Busy(self.server.cfg.busy_retry_after_s))
            await self.ws.close(CLOSE_TRY_LATER, "server busy")
            return None
        try:
            await resume_connection.open_resumed(self, message)
        except BaseException:
            self.server.release(self)
            raise
        return message

    def ready_event(self, session: StreamSession) -> proto.SessionReady:
        start = self.start
        return proto.SessionReady(
            self.session_id,
            start.sample_rate,
            start.output_sample_rate,
            start.format,
            round(session.latency_ms, 2),
            self.server.geometry.chunk_ms,
            self.stage1,
            self.steps.stage1,
            list(self.steps.s2a),
            METIS,
            session.latency_input_samples,
        )

    async def _open(self, start: proto.SessionStart, family: str) -> None:
        if start.options.strength is not None:
            raise proto.ProtocolError("invalid_options", frame_connection.STRENGTH_ONLY)
        reference = await self._reference(start.voice, start.reference)
        options = {"stage1_steps": start.options.stage1_steps, "s2a_steps": start.options.s2a_steps}
        steps = self._merge_steps(self.server.stream_cfg.steps_for(start.task), options)
        spec = SessionSpec(
            start.task,
            start.sample_rate,
            start.output_sample_rate,
            self._decoding(start.task, steps),
            self.server.deterministic,
            stage1=family,
        )
        sid = self.server.new_session_id()
        session = StreamSession(
            self.server.new_engine_id(),
            spec,
            self.server.geometry,
            self.server.stream_cfg.engine,
            self.server.processor.num_quantizers,
            reference if start.task in PROMPT_TASKS else None,
            on_output=self._output_from_engine,
            on_done=self._done_from_engine,
        )
        self.mix, self.bypass = start.options.mix, start.options.bypass
        session.set_mix(self.mix, self.bypass)
        self.session, self.start, self.session_id, self.stage1 = session, start, sid, family
        self.steps, self.reference, self.voice = steps, reference, start.voice if reference is not None else None
        self.server.engine.add(session)
        self.server.session_opened(self)  # registered before the client hears of it: MQTT can reach it at once
        await self._event(self.ready_event(session))

    # --- receiving ------------------------------------------------------------------------------
    async def _recv(self, deadline: float | None = None):
        """The next message, or None when the connection ended or idled (a TTS session speaking is not idle) or
        ``deadline`` (loop time: the handshake's) passed."""
        while True:
            idle_at = self.loop.time() + self.server.cfg.idle_timeout_s
            try:
                async with asyncio.timeout_at(idle_at if deadline is None else min(deadline, idle_at)):
                    return await self.ws.recv()  # cancelling recv() loses no message
            except TimeoutError:
                if deadline is not None and self.loop.time() >= deadline:
                    self.server.counters.handshake_timeouts += 1
                    timeout = self.server.cfg.handshake_timeout_s
                    await self.ws.close(CLOSE_POLICY, f"no valid session.start within {timeout:g} s")
                    return None
                if self.tts is not None and self.tts.busy:
                    continue
                await self.ws.close(CLOSE_NORMAL, "idle timeout")
                return None
            except ConnectionClosed:
                return None

    async def _receive_loop(self) -> None:
        while True:
            message = await self._recv()
            if message is None:
                return
            received = time.perf_counter()
            if isinstance(message, bytes):
                if self.tts is not None:
                    self._queue_event(tts_connection.AUDIO_NOT_USED)
                else:
                    self._audio(message)
                continue
            try:
                control = proto.parse_client_message(message)
                if isinstance(control, (proto.SessionStart, proto.SessionResume)):
                    raise proto.ProtocolError("already_started", "the session has started; send session.update")
                if self.tts is not None:
                    if await tts_connection.handle(self, control, received):
                        return
                elif isinstance(control, (proto.TtsSpeak, proto.TtsCancel)):
                    raise proto.ProtocolError("tts_only", f"{control.type} needs a TTS session (task tts)")
                elif isinstance(control, proto.SessionUpdate):
                    await self.apply_update(control)
                elif isinstance(control, proto.Flush):
                    await self._flush()
                elif isinstance(control, proto.SessionEnd):
                    await self._flush(reply=False)
                    await self.out.drained()
                    await self.ws.close(CLOSE_NORMAL, "session ended")
                    return
            except proto.ProtocolError as exc:
                self._queue_event(exc.event())
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

    # --- settings -------------------------------------------------------------------------------
    async def apply_update(self, update: proto.SessionUpdate) -> None:
        """Apply a ``session.update`` from the client or from MQTT; ProtocolError (nothing changed) if invalid."""
        async with self._updating:
            if self.tts is not None:
                await tts_connection.update(self, update)
            elif self.engine != METIS:
                await frame_connection.update(self, update)
            else:
                await self._update(update)

    async def _update(self, update: proto.SessionUpdate) -> None:
        if "strength" in update.options:
            raise proto.ProtocolError("invalid_options", frame_connection.STRENGTH_ONLY)
        task, steps, settings, reference = await self._check(update)
        if self.server.sessions.get(self.session_id) is not self:  # it ended while the voice was prepared
            raise proto.ProtocolError("session_closed", f"session {self.session_id} has ended")
        session, opts = self.session, update.options
        if task != self.task:
            try:
                session.restart(task, settings, reference if task in PROMPT_TASKS else None)
            except SessionClosed:
                raise proto.ProtocolError(
                    "session_ending", "the input is being flushed or ended; switch the task after that completed"
                ) from None
            self.start = dataclasses.replace(self.start, task=task)
        else:
            if steps != self.steps:
                session.update_settings(settings)
            if update.voice is not None and task in PROMPT_TASKS:
                session.reference = reference
        if update.voice is not None:
            self.reference, self.voice = reference, update.voice
        self.steps = steps
        if "mix" in opts or "bypass" in opts:
            self.mix, self.bypass = opts.get("mix", self.mix), opts.get("bypass", self.bypass)
            session.set_mix(self.mix, self.bypass)
        self._queue_event(proto.Updated(dict(opts), update.voice, update.task, steps.stage1, list(steps.s2a)))
        self.server.session_changed(self)

    async def _check(self, update: proto.SessionUpdate) -> tuple[str, StepsConfig, TaskDecoding, Reference]:
        """Validate an update before anything changes: the task, steps, settings and reference to run with."""
        task = update.task or self.task
        switching = task != self.task
        if task == "tts":
            raise tts_connection.task_switch_refused(self.task, task)
        given = [name for name in ("reference_text", "language") if getattr(update, name) is not None]
        if given:
            raise proto.ProtocolError("invalid_message", f"{', '.join(given)}: only for tts sessions, not {self.task}")
        if switching:
            self.server.check_task(task)
        steps = self._merge_steps(self.server.stream_cfg.steps_for(task) if switching else self.steps, update.options)
        settings = self._decoding(task, steps)
        reference = self.reference if update.voice is None else await self._voice(update.voice)
        if task in PROMPT_TASKS and reference is None:
            raise proto.ProtocolError(
                "voice_required",
                f"task {task!r} needs a reference voice: name one in the same update or set it first "
                "(/healthz lists the server's voices); this session has none",
            )
        return task, steps, settings, reference

    def state(self) -> dict:
        """The session's current settings (published retained over MQTT)."""
        if self.tts is not None:
            return tts_connection.state(self)
        if self.engine != METIS:
            return frame_connection.state(self)
        return {
            "session_id": self.session_id,
            "task": self.task,
            "engine": METIS,
            "stage1": self.stage1,
            "bypass": self.bypass,
            "mix": self.mix,
            "voice": self.voice,
            "has_reference": self.reference is not None,
            "stage1_steps": self.steps.stage1,
            "s2a_steps": list(self.steps.s2a),
            "sample_rate": self.start.sample_rate,
            "output_sample_rate": self.start.output_sample_rate,
            "format": self.start.format,
            "algorithmic_latency_ms": round(self.session.latency_ms, 2),
        }

    # --- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _merge_steps(base: StepsConfig, options: dict) -> StepsConfig:
        """``base`` with the ``stage1_steps`` / ``s2a_steps`` of ``options`` (None or absent: keep)."""
        stage1 = options.get("stage1_steps") or base.stage1
        s2a = tuple(options.get("s2a_steps") or base.s2a)
        if len(s2a) != len(base.s2a):
            raise proto.ProtocolError("invalid_options", f"s2a_steps needs {len(base.s2a)} values, got {len(s2a)}")
        return StepsConfig(stage1, s2a)

    def _decoding(self, task: str, steps: StepsConfig) -> TaskDecoding:
        try:
            return stream_decoding(self.server.official, task, steps)
        except ConfigError as exc:
            raise proto.ProtocolError("invalid_options", str(exc)) from None

    async def _reference(self, voice: str | None, data: bytes | None) -> ReferenceTokens | None:
        """The reference of a session.start (any task: an se session keeps it for a later switch)."""
        if (voice is None and data is None) or not self._voices_used():
            return None
        if voice is not None:
            return await self._voice(voice)
        prepare = self.server.prepare_reference
        # decoding + resampling up to 30 s of audio is CPU work: off the event loop, like the model work
        return await asyncio.to_thread(lambda: prepare(*decode_reference(data, proto.MAX_REFERENCE_S)))

    async def _voice(self, name: str) -> ReferenceTokens:
        if not self._voices_used():
            raise proto.ProtocolError("invalid_voice", f"this server runs {', '.join(self.server.tasks)}: no voices")
        try:
            return await asyncio.to_thread(self.server.voices.get, name, self.server.prepare_reference)
        except KeyError:  # the names are not listed here: /healthz lists them (behind the server's Host check)
            raise proto.ProtocolError("unknown_voice", f"no voice {proto.excerpt(name)} on this server") from None

    def _voices_used(self) -> bool:
        return any(task in PROMPT_TASKS for task in self.server.tasks)

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
                async with asyncio.timeout(self.server.cfg.send_timeout_s):
                    if item is FLUSHED:
                        stats = self._stats()  # the stream's final figures, however short it was
                        if stats is not None:
                            await self.ws.send(proto.encode(stats))
                        await self._report_drops()
                        self.session.reset()
                        self.dropped_reported_ms = 0.0
                        if self.reply_flushed:
                            await self.ws.send(proto.encode(proto.Flushed()))
                        self.flushed.set()
                    elif isinstance(item, np.ndarray):
                        await self.ws.send(proto.encode_pcm(item, self.start.format))
                    elif callable(item):  # a probe of when the items after it go out (TTS time to first audio)
                        item()
                    else:
                        await self.ws.send(item)
            except TimeoutError:  # one frame could not be written for send_timeout_s: the client stopped reading
                self._not_reading(f"a frame waited {self.server.cfg.send_timeout_s:g} s for the socket")
                return
            except ConnectionClosed:
                self.out.close()  # nothing waits for a dead socket
                self.flushed.set()
                return
            finally:
                self.out.written()

    async def _report_drops(self) -> None:
        """Before a stream's counters restart (flush, session.end): a warning for drops not reported yet, written
        ahead of ``flushed`` / the close, so drops in the last second of a stream are reported too."""
        dropped = self.session.metrics.snapshot()["dropped_ms"]
        reported = min(self.dropped_reported_ms, dropped)  # a task switch restarted the counters
        if dropped > reported:
            await self.ws.send(proto.encode(self._overload_warning(dropped - reported)))
        self.dropped_reported_ms = dropped

    @staticmethod
    def _overload_warning(dropped_ms: float) -> proto.OverloadWarning:
        message = f"the server fell behind: dropped {dropped_ms:.0f} ms of input"
        return proto.OverloadWarning(message, round(dropped_ms, 3))

    def _not_reading(self, why: str) -> None:
        """Overload policy for a client that stops reading: drop what waits for it, count it, close it (1008)."""
        log.info("closing a client that stopped reading (%s)", why)
        self.server.counters.closed_not_reading += 1
        self.out.close()
        self.flushed.set()
        self.ws.transport.abort()  # a close frame would wait behind the unread data: end the TCP connection

    def _stats(self, snap: dict | None = None) -> proto.Stats | None:
        """The stream's figures (``snap``: a metrics snapshot already taken; None before its first hop)."""
        snap = self.session.metrics.snapshot() if snap is None else snap
        if snap["hops"] == 0:
            return None
        return proto.Stats(
            round(snap["rtf"], 3),
            round(snap["hop_compute_ms_p50"], 1),
            round(snap["queue_ms"], 1),
            round(snap["dropped_ms"], 1),
            round(snap["latency_ms_p50"], 1),
            int(snap["hops"]),
            self.resume_history[0],
            round(self.resume_history[1], 1),
        )

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.server.cfg.stats_interval_s)
            if self.closing_for_drain:
                return  # the final checkpoint is the last event a drained stream gets
            session = self.session
            if session.error is not None:
                self._queue_event(proto.ErrorEvent("engine_error", f"processing failed: {session.error}"))
                await self.ws.close(CLOSE_INTERNAL, "processing failed")
                return
            snap = session.metrics.snapshot()
            stats = self._stats(snap)
            if stats is None:
                continue  # nothing measured yet: no zeros that look like measurements
            self._queue_event(stats)
            self.server.session_stats(self, stats)
            # a task switch restarts the stream's counters
            self.dropped_reported_ms = min(self.dropped_reported_ms, snap["dropped_ms"])
            if snap["dropped_ms"] > self.dropped_reported_ms:
                self._queue_event(self._overload_warning(snap["dropped_ms"] - self.dropped_reported_ms))
                self.dropped_reported_ms = snap["dropped_ms"]
