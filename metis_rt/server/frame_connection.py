"""The CPU-denoiser side of a connection (``engine``: deepfilternet3 / rnnoise; task se): open, update, state.

Audio in, flush, stats, overload and shutdown are the connection's own (the session keeps the engine contract of
``streaming.base``); only what differs from a Metis session lives here:

* ``session.start``: the denoiser is opened in a worker thread (a DeepFilterNet3 state takes tenths of a second to
  build), its session joins the server's frame engine thread; ``session.ready`` reports the engine and its exact
  latency; ``options.strength`` (attenuation limit, dB) sets the starting strength;
* ``session.update``: ``strength``, ``mix`` and ``bypass``; all or nothing. Metis options (steps), a voice or a task
  switch get an error and change nothing (the stream goes on).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from metis_rt.denoisers import EngineUnavailable
from metis_rt.server import protocol as proto
from metis_rt.streaming.frame_session import DEFAULT_STRENGTH_DB, FrameSession, FrameSpec

if TYPE_CHECKING:
    from metis_rt.server.connection import Connection

STRENGTH_ONLY = "strength applies to the CPU denoisers (engine deepfilternet3 or rnnoise), not to the metis engine"
FRAME_OPTIONS = ("mix", "bypass", "strength")


async def open_frames(conn: Connection, start: proto.SessionStart, engine: str) -> None:
    if start.voice is not None or start.reference is not None:
        raise proto.ProtocolError("invalid_voice", f"engine {engine!r} takes no voice (it only denoises)")
    _check_options(start.options.__dict__, engine, given=lambda name, v: v is not None and name.endswith("steps"))
    catalogue = conn.server.catalogue
    try:
        denoiser = await asyncio.to_thread(catalogue.open, engine)
    except EngineUnavailable as exc:
        raise proto.ProtocolError("engine_unavailable", str(exc)) from None
    strength = DEFAULT_STRENGTH_DB if start.options.strength is None else start.options.strength
    sid = conn.server.new_session_id()
    session = FrameSession(
        conn.server.new_engine_id(),
        FrameSpec(start.task, start.sample_rate, start.output_sample_rate, engine),
        denoiser,
        conn.server.stream_cfg.engine,
        on_output=conn._output_from_engine,
        on_done=conn._done_from_engine,
        strength_db=strength,
    )
    conn.mix, conn.bypass = start.options.mix, start.options.bypass
    session.set_mix(conn.mix, conn.bypass)
    conn.session, conn.start, conn.session_id, conn.engine = session, start, sid, engine
    catalogue.frames.add(session)
    conn.server.session_opened(conn)  # registered before the client hears of it: MQTT can reach it at once
    await conn._event(
        proto.SessionReady(
            sid,
            start.sample_rate,
            start.output_sample_rate,
            start.format,
            round(session.latency_ms, 2),
            round(session.frame * 1000 / session.rate),
            "task",
            engine=engine,
            latency_samples=session.latency_samples(start.sample_rate),
        )
    )


async def update(conn: Connection, update: proto.SessionUpdate) -> None:
    """Validate everything, then apply (ProtocolError and nothing changed otherwise)."""
    engine, opts = conn.engine, update.options
    if update.task is not None and update.task != conn.task:
        raise proto.ProtocolError(
            "engine_unavailable",
            f"engine {engine!r} only denoises (task se); open a new session with engine metis for {update.task}",
        )
    if update.voice is not None or update.reference_text is not None or update.language is not None:
        raise proto.ProtocolError("invalid_voice", f"engine {engine!r} takes no voice (it only denoises)")
    _check_options(opts, engine, given=lambda name, v: True)
    session: FrameSession = conn.session
    if "strength" in opts:
        session.set_strength(opts["strength"])
    if "mix" in opts or "bypass" in opts:
        conn.mix, conn.bypass = opts.get("mix", conn.mix), opts.get("bypass", conn.bypass)
        session.set_mix(conn.mix, conn.bypass)
    conn._queue_event(proto.Updated(dict(opts), None, update.task))
    conn.server.session_changed(conn)


def _check_options(options: dict, engine: str, given) -> None:
    other = sorted(name for name, value in options.items() if name not in FRAME_OPTIONS and given(name, value))
    if other:
        raise proto.ProtocolError(
            "invalid_options", f"option(s) {other} belong to the metis engine; engine {engine!r} takes {FRAME_OPTIONS}"
        )


def state(conn: Connection) -> dict:
    session: FrameSession = conn.session
    return {
        "session_id": conn.session_id,
        "task": conn.task,
        "engine": conn.engine,
        "strength": session.strength_db,
        "bypass": conn.bypass,
        "mix": conn.mix,
        "sample_rate": conn.start.sample_rate,
        "output_sample_rate": conn.start.output_sample_rate,
        "format": conn.start.format,
        "algorithmic_latency_ms": round(session.latency_ms, 2),
    }
