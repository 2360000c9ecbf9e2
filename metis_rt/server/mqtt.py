"""The server's MQTT side: session commands in, per-session state and stats out (a thin shell over MqttControl).

- ``<prefix>/<node>/session/<id>/set/<setting>``: the command becomes a ``session.update`` of that connection and
  takes the very code path of one sent over its WebSocket (so the client is told with ``session.updated``).
- ``<prefix>/<node>/session/<id>/state``: retained JSON of the session's settings, published when it opens and
  after every change (from either side), cleared when it ends.
- ``<prefix>/<node>/session/<id>/stats``: the numbers of the WebSocket ``stats`` event, as often.

The server never waits for the broker: publishing only updates memory (see ``metis_rt.control.mqtt``), and
commands arrive while it is connected. Shutdown clears the retained state of every session still open and
publishes ``offline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

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
from metis_rt.control.mqtt import MqttControl
from metis_rt.errors import AudioInputError
from metis_rt.server import protocol as proto
from metis_rt.server.config import MqttSettings

if TYPE_CHECKING:
    from metis_rt.server.app import MetisServer
    from metis_rt.server.connection import Connection

log = logging.getLogger(__name__)

SHUTDOWN_PUBLISH_S = 2.0  # at shutdown, wait at most this long for the session clears to reach the broker


def update_from_command(command: Command) -> proto.SessionUpdate:
    """The ``session.update`` an MQTT command stands for, validated like one from a WebSocket client."""
    if isinstance(command, SetBypass):
        data = {"options": {"bypass": command.enabled}}
    elif isinstance(command, SetMix):
        data = {"options": {"mix": command.mix}}
    elif isinstance(command, SetStrength):
        data = {"options": {"strength": command.db}}
    elif isinstance(command, SetTask):
        data = {"task": command.task}
    elif isinstance(command, SetVoice):
        data = {"voice": command.voice}
    elif isinstance(command, SetSteps):
        options = {}
        if command.stage1 is not None:
            options["stage1_steps"] = command.stage1
        if command.s2a is not None:
            options["s2a_steps"] = list(command.s2a)
        data = {"options": options}
    else:
        raise CommandError(f"the server cannot apply {type(command).__name__}")
    return proto.parse_update({"type": "session.update", **data})


class ServerMqtt:
    """Connects a MetisServer's sessions to a broker. Create it on the event loop; use :meth:`running`."""

    def __init__(self, server: MetisServer, settings: MqttSettings):
        self.server = server
        self.control = MqttControl(
            settings.broker,
            settings.node,
            self.on_command,
            reconnect_initial_s=settings.reconnect_initial_s,
            reconnect_max_s=settings.reconnect_max_s,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ServerMqtt]:
        """Run the MQTT connection (in the background, reconnecting) for the duration of the block."""
        task = asyncio.create_task(self.control.run(), name="mqtt")
        task.add_done_callback(_log_failure)
        try:
            yield self
        finally:
            for session_id in list(self.server.sessions):
                self.control.clear_session(session_id)
            await self.control.flush(SHUTDOWN_PUBLISH_S)
            try:
                await self.control.stop()
            except TimeoutError:
                log.warning("MQTT did not stop in time; abandoning the connection")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def connected(self) -> bool:
        return self.control.connected

    # --- commands -------------------------------------------------------------------------------
    async def on_command(self, session_id: str | None, command: Command) -> None:
        live = sorted(self.server.sessions)  # (ids are random; whoever reads the broker sees them in the state topics)
        if session_id is None:
            example = self.control.topics.command("<id>", "<setting>")
            raise CommandError(f"a server addresses sessions: publish to {example} (live sessions: {live or 'none'})")
        conn = self.server.sessions.get(session_id)
        if conn is None:
            raise CommandError(f"no session {session_id!r} on this server; live sessions: {live or 'none'}")
        try:
            await conn.apply_update(update_from_command(command))
        except proto.ProtocolError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from exc
        except AudioInputError as exc:
            raise CommandError(f"invalid_reference: {exc}") from exc

    # --- state and stats out --------------------------------------------------------------------
    def publish_state(self, conn: Connection) -> None:
        self.control.publish_state(conn.session_id, conn.state())

    def publish_stats(self, conn: Connection, stats: proto.Stats) -> None:
        numbers = dataclasses.asdict(stats)
        del numbers["type"]
        self.control.publish_stats(conn.session_id, numbers)

    def clear(self, session_id: str) -> None:
        self.control.clear_session(session_id)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("MQTT control stopped: %r (the server keeps serving without it)", task.exception())
