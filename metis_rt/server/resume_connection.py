"""The resume side of a connection: checkpoints out, ``session.resume`` in, the drain's final checkpoint.

* Checkpoints: while a resumable stream runs (a Metis session whose voice, if any, is a server-side one, on a server
  with a resume key), a task in the connection's TaskGroup asks the session for its state every
  ``checkpoint_interval_s``. The session hands it over at its next consistent point (no hop in flight); the state
  is signed in a worker thread (zlib + HMAC of some hundred kB) and queued as ``session.checkpoint``. Output the
  session produced before the state was taken is already in the outbox, ahead of the event.
* ``session.resume {token}`` instead of ``session.start``: the token is verified (signature, age, fingerprint),
  the session rebuilt from its spec and state, and ``session.resumed`` sent; the client re-sends its input after
  ``input_samples_acked``. A refused token is a typed error event; the connection stays open for a session.start.
* Drain: a final checkpoint, then close 1012 (service restart).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed

from metis_rt.engines import METIS
from metis_rt.server import protocol as proto
from metis_rt.server.resume import Ticket
from metis_rt.server.resume_token import MAX_TOKEN_CHARS, ResumeTokenError
from metis_rt.streaming.session import PROMPT_TASKS, SessionSpec, StreamSession
from metis_rt.streaming.session_state import StateMismatch, StreamState

if TYPE_CHECKING:
    from metis_rt.server.connection import Connection

log = logging.getLogger(__name__)

CLOSE_SERVICE_RESTART = 1012
FINAL_CHECKPOINT_TIMEOUT_S = 5.0


def resumable(conn: Connection) -> bool:
    """Whether this connection's stream can move: a Metis stream, a resume key, and no uploaded reference (its
    tokens and features would not fit a token; a named voice is prepared again by the new worker)."""
    return (
        conn.server.resumer is not None
        and conn.tts is None
        and conn.engine == METIS
        and isinstance(conn.session, StreamSession)
        and (conn.reference is None or conn.voice is not None)
    )


async def checkpoint_loop(conn: Connection) -> None:
    """Send a checkpoint about every ``checkpoint_interval_s`` while the stream is resumable."""
    interval = conn.server.resumer.settings.checkpoint_interval_s
    while True:
        await asyncio.sleep(interval)
        if resumable(conn):
            await checkpoint(conn)


async def checkpoint(conn: Connection) -> proto.Checkpoint | None:
    """Take the stream's state at its next consistent point, sign it and queue ``session.checkpoint``."""
    session, loop = conn.session, conn.loop
    taken: asyncio.Future[StreamState] = loop.create_future()

    def on_state(state: StreamState) -> None:  # any thread; after the output delivered before the state
        loop.call_soon_threadsafe(lambda: taken.done() or taken.set_result(state))

    session.checkpoint(on_state)
    state = await taken
    ticket = Ticket(conn.start.format, conn.steps, conn.mix, conn.bypass, conn.voice, *conn.resume_history, state)
    token = await asyncio.to_thread(conn.server.resumer.issue, ticket)
    if len(token) > MAX_TOKEN_CHARS:
        log.warning("session %s: state of %d token characters is too large to resume", conn.session_id, len(token))
        return None
    event = proto.Checkpoint(token, state.input_samples, state.output_samples)
    conn._queue_event(event)
    conn.checkpoints_sent += 1
    return event


async def close_for_drain(conn: Connection) -> None:
    """The drain's close of a resumable stream: a final checkpoint (its last event), everything queued written, then
    1012."""
    conn.closing_for_drain = True
    try:
        async with asyncio.timeout(FINAL_CHECKPOINT_TIMEOUT_S):
            await checkpoint(conn)
            await conn.out.drained()
    except TimeoutError:
        log.warning("session %s: no final checkpoint within %g s", conn.session_id, FINAL_CHECKPOINT_TIMEOUT_S)
    except ConnectionClosed:
        return
    await conn.ws.close(CLOSE_SERVICE_RESTART, "service restart: resume on another worker")


async def open_resumed(conn: Connection, message: proto.SessionResume) -> None:
    """Continue the stream of ``message.token`` on this worker (ProtocolError with the refusal's code if not)."""
    server = conn.server
    if server.resumer is None:
        raise proto.ProtocolError("resume_unavailable", "this server resumes no streams (no --resume-key-file)")
    try:
        ticket, age_s = server.resumer.open(message.token)
    except ResumeTokenError as exc:
        raise proto.ProtocolError(exc.code, str(exc)) from None
    spec = ticket.stream.spec
    task, family = spec["task"], spec["stage1"]
    server.check_task(task)
    if server.catalogue.resolve(METIS, task) != METIS:
        raise proto.ProtocolError("resume_refused", f"this server does not run task {task!r} on the metis engine")
    server.check_stage1(family, task)
    reference = await conn._voice(ticket.voice) if ticket.voice is not None else None
    if task in PROMPT_TASKS and reference is None:
        raise proto.ProtocolError("resume_refused", f"the {task} stream of this token has no server-side voice")
    session = StreamSession(
        server.new_engine_id(),
        SessionSpec(
            task,
            spec["input_rate"],
            spec["output_rate"],
            conn._decoding(task, ticket.steps),
            spec["deterministic"],
            spec["seed"],
            family,
        ),
        server.geometry,
        server.stream_cfg.engine,
        server.processor.num_quantizers,
        reference if task in PROMPT_TASKS else None,
        on_output=conn._output_from_engine,
        on_done=conn._done_from_engine,
    )
    try:
        session.restore(ticket.stream)
    except StateMismatch as exc:
        raise proto.ProtocolError("resume_refused", f"the token's stream cannot continue here: {exc}") from None
    gap_ms = age_s * 1000
    conn.resume_history = (ticket.resumes + 1, ticket.resume_gap_ms + gap_ms)
    options = proto.Options(ticket.bypass, ticket.mix, ticket.steps.stage1, ticket.steps.s2a)
    start = proto.SessionStart(
        task, spec["input_rate"], ticket.format, spec["output_rate"], ticket.voice, None, options, family
    )
    conn.mix, conn.bypass = ticket.mix, ticket.bypass
    conn.session, conn.start, conn.session_id, conn.stage1 = session, start, server.new_session_id(), family
    conn.steps, conn.reference, conn.voice = ticket.steps, reference, ticket.voice
    server.engine.add(session)
    server.session_opened(conn)
    ready = conn.ready_event(session)
    await conn._event(
        proto.SessionResumed(
            **{k: v for k, v in ready.__dict__.items() if k != "type"},
            input_samples_acked=ticket.stream.input_samples,
            output_samples=ticket.stream.output_samples,
            resume_gap_ms=round(gap_ms, 1),
        )
    )
