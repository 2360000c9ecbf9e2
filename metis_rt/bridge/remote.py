"""The bridge's stream on a metis-rt server (protocol v1, docs/protocol.md), and how it survives the loss of a worker.

One WebSocket session: microphone blocks go out through an :class:`~metis_rt.clients.uplink.Uplink`, output frames
come back to ``on_output``, commands become ``session.update`` and wait for ``session.updated`` / ``error``.

Moving: the server sends ``session.checkpoint`` about once a second (when it has a resume key). When the connection
closes with 1006 (lost), 1012 (the worker drains) or 1013 (busy), the backend reconnects to its URL (a balancer such
as HAProxy places it on a worker with room) with bounded, jittered backoff, sends ``session.resume``, re-sends the
input the new worker has not seen and re-asserts mix and bypass (a command may postdate the checkpoint). The call
never goes silent: from the loss until the resumed worker's output catches up, the bridge plays the *raw*
microphone in the stream's own timeline (:mod:`metis_rt.bridge.gap_fill`) and says so (``notice``, the status
line, ``processing`` in the MQTT stats). Without a checkpoint, or when the token is refused, a fresh session starts
with the settings in force. A stream that cannot move within ``reconnect_max_s`` fails the bridge as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from websockets.exceptions import ConnectionClosed

from metis_rt.bridge.backends import BackendError, BridgeSettings, OnOutput, with_steps
from metis_rt.bridge.gap_fill import GapFill, RawHistory
from metis_rt.clients import reconnect, wire
from metis_rt.clients.live_resume import DEFAULT_HOLD_S, LiveStream
from metis_rt.clients.resume import Backoff
from metis_rt.clients.uplink import Uplink
from metis_rt.control.commands import (
    Command,
    CommandError,
    SetBypass,
    SetMix,
    SetSteps,
    SetStrength,
    SetTask,
    SetVoice,
)
from metis_rt.server.protocol import SessionResumed
from metis_rt.streaming.session import PROMPT_TASKS

log = logging.getLogger(__name__)

INPUT_QUEUE_BLOCKS = 50  # microphone blocks waiting for the socket (1 s of 20 ms blocks); oldest dropped
MAX_FRAME_MS = 200  # queued blocks are coalesced into frames of at most this much audio
SERVER_ANSWER_S = 10.0  # how long a command waits for session.updated / error
SWITCH_FADE_MS = 20.0  # raw -> processed crossfade when the resumed stream takes over


@dataclass(frozen=True)
class MoveOptions:
    reconnect: bool = True  # move the stream when its connection is lost or drained
    reconnect_max_s: float = 30.0  # give up after waiting this long in total between attempts
    hold_s: float = DEFAULT_HOLD_S  # un-acknowledged input kept for a resume (and raw history for the gap)
    backoff_seed: int | None = None  # reconnect jitter (tests)


class RemoteBackend:
    """One WebSocket session on a metis-rt server, moved to another worker when its connection is lost."""

    def __init__(
        self,
        url: str,
        settings: BridgeSettings,
        input_rate: int,
        output_rate: int,
        on_output: OnOutput,
        *,
        token: str | None = None,
        reference: bytes | None = None,
        fmt: str = "f32le",
        move: MoveOptions = MoveOptions(),
    ):
        self.url, self.token, self.fmt, self.move = url, token, fmt, move
        self.settings = settings
        self.input_rate, self.output_rate = input_rate, output_rate
        self.on_output = on_output
        self.notice: Callable[[str], None] = log.warning  # the bridge shows these (moves, the raw microphone)
        self.reference = reference
        self.ws = None
        self.ready = None
        self.server_stats: dict = {}
        self.live = LiveStream(input_rate, move.hold_s)
        self.uplink = Uplink(self.live, INPUT_QUEUE_BLOCKS, MAX_FRAME_MS * input_rate // 1000, fmt)
        self.gap: GapFill | None = None  # made at start, when the server's hop is known
        self.backoff = Backoff(max_total_s=move.reconnect_max_s, seed=move.backoff_seed)
        self._answer: asyncio.Future | None = None
        self._command_lock = asyncio.Lock()
        self._closing = False

    @property
    def latency_ms(self) -> float:
        return self.ready.algorithmic_latency_ms

    @property
    def chunk_ms(self) -> int:
        return self.ready.chunk_ms

    @property
    def dropped_input_samples(self) -> int:
        return self.uplink.dropped_samples

    @property
    def moves(self) -> int:
        return self.live.moves

    @property
    def processing(self) -> str:
        """``processed`` (the server's output plays) or ``raw`` (the raw microphone, while the stream moves)."""
        return "raw" if self.gap is not None and self.gap.moving else "processed"

    def start_message(self) -> str:
        """``session.start`` with the settings in force."""
        s = self.settings
        options = {"mix": s.mix, "bypass": s.bypass}
        if s.strength is not None:
            options["strength"] = s.strength
        if s.stage1_steps is not None:
            options["stage1_steps"] = s.stage1_steps
        if s.s2a_steps is not None:
            options["s2a_steps"] = list(s.s2a_steps)
        return wire.start_message(
            s.task,
            self.input_rate,
            self.fmt,
            self.output_rate,
            voice=s.voice if s.task in PROMPT_TASKS else None,
            reference=self.reference if s.voice is None and s.task in PROMPT_TASKS else None,
            options=options,
            engine=s.engine,
        )

    async def start(self) -> None:
        try:
            self.ws, self.ready = await wire.open_session(self.url, self.start_message(), self.token)
        except wire.ClientError as exc:
            raise BackendError(str(exc)) from exc
        self._in_force(self.ready)
        capacity = round(self.move.hold_s * self.output_rate)
        fade = round(SWITCH_FADE_MS * self.output_rate / 1000)
        hop = round(self.ready.chunk_ms * self.output_rate / 1000)
        self.gap = GapFill(self.live, RawHistory(self.input_rate, self.output_rate, capacity), fade=fade, hop=hop)

    def _in_force(self, ready: wire.Ready) -> None:
        in_force = with_steps(self.settings, ready.stage1_steps, ready.s2a_steps)  # the steps the server runs
        self.settings = dataclasses.replace(in_force, engine=ready.engine)

    def push(self, block: np.ndarray) -> None:
        """A microphone block: to the server (see Uplink for the overload policy); while the stream moves, its raw
        samples also go to the output (see gap_fill)."""
        if self.gap is not None:
            raw = self.gap.on_block(block)
            if len(raw):
                self.on_output(raw)
        self.uplink.push(block)

    async def run(self) -> None:
        """Sends audio and reads the server until closed, moving the stream when its connection is lost; raises
        ``BackendError`` if the server goes away for good."""
        while True:
            async with asyncio.TaskGroup() as tg:
                sender = tg.create_task(self.uplink.send_loop(self.ws), name="bridge-sender")
                await self._receive_loop()
                sender.cancel()
            if self._closing:
                return
            if not (self.move.reconnect and reconnect.should_move(self.ws.close_code)):
                raise BackendError(f"the server closed the session: {wire.close_description(self.ws)}")
            await self._move()

    async def _move(self) -> None:
        reason = wire.close_description(self.ws)
        self.gap.lost()
        self.notice(f"server connection lost ({reason}): playing the raw microphone while the stream moves")
        try:
            ws, ready = await reconnect.move_live(
                self.url, self.start_message(), self.live, self.uplink, self.backoff, self.ws, self.token
            )
        except wire.ClientError as exc:
            raise BackendError(f"the stream could not move to another worker: {exc}") from exc
        if not isinstance(ready, SessionResumed):
            self.gap.restarted()
        self.ws, self.ready = ws, ready
        self._in_force(ready)
        s = self.settings  # the checkpoint may predate a command: say again what is in force
        with contextlib.suppress(ConnectionClosed):
            await ws.send(wire.update_request({"mix": s.mix, "bypass": s.bypass}))
        if isinstance(ready, SessionResumed):
            self.notice(f"stream resumed (session {ready.session_id}, {ready.resume_gap_ms:.0f} ms without a worker)")
        else:
            self.notice(f"stream started afresh (session {ready.session_id})")

    async def _receive_loop(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                if isinstance(message, bytes):
                    moving = self.gap.moving
                    out = self.gap.on_output(wire.decode_audio(message, self.fmt))
                    if len(out):
                        self.on_output(out)
                    if moving and not self.gap.moving:
                        self.notice("processed audio is back")
                else:
                    self._on_event(wire.parse_event(message))

    def _on_event(self, event: dict) -> None:
        kind = event["type"]
        if kind == "stats":
            self.server_stats = event
        elif kind == "session.checkpoint":
            if self.live.on_checkpoint(event):
                self.backoff.succeeded()  # the stream runs on this worker: a later move gets the full budget
        elif kind in ("session.updated", "error"):
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(event)
            elif kind == "error":
                log.warning("server error %s: %s", event.get("code"), event.get("message"))
        elif kind == "warning":
            log.warning("server warning %s: %s", event.get("code"), event.get("message"))

    def stats(self) -> dict:
        return dict(self.server_stats)

    async def close(self) -> None:
        self._closing = True
        if self.ws is not None:
            await self.ws.close()

    # --- commands ---------------------------------------------------------------------------------
    async def apply(self, command: Command) -> None:
        if self.processing == "raw":
            raise CommandError("the stream is moving to another worker; try again in a moment")
        message, new = self._request(command)
        async with self._command_lock:
            self._answer = asyncio.get_running_loop().create_future()
            try:
                await self.ws.send(message)
                async with asyncio.timeout(SERVER_ANSWER_S):
                    answer = await self._answer
            except ConnectionClosed:
                raise CommandError("the server connection is closed") from None
            except TimeoutError:
                raise CommandError(f"the server did not answer within {SERVER_ANSWER_S:g} s") from None
            finally:
                self._answer = None
        if answer["type"] == "error":
            raise CommandError(f"the server refused it: {answer.get('code')}: {answer.get('message')}")
        # the steps the server runs now (after a task switch: that task's defaults); an older server says nothing
        self.settings = with_steps(
            new, wire.reported_steps(answer.get("stage1_steps")), wire.reported_step_list(answer.get("s2a_steps"))
        )

    def _request(self, command: Command) -> tuple[str, BridgeSettings]:
        """The ``session.update`` for ``command`` and the settings once the server accepted it."""
        s = self.settings
        if isinstance(command, SetBypass):
            return wire.update_request({"bypass": command.enabled}), dataclasses.replace(s, bypass=command.enabled)
        if isinstance(command, SetMix):
            return wire.update_request({"mix": command.mix}), dataclasses.replace(s, mix=command.mix)
        if isinstance(command, SetSteps):
            options: dict = {}
            if command.stage1 is not None:
                options["stage1_steps"] = command.stage1
            if command.s2a is not None:
                options["s2a_steps"] = list(command.s2a)
            new = dataclasses.replace(
                s, stage1_steps=command.stage1 or s.stage1_steps, s2a_steps=command.s2a or s.s2a_steps
            )
            return wire.update_request(options), new
        if isinstance(command, SetVoice):
            return wire.update_request({}, voice=command.voice), dataclasses.replace(s, voice=command.voice)
        if isinstance(command, SetStrength):
            return wire.update_request({"strength": command.db}), dataclasses.replace(s, strength=command.db)
        if isinstance(command, SetTask):
            # the server starts the new task with its own default steps
            new = dataclasses.replace(s, task=command.task, stage1_steps=None, s2a_steps=None)
            return wire.update_request({}, task=command.task), new
        raise CommandError(f"unsupported command {command!r}")  # pragma: no cover
