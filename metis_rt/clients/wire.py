"""The client side of wire protocol v1 (``metis_rt/server/protocol.py``): messages, output frames, the handshake.

Everything but :func:`open_session` is pure (JSON and numpy). :func:`open_session` connects, sends
``session.start`` and waits for ``session.ready``, turning every way that can fail into a :class:`ClientError`
whose message says what to do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from metis_rt.errors import MetisError
from metis_rt.server import protocol as proto
from metis_rt.server.http import STREAM_PATH

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8765"
OPEN_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 60.0  # session.start -> session.ready (a reference recording is encoded on the server)
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # output frames are one hop (~0.25 s), a flush tail at most a few seconds


class ClientError(MetisError):
    """The client cannot go on (connection, handshake, server failure); the message says what to do."""


class ServerRejected(ClientError):
    """The server answered ``session.start`` (or a later message) with an ``error`` event."""

    def __init__(self, code: str, message: str):
        super().__init__(f"server error {code}: {message}")
        self.code = code


class ServerBusy(ClientError):
    """The server has no free session slot."""

    def __init__(self, retry_after_s: float):
        super().__init__(f"server busy: all session slots are taken; retry in {retry_after_s:g} s")
        self.retry_after_s = retry_after_s


Ready = proto.SessionReady  # the server's session.ready, as the protocol module defines it


# ----------------------------------------------------------------------------- messages (pure)
def stream_url(server: str) -> str:
    """``ws://host:port`` -> the stream endpoint URL; a URL with a path (e.g. ``.../v1/stream?token=T``) is kept."""
    parts = urlsplit(server)
    if parts.path in ("", "/"):
        parts = parts._replace(path=STREAM_PATH)
    return urlunsplit(parts)


def start_message(
    task: str,
    sample_rate: int,
    fmt: str,
    output_sample_rate: int,
    *,
    voice: str | None = None,
    reference: bytes | None = None,
    options: dict[str, Any] | None = None,
    engine: str | None = None,
) -> str:
    """The ``session.start`` JSON; ``reference`` is the raw bytes of an audio file (sent base64); ``engine``: None
    or ``auto`` leaves the choice to the server."""
    message: dict[str, Any] = {
        "type": "session.start",
        "protocol": proto.PROTOCOL_VERSION,
        "task": task,
        "sample_rate": sample_rate,
        "output_sample_rate": output_sample_rate,
        "format": fmt,
        "channels": 1,
    }
    if voice is not None:
        message["voice"] = voice
    if reference is not None:
        message["reference"] = {"data": base64.b64encode(reference).decode("ascii")}
    if options:
        message["options"] = dict(options)
    if engine is not None and engine != "auto":
        message["engine"] = engine
    return json.dumps(message, separators=(",", ":"))


def update_message(**options: Any) -> str:
    return update_request(options)


def update_request(options: dict[str, Any], *, voice: str | None = None, task: str | None = None) -> str:
    """A ``session.update``: changed options, and optionally a new voice and/or task."""
    message: dict[str, Any] = {"type": "session.update", "options": options}
    if voice is not None:
        message["voice"] = voice
    if task is not None:
        message["task"] = task
    return json.dumps(message, separators=(",", ":"))


def control_message(kind: str) -> str:
    """``flush`` or ``session.end``."""
    return json.dumps({"type": kind})


def encode_audio(samples: np.ndarray, fmt: str) -> bytes:
    return proto.encode_pcm(np.asarray(samples, dtype=np.float32), fmt)


def decode_audio(frame: bytes, fmt: str) -> np.ndarray:
    """A server output frame -> float32 samples (no length limit: a flush tail may exceed one second)."""
    dtype = proto.FORMATS[fmt]
    usable = len(frame) - len(frame) % dtype.itemsize
    samples = np.frombuffer(frame[:usable], dtype=dtype)
    if fmt == "pcm_s16le":
        return samples.astype(np.float32) / np.float32(proto.PCM16_SCALE)
    return samples.astype(np.float32)


def parse_event(text: str) -> dict[str, Any]:
    """A server text frame -> dict with a ``type``; an unparsable frame becomes ``{"type": "invalid"}``."""
    try:
        event = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"type": "invalid", "text": text[:200]}
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return {"type": "invalid", "text": text[:200]}
    return event


