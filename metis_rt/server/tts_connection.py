"""The TTS side of a connection (``task: tts``): open the session, route its messages, apply its updates.

The connection's receive loop hands every parsed client message here; model and text work happen in
:class:`~metis_rt.server.tts_service.TtsService` (engine thread / worker threads) and the speaking in the
session's :class:`~metis_rt.server.tts_session.TtsSession` worker. Rules:

* ``tts.speak``: text checked (language, phonemes) before it is queued; errors carry the request's ``id``;
* ``flush``: ``flushed`` once the requests queued before it were spoken (the receive loop keeps reading);
* ``session.end``: the requests queued before it are spoken, then the connection closes 1000 (send ``tts.cancel``
  first to drop them); messages after ``session.end`` are not read;
* ``session.update``: ``voice`` (+ ``reference_text``) and ``language``, all or nothing; a new voice applies from the
  next request to start; no ``options``; no task switch;
* binary frames: an ``error`` (``audio_not_used``) each; nothing else changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metis_rt.server import protocol as proto
from metis_rt.server.tts_session import TtsRequest, TtsSession

if TYPE_CHECKING:
    from metis_rt.server.connection import Connection

AUDIO_NOT_USED = proto.ErrorEvent(
    "audio_not_used", "a TTS session takes no audio: send text in tts.speak messages (the frame was ignored)"
)


def task_switch_refused(current: str, wanted: str) -> proto.ProtocolError:
    return proto.ProtocolError(
        "task_switch_unsupported",
        f"a {current} session cannot become {wanted}: switching between tts and the streaming tasks is not "
        "supported; open a new session for it",
    )


async def open_tts(conn: Connection, start: proto.SessionStart, family: str) -> None:
    """Prepare the voice (once, on the engine thread), register the session, then answer ``session.ready``."""
    service = conn.server.tts_service
    synth = service.synthesizer(family, service.settings(start.options))
    language = start.language or proto.DEFAULT_LANGUAGE
    voice = await service.voice(
        synth, name=start.voice, reference=start.reference, reference_text=start.reference_text, language=language
    )
    sid = conn.server.new_session_id()
    conn.tts = TtsSession(service, synth, voice, language, start.format, start.output_sample_rate, conn.out)
    conn.start, conn.session_id, conn.stage1, conn.voice = start, sid, family, start.voice
    conn.server.session_opened(conn)  # registered before the client hears of it: MQTT can reach it at once
    await conn._event(
        proto.TtsReady(sid, start.output_sample_rate, start.format, language, start.voice, service.max_pending, family)
    )


async def handle(conn: Connection, message: proto.ClientMessage, received: float) -> bool:
    """One client message of a TTS session; True when the session ended (the connection was closed)."""
    tts = conn.tts
    if isinstance(message, proto.TtsSpeak):
        language = message.language or tts.language
        await conn.server.tts_service.check_text(message.text, language, message.id)
        tts.speak(TtsRequest(message.text, message.id, language, received))
    elif isinstance(message, proto.TtsCancel):
        tts.cancel()
    elif isinstance(message, proto.Flush):
        tts.flush()
    elif isinstance(message, proto.SessionUpdate):
        await conn.apply_update(message)
    elif isinstance(message, proto.SessionEnd):
        tts.end()
        await tts.ended.wait()
        await conn.out.drained()
        await conn.ws.close(1000, "session ended")
        return True
    return False


async def update(conn: Connection, message: proto.SessionUpdate) -> None:
    """Apply a ``session.update`` to a TTS session (from the client or MQTT); ProtocolError, nothing changed."""
    tts = conn.tts
    if message.task is not None and message.task != "tts":
        raise task_switch_refused("tts", message.task)
    if message.options:
        raise proto.ProtocolError(
            "invalid_options", f"a TTS session has no live options (got {sorted(message.options)})"
        )
    language = message.language or tts.language
    voice = tts.voice
    if message.voice is not None:
        voice = await conn.server.tts_service.voice(
            tts.synth, name=message.voice, reference=None, reference_text=message.reference_text, language=language
        )
    elif message.language is not None:
        conn.server.tts_service.check_language(language)
    if conn.server.sessions.get(conn.session_id) is not conn:  # it ended while the voice was prepared
        raise proto.ProtocolError("session_closed", f"session {conn.session_id} has ended")
    tts.voice, tts.language = voice, language
    if message.voice is not None:
        conn.voice = message.voice
    conn._queue_event(proto.TtsUpdated(message.voice, message.language))
    conn.server.session_changed(conn)


def state(conn: Connection) -> dict:
    """The TTS session's settings (published retained over MQTT)."""
    tts = conn.tts
    return {
        "session_id": conn.session_id,
        "task": "tts",
        "stage1": conn.stage1,
        "voice": conn.voice,
        "language": tts.language,
        "pending": tts.pending,
        "speaking": tts.current is not None,
        "output_sample_rate": conn.start.output_sample_rate,
        "format": conn.start.format,
    }
