"""Wire protocol v1 of ``ws://HOST:PORT/v1/stream``: typed messages, pure encode/decode (no I/O, no asyncio).

Text frames carry JSON messages with a ``type`` discriminator; binary frames carry raw PCM in the negotiated
format. See docs/protocol.md for the conversation and examples.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
TASKS = ("se", "tse", "vc")
FORMATS = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 8000, 48000
MAX_FRAME_S = 1.0  # one binary frame carries at most this much audio
MAX_REFERENCE_S = 30.0
PCM16_SCALE = 32768.0


class ProtocolError(Exception):
    """An invalid client message; ``code`` goes into the error event."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ----------------------------------------------------------------------------- client -> server
@dataclass(frozen=True)
class Options:
    bypass: bool = False  # pass the (delayed) input through unprocessed
    mix: float = 1.0  # 1 = processed only, 0 = dry only (suppression strength for SE)
    stage1_steps: int | None = None  # decoding steps override
    s2a_steps: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SessionStart:
    task: str
    sample_rate: int
    format: str
    output_sample_rate: int
    voice: str | None = None
    reference: bytes | None = None  # an audio file (wav/flac/ogg), decoded by the server
    options: Options = field(default_factory=Options)
    type: str = "session.start"


@dataclass(frozen=True)
class SessionUpdate:
    options: dict[str, Any]  # validated partial Options (bypass, mix, stage1_steps, s2a_steps)
    voice: str | None = None  # a server-side voice: the reference for tse/vc (kept for a later switch on se)
    task: str | None = None  # switch the running stream to this task (None = keep it)
    type: str = "session.update"


@dataclass(frozen=True)
class Flush:
    type: str = "flush"


@dataclass(frozen=True)
class SessionEnd:
    type: str = "session.end"


ClientMessage = SessionStart | SessionUpdate | Flush | SessionEnd


# ----------------------------------------------------------------------------- server -> client
@dataclass(frozen=True)
class SessionReady:
    session_id: str
    sample_rate: int
    output_sample_rate: int
    format: str
    algorithmic_latency_ms: float
    chunk_ms: int
    protocol: int = PROTOCOL_VERSION
    type: str = "session.ready"


@dataclass(frozen=True)
class Busy:
    retry_after_s: float
    type: str = "busy"


@dataclass(frozen=True)
class ErrorEvent:
    code: str
    message: str
    type: str = "error"


@dataclass(frozen=True)
class Warning:  # noqa: A001 - the protocol's name
    code: str
    message: str
    type: str = "warning"


@dataclass(frozen=True)
class Stats:
    rtf: float
    hop_compute_ms: float
    queue_ms: float
    dropped_ms: float
    latency_ms: float
    hops: int
    type: str = "stats"


@dataclass(frozen=True)
class Flushed:
    type: str = "flushed"


@dataclass(frozen=True)
class Updated:
    options: dict[str, Any]
    voice: str | None
    task: str | None = None  # the new task when the update switched it
    type: str = "session.updated"


def encode(message) -> str:
    return json.dumps(asdict(message), separators=(",", ":"))