TTS_NOT_HERE = (
    "--task tts speaks text, and this client streams audio (se, tse, vc); for TTS run "
    "`metis-rt process --task tts --text ... --reference VOICE.wav --reference-text ...`, or send `tts.speak` "
    'messages to the server yourself (docs/protocol.md, "Text to speech")'
)


def resume_message(token: str) -> str:
    """``session.resume`` with the token of the last ``session.checkpoint`` (instead of session.start)."""
    return json.dumps({"type": "session.resume", "protocol": proto.PROTOCOL_VERSION, "token": token})


def ready_from(event: dict[str, Any]) -> proto.SessionReady:
    """``session.ready`` of an audio session (a ``session.resumed``: a SessionResumed, which also says where the
    stream stands); ClientError for a TTS session's (it has no input rate or latency)."""
    if event.get("task") == "tts" or "sample_rate" not in event:
        raise ClientError(f"the server started a {event.get('task', 'non-audio')} session: {TTS_NOT_HERE}")
    ready = _ready_fields(event)
    if event.get("type") == "session.resumed":
        return proto.SessionResumed(
            *ready,
            input_samples_acked=int(event["input_samples_acked"]),
            output_samples=int(event["output_samples"]),
            resume_gap_ms=float(event.get("resume_gap_ms", 0.0)),
        )
    return proto.SessionReady(*ready)


def _ready_fields(event: dict[str, Any]) -> tuple:
    return (
        str(event["session_id"]),
        int(event["sample_rate"]),
        int(event["output_sample_rate"]),
        str(event["format"]),
        float(event["algorithmic_latency_ms"]),
        int(event["chunk_ms"]),
        str(event.get("stage1", "task")),
        reported_steps(event.get("stage1_steps")),
        reported_step_list(event.get("s2a_steps")),
        str(event.get("engine", "metis")),  # servers before engines existed ran Metis only
        int(event.get("latency_samples", 0)),
    )


def reported_steps(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def reported_step_list(value: Any) -> list[int] | None:
    """A server's s2a steps; None when absent (an older server) or malformed."""
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def close_description(ws: ClientConnection) -> str:
    code, reason = ws.close_code, ws.close_reason
    return f"code {code}" + (f" ({reason})" if reason else "")


# ----------------------------------------------------------------------------- connecting
async def open_session(url: str, start: str, token: str | None = None) -> tuple[ClientConnection, Ready]:
    """Connect to ``url``, send ``start`` and wait for ``session.ready``. The caller closes the connection."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        ws = await connect(
            url, additional_headers=headers, open_timeout=OPEN_TIMEOUT_S, max_size=MAX_MESSAGE_BYTES, compression=None
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = " (missing or wrong --token)" if status == 401 else ""
        raise ClientError(f"{url} refused the WebSocket upgrade: HTTP {status}{hint}") from exc
    except InvalidURI as exc:
        raise ClientError(f"{url!r} is not a WebSocket URL; expected ws://HOST:PORT or wss://HOST:PORT") from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise ClientError(f"cannot connect to {url}: {exc}; is the server running (python run_server.py)?") from exc
    try:
        ready = await handshake(ws, start)
    except BaseException:
        await ws.close()
        raise
    return ws, ready


async def handshake(ws: ClientConnection, start: str) -> Ready:
    """Send ``session.start`` on an open connection and wait for ``session.ready`` (busy and error events raise)."""
    try:
        await ws.send(start)
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            while True:
                message = await ws.recv()
                if isinstance(message, bytes):
                    continue
                event = parse_event(message)
                kind = event["type"]
                if kind in ("session.ready", "session.resumed"):
                    return ready_from(event)
                if kind == "busy":
                    raise ServerBusy(float(event.get("retry_after_s", 0)))
                if kind == "error":
                    raise ServerRejected(str(event.get("code")), str(event.get("message")))
                log.info("server %s before session.ready: %s", kind, event)
    except ConnectionClosed as exc:
        raise ClientError(f"the server closed the connection before session.ready: {close_description(ws)}") from exc
    except TimeoutError as exc:
        raise ClientError(f"no session.ready within {HANDSHAKE_TIMEOUT_S:g} s of session.start") from exc