# ----------------------------------------------------------------------------- parsing
def parse_client_message(text: str) -> ClientMessage:
    """Parse one text frame; raises ProtocolError with a code the client can act on."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError("invalid_json", f"text frames must be JSON objects: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("invalid_message", 'expected a JSON object with a string "type"')
    kind = data["type"]
    if kind == "session.start":
        return _parse_start(data)
    if kind == "session.update":
        return parse_update(data)
    if kind == "flush":
        return Flush()
    if kind == "session.end":
        return SessionEnd()
    raise ProtocolError(
        "unknown_type", f"unknown message type {kind!r}; expected session.start, session.update, flush or session.end"
    )


def parse_update(data: dict[str, Any]) -> SessionUpdate:
    """The fields of a ``session.update`` (also how MQTT commands are validated before they reach a session)."""
    unknown = set(data) - {"type", "options", "voice", "task"}
    if unknown:
        raise ProtocolError(
            "invalid_message", f"unknown field(s) {sorted(unknown)} in session.update; allowed: options, voice, task"
        )
    options = _parse_options(data.get("options", {}), partial=True)
    voice = data.get("voice")
    if voice is not None and not isinstance(voice, str):
        raise ProtocolError("invalid_voice", "voice must be the name of a server-side voice")
    task = data.get("task")
    if task is not None:
        _task(task)
    return SessionUpdate(options, voice, task)


def _task(value) -> str:
    if value not in TASKS:
        raise ProtocolError("invalid_task", f"task must be one of {', '.join(TASKS)}, got {value!r}")
    return value


def _parse_start(data: dict[str, Any]) -> SessionStart:
    if data.get("protocol") != PROTOCOL_VERSION:
        got = data.get("protocol")
        raise ProtocolError("unsupported_protocol", f"protocol must be {PROTOCOL_VERSION}, got {got!r}")
    task = _task(data.get("task"))
    rate = _rate(data.get("sample_rate"), "sample_rate")
    out_rate = _rate(data.get("output_sample_rate", rate), "output_sample_rate")
    fmt = data.get("format")
    if fmt not in FORMATS:
        raise ProtocolError("invalid_format", f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if data.get("channels", 1) != 1:
        raise ProtocolError("invalid_channels", "only mono (channels: 1) is supported")
    voice, reference = data.get("voice"), _reference(data.get("reference"))
    if voice is not None and not isinstance(voice, str):
        raise ProtocolError("invalid_voice", "voice must be the name of a server-side voice")
    if task in ("tse", "vc") and voice is None and reference is None:
        raise ProtocolError("reference_required", f"task {task!r} needs a voice name or a reference recording")
    if voice is not None and reference is not None:
        raise ProtocolError("invalid_reference", "give either voice or reference, not both")
    options = Options(**_parse_options(data.get("options", {}), partial=False))
    unknown = set(data) - {
        "type",
        "protocol",
        "task",
        "sample_rate",
        "output_sample_rate",
        "format",
        "channels",
        "voice",
        "reference",
        "options",
    }
    if unknown:
        raise ProtocolError("invalid_message", f"unknown field(s) {sorted(unknown)} in session.start")
    return SessionStart(task, rate, fmt, out_rate, voice, reference, options)


def _rate(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_RATE <= value <= MAX_RATE:
        raise ProtocolError(
            "invalid_sample_rate", f"{name} must be an integer in [{MIN_RATE}, {MAX_RATE}] Hz, got {value!r}"
        )
    return value


def _reference(value) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("data"), str):
        raise ProtocolError("invalid_reference", 'reference must be {"data": "<base64 audio file>"}')
    try:
        return base64.b64decode(value["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("invalid_reference", f"reference.data is not valid base64: {exc}") from None


def _parse_options(value, *, partial: bool) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError("invalid_options", "options must be a JSON object")
    allowed = {"bypass", "mix", "stage1_steps", "s2a_steps"}
    unknown = set(value) - allowed
    if unknown:
        raise ProtocolError("invalid_options", f"unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    out: dict[str, Any] = {}
    if "bypass" in value:
        if not isinstance(value["bypass"], bool):
            raise ProtocolError("invalid_options", "bypass must be true or false")
        out["bypass"] = value["bypass"]
    if "mix" in value:
        mix = value["mix"]
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0.0 <= mix <= 1.0:
            raise ProtocolError("invalid_options", f"mix must be a number in [0, 1], got {mix!r}")
        out["mix"] = float(mix)
    if "stage1_steps" in value:
        out["stage1_steps"] = _steps(value["stage1_steps"], "stage1_steps")
    if "s2a_steps" in value:
        steps = value["s2a_steps"]
        if not isinstance(steps, list) or not steps:
            raise ProtocolError("invalid_options", "s2a_steps must be a list of positive integers")
        out["s2a_steps"] = tuple(_steps(s, "s2a_steps") for s in steps)
    return out


def _steps(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ProtocolError("invalid_options", f"{name} must be an integer in [1, 100], got {value!r}")
    return value


# ----------------------------------------------------------------------------- audio frames
def decode_pcm(frame: bytes, fmt: str, sample_rate: int) -> np.ndarray:
    """Binary frame -> float32 samples in [-1, 1]; raises ProtocolError for a malformed frame."""
    width = FORMATS[fmt].itemsize
    if len(frame) == 0 or len(frame) % width:
        raise ProtocolError(
            "invalid_frame", f"{fmt} frames must hold a whole number of {width}-byte samples, got {len(frame)} bytes"
        )
    if len(frame) // width > MAX_FRAME_S * sample_rate:
        raise ProtocolError(
            "frame_too_long",
            f"a frame may carry at most {MAX_FRAME_S:g} s "
            f"({int(MAX_FRAME_S * sample_rate)} samples), got {len(frame) // width}",
        )
    samples = np.frombuffer(frame, dtype=FORMATS[fmt])
    if fmt == "pcm_s16le":
        return (samples.astype(np.float32) / PCM16_SCALE).astype(np.float32)
    if not np.isfinite(samples).all():
        raise ProtocolError("invalid_frame", "f32le frame contains NaN or Inf samples")
    return samples.astype(np.float32)


def encode_pcm(samples: np.ndarray, fmt: str) -> bytes:
    if fmt == "pcm_s16le":
        return (np.clip(samples, -1.0, 32767 / PCM16_SCALE) * PCM16_SCALE).round().astype("<i2").tobytes()
    return np.asarray(samples, dtype="<f4").tobytes()
