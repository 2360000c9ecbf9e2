"""Wire protocol v1 of ``ws://HOST:PORT/v1/stream``: typed messages, pure encode/decode (no I/O, no asyncio).

Text frames carry JSON messages with a ``type`` discriminator; binary frames carry raw PCM in the negotiated
format. See docs/protocol.md for the conversation and examples.

Two kinds of session share the endpoint: *streaming* sessions (se, tse, vc: audio in, audio out) and *TTS* sessions
(task tts: ``tts.speak`` text in, audio out). Which stage-1 family runs a session (``stage1``: the task's own
checkpoint or Metis-Omni) is chosen in ``session.start``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from metis_rt.denoisers import STRENGTH_RANGE_DB
from metis_rt.engines import ENGINE_CHOICES

PROTOCOL_VERSION = 1
STREAM_TASKS = ("se", "tse", "vc")  # audio in, audio out, hop by hop
TASKS = (*STREAM_TASKS, "tts")  # tts: text in (tts.speak), audio out
OFFLINE_ONLY_TASKS = {"l2s": "lip to speech is offline-only: use `metis-rt process --task l2s`"}
STAGE1_FAMILIES = ("task", "omni")  # = metis_rt.config.STAGE1_FAMILIES (no torch import here: clients use this)
FORMATS = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 8000, 48000
MAX_FRAME_S = 1.0  # one binary frame carries at most this much audio
MAX_REFERENCE_S = 30.0
PCM16_SCALE = 32768.0
TTS_DEFAULT_RATE = 24000  # the models' output rate: no resampling
TTS_DEFAULT_FORMAT = "pcm_s16le"
DEFAULT_LANGUAGE = "en"
MAX_TEXT_CHARS = 1000  # = metis_rt.text.tokenizer.MAX_TEXT_CHARS (a test keeps them equal)
MAX_LANGUAGE_CHARS = 16
MAX_REQUEST_ID_CHARS = 128
MAX_VOICE_CHARS = 64  # a voice name (a file stem in the voices folder)
MAX_RESUME_TOKEN_CHARS = 1 << 20  # = metis_rt.server.resume_token.MAX_TOKEN_CHARS
EXCERPT_CHARS = 40  # at most this much of a client's value is quoted back in an error (sanitised)


RequestId = str | int | None  # a client's id of a tts.speak request, echoed as given


class ProtocolError(Exception):
    """An invalid client message; ``code`` goes into the error event (with ``request_id`` when it concerns one
    ``tts.speak`` request that carried an ``id``)."""

    def __init__(self, code: str, message: str, request_id: RequestId = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def event(self) -> ErrorEvent | RequestError:
        if self.request_id is None:
            return ErrorEvent(self.code, self.message)
        return RequestError(self.code, self.message, self.request_id)


# ----------------------------------------------------------------------------- client -> server
@dataclass(frozen=True)
class Options:
    bypass: bool = False  # pass the (delayed) input through unprocessed
    mix: float = 1.0  # 1 = processed only, 0 = dry only (suppression strength for SE)
    stage1_steps: int | None = None  # decoding steps override
    s2a_steps: tuple[int, ...] | None = None
    strength: float | None = None  # CPU denoisers: attenuation limit in dB, 0..100 (None: the engine's, unlimited)


@dataclass(frozen=True)
class SessionStart:
    task: str
    sample_rate: int  # tts: = output_sample_rate (a TTS session takes no audio)
    format: str
    output_sample_rate: int
    voice: str | None = None
    reference: bytes | None = None  # an audio file (wav/flac/ogg), decoded by the server
    options: Options = field(default_factory=Options)
    stage1: str | None = None  # "task" or "omni"; None = the server's default (the first family it loaded)
    reference_text: str | None = None  # tts: the words spoken in the voice / reference
    language: str | None = None  # tts: language of the texts (and of the transcript); None = DEFAULT_LANGUAGE
    engine: str = "auto"  # auto | metis | deepfilternet3 | rnnoise (metis_rt.engines)
    type: str = "session.start"


@dataclass(frozen=True)
class SessionUpdate:
    options: dict[str, Any]  # validated partial Options (bypass, mix, stage1_steps, s2a_steps)
    voice: str | None = None  # a server-side voice: the reference for tse/vc (kept for a later switch on se)
    task: str | None = None  # switch the running stream to this task (None = keep it)
    reference_text: str | None = None  # tts: the transcript of the new voice
    language: str | None = None  # tts: the new default language of the texts
    type: str = "session.update"


@dataclass(frozen=True)
class TtsSpeak:
    """Speak ``text`` in the session's voice (tts sessions)."""

    text: str
    id: RequestId = None  # the client's id, echoed in tts.done / errors of this request
    language: str | None = None  # None = the session's language
    type: str = "tts.speak"


@dataclass(frozen=True)
class TtsCancel:
    """Drop the queued requests; the one being spoken stops after its current sentence."""

    type: str = "tts.cancel"


@dataclass(frozen=True)
class Flush:
    type: str = "flush"


@dataclass(frozen=True)
class SessionEnd:
    type: str = "session.end"


@dataclass(frozen=True)
class SessionResume:
    """Continue a stream another worker ran, from its last ``session.checkpoint`` (instead of session.start)."""

    token: str
    type: str = "session.resume"


ClientMessage = SessionStart | SessionUpdate | Flush | SessionEnd | TtsSpeak | TtsCancel | SessionResume


# ----------------------------------------------------------------------------- server -> client
@dataclass(frozen=True)
class SessionReady:
    session_id: str
    sample_rate: int
    output_sample_rate: int
    format: str
    algorithmic_latency_ms: float
    chunk_ms: int
    stage1: str = "task"  # the stage-1 family running the session
    stage1_steps: int | None = None  # the decoding steps in force (the server's defaults unless the start chose)
    s2a_steps: list[int] | None = None
    engine: str = "metis"  # the engine running the session
    latency_samples: int = 0  # the algorithmic latency in input samples (exact)
    protocol: int = PROTOCOL_VERSION
    type: str = "session.ready"


@dataclass(frozen=True)
class SessionResumed(SessionReady):
    """``session.resumed``: the fields of session.ready, and where the resumed stream stands (the client re-sends its
    input after ``input_samples_acked`` and keeps only the first ``output_samples`` of the output it received)."""

    input_samples_acked: int = 0
    output_samples: int = 0
    resume_gap_ms: float = 0.0  # wall time from the checkpoint's issue to this resume
    type: str = "session.resumed"


@dataclass(frozen=True)
class Checkpoint:
    """``session.checkpoint``: a signed token of the stream's state (see docs/protocol.md, "Resume")."""

    token: str
    input_samples_acked: int  # input samples (input rate, from the stream's start) whose effect the state holds
    output_samples: int  # output samples (output rate) produced before the state; sent ahead of this event
    type: str = "session.checkpoint"


@dataclass(frozen=True)
class TtsReady:
    """``session.ready`` of a TTS session."""

    session_id: str
    output_sample_rate: int
    format: str
    language: str
    voice: str | None  # the server voice, None for an uploaded reference
    max_pending: int  # tts.speak requests that may wait behind the one being spoken
    stage1: str = "task"
    task: str = "tts"
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
class RequestError:
    """An ``error`` about one tts.speak request: ``id`` is the request's."""

    code: str
    message: str
    id: RequestId
    type: str = "error"


@dataclass(frozen=True)
class Warning:  # noqa: A001 - the protocol's name
    code: str
    message: str
    type: str = "warning"


@dataclass(frozen=True)
class OverloadWarning:
    """``warning`` ``overload``: input dropped because the engine fell behind, since the previous report. Sent
    with the stats (each second) and before ``flushed`` / the close of ``session.end``, so every drop is reported."""

    message: str
    dropped_ms: float  # input cut out since the previous report (whole chunks, and rejected frames)
    code: str = "overload"
    type: str = "warning"


@dataclass(frozen=True)
class Stats:
    rtf: float
    hop_compute_ms: float
    queue_ms: float
    dropped_ms: float
    latency_ms: float
    hops: int
    resumes: int = 0  # moves of this stream to another worker so far (session.resume)
    resume_gap_ms: float = 0.0  # wall time the stream spent without a worker over those moves
    type: str = "stats"


@dataclass(frozen=True)
class Flushed:
    type: str = "flushed"


@dataclass(frozen=True)
class Updated:
    options: dict[str, Any]
    voice: str | None
    task: str | None = None  # the new task when the update switched it
    stage1_steps: int | None = None  # the decoding steps in force after the update
    s2a_steps: list[int] | None = None
    type: str = "session.updated"


@dataclass(frozen=True)
class TtsUpdated:
    """``session.updated`` of a TTS session."""

    voice: str | None  # the new voice (None: unchanged)
    language: str | None  # the new language (None: unchanged)
    options: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    type: str = "session.updated"


@dataclass(frozen=True)
class TtsDone:
    """A tts.speak request is complete: every audio frame of it has been sent before this event."""

    id: RequestId
    first_audio_ms: float | None  # tts.speak received -> its first audio frame sent (None: no audio)
    audio_ms: float  # duration of the audio sent for it
    compute_ms: float  # device time spent on it
    queue_ms: float  # time it waited behind earlier requests
    total_ms: float  # tts.speak received -> this event
    sentences: int
    cancelled: bool = False  # tts.cancel stopped it after a sentence
    type: str = "tts.done"


@dataclass(frozen=True)
class TtsCancelled:
    """Answer to tts.cancel: the ids of the queued requests that were dropped (never spoken)."""

    dropped: list[RequestId]
    type: str = "tts.cancelled"


def encode(message) -> str:
    return json.dumps(asdict(message), separators=(",", ":"))


# ----------------------------------------------------------------------------- parsing
def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A short, printable quote of a client's value for an error message or a log line: its ``repr`` (ASCII only,
    control characters escaped) cut to ``limit`` characters. Client text is never echoed at full length."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"<an integer of {len(str(abs(value)))} digits>"
    if isinstance(value, (dict, list)):
        text = f"<a JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)} items>"
    elif isinstance(value, str):
        text = ascii(value[:limit])  # cut first: a client string may be megabytes
    else:
        text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_client_message(text: str) -> ClientMessage:
    """Parse one text frame; raises ProtocolError with a code the client can act on."""
    try:
        data = json.loads(text)  # C speed; nesting is never walked after this (excerpt() summarises containers)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, ints beyond Python's digit limit, deep nesting
        raise ProtocolError("invalid_json", f"text frames must be JSON objects: {excerpt(str(exc), 120)}") from None
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
    if kind == "tts.speak":
        return parse_speak(data)
    if kind == "tts.cancel":
        return TtsCancel()
    if kind == "session.resume":
        return _parse_resume(data)
    raise ProtocolError(
        "unknown_type",
        f"unknown message type {excerpt(kind)}; expected session.start, session.resume, session.update, flush, "
        "session.end, tts.speak or tts.cancel",
    )


def parse_speak(data: dict[str, Any]) -> TtsSpeak:
    """A ``tts.speak``: the text is checked here for what needs no model (type, empty, length)."""
    request_id = data.get("id")
    if request_id is not None and (
        isinstance(request_id, bool)
        or not isinstance(request_id, (str, int))
        or (isinstance(request_id, str) and len(request_id) > MAX_REQUEST_ID_CHARS)
    ):
        raise ProtocolError(
            "invalid_message",
            f"tts.speak id must be a string (at most {MAX_REQUEST_ID_CHARS} characters) or an integer",
        )
    unknown = set(data) - {"type", "text", "id", "language"}
    if unknown:
        raise ProtocolError(
            "invalid_message",
            f"unknown field(s) {_names(unknown)} in tts.speak; allowed: text, id, language",
            request_id,
        )
    text = _text(data.get("text"), "tts.speak text", request_id)
    language = _language(data.get("language"), request_id)
    return TtsSpeak(text, request_id, language)


def _text(value, what: str, request_id: RequestId = None) -> str:
    if not isinstance(value, str):
        raise ProtocolError("invalid_text", f"{what} must be a string, got {type(value).__name__}", request_id)
    if not value.strip():
        raise ProtocolError("invalid_text", f"{what} is empty: nothing to say", request_id)
    if len(value) > MAX_TEXT_CHARS:
        raise ProtocolError(
            "invalid_text",
            f"{what} has {len(value)} characters; at most {MAX_TEXT_CHARS} per message - send it in parts",
            request_id,
        )
    return value


def _language(value, request_id: RequestId = None) -> str | None:
    """Shape only (a short string); whether the server speaks it is checked there (``unsupported_language``)."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_LANGUAGE_CHARS:
        raise ProtocolError(
            "unsupported_language", f'language must be a language code such as "en", got {excerpt(value)}', request_id
        )
    return value


def parse_update(data: dict[str, Any]) -> SessionUpdate:
    """The fields of a ``session.update`` (also how MQTT commands are validated before they reach a session)."""
    allowed = {"type", "options", "voice", "task", "reference_text", "language"}
    unknown = set(data) - allowed
    if unknown:
        raise ProtocolError(
            "invalid_message",
            f"unknown field(s) {_names(unknown)} in session.update; allowed: {', '.join(sorted(allowed - {'type'}))}",
        )
    options = _parse_options(data.get("options", {}), partial=True)
    voice = _voice(data.get("voice"))
    task = data.get("task")
    if task is not None:
        _task(task)
    reference_text = data.get("reference_text")
    if reference_text is not None:
        reference_text = _text(reference_text, "reference_text")
        if voice is None:
            raise ProtocolError("voice_required", "reference_text belongs to a voice: send it with voice")
    return SessionUpdate(options, voice, task, reference_text, _language(data.get("language")))


def _names(keys) -> str:
    """Unknown field names, quoted short (a client may send many, and long ones)."""
    shown = [excerpt(k, 24) for k in sorted(keys)[:5]]
    return "[" + ", ".join(shown) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "") + "]"


def _voice(value) -> str | None:
    """The name of a server-side voice: a string of 1 to MAX_VOICE_CHARS characters, no path separators."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_VOICE_CHARS or "/" in value or "\\" in value:
        raise ProtocolError(
            "invalid_voice",
            f"voice must be the name of a server-side voice (1 to {MAX_VOICE_CHARS} characters, no path), "
            f"got {excerpt(value)}",
        )
    return value


def _exact_int(value) -> bool:
    """An integer in JSON terms: not a boolean (true == 1 in Python) and not a float (1.0 == 1)."""
    return type(value) is int


def _task(value) -> str:
    if not isinstance(value, str):
        raise ProtocolError("invalid_task", f"task must be one of {', '.join(TASKS)}, got {excerpt(value)}")
    if value in OFFLINE_ONLY_TASKS:
        raise ProtocolError("invalid_task", f"task {value!r} is not served live: {OFFLINE_ONLY_TASKS[value]}")
    if value not in TASKS:
        raise ProtocolError("invalid_task", f"task must be one of {', '.join(TASKS)}, got {excerpt(value)}")
    return value


def _stage1(value) -> str | None:
    if value is not None and (not isinstance(value, str) or value not in STAGE1_FAMILIES):
        raise ProtocolError(
            "invalid_stage1",
            f"stage1 must be one of {', '.join(STAGE1_FAMILIES)} (the task's own model or Metis-Omni), "
            f"got {excerpt(value)}",
        )
    return value


START_FIELDS = frozenset(
    {
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
        "stage1",
        "reference_text",
        "language",
        "engine",
    }
)
TTS_ONLY_START_FIELDS = ("reference_text", "language")
STREAM_ONLY_OPTIONS = ("bypass", "mix", "strength")


def _check_protocol(data: dict[str, Any]) -> None:
    got = data.get("protocol")
    if not _exact_int(got) or got != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_protocol", f"protocol must be the integer {PROTOCOL_VERSION}, got {excerpt(got)}"
        )


def _parse_resume(data: dict[str, Any]) -> SessionResume:
    _check_protocol(data)
    unknown = set(data) - {"type", "protocol", "token"}
    if unknown:
        raise ProtocolError("invalid_message", f"unknown field(s) {_names(unknown)} in session.resume")
    token = data.get("token")
    if not isinstance(token, str) or not 0 < len(token) <= MAX_RESUME_TOKEN_CHARS:
        raise ProtocolError("malformed", f"token must be the string of a session.checkpoint, got {excerpt(token)}")
    return SessionResume(token)


def _parse_start(data: dict[str, Any]) -> SessionStart:
    _check_protocol(data)
    task = _task(data.get("task"))
    tts = task == "tts"
    if tts:  # no input audio: sample_rate only serves as the default output rate
        given = data.get("sample_rate")
        default_rate = TTS_DEFAULT_RATE if given is None else _rate(given, "sample_rate")
        out_rate = _rate(data.get("output_sample_rate", default_rate), "output_sample_rate")
        rate = out_rate
    else:
        rate = _rate(data.get("sample_rate"), "sample_rate")
        out_rate = _rate(data.get("output_sample_rate", rate), "output_sample_rate")
    fmt = data.get("format", TTS_DEFAULT_FORMAT if tts else None)
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ProtocolError("invalid_format", f"format must be one of {', '.join(FORMATS)}, got {excerpt(fmt)}")
    channels = data.get("channels", 1)
    if not _exact_int(channels) or channels != 1:
        raise ProtocolError("invalid_channels", f"only mono (channels: 1) is supported, got {excerpt(channels)}")
    voice, reference = _voice(data.get("voice")), _reference(data.get("reference"))
    if task in ("tse", "vc", "tts") and voice is None and reference is None:
        what = "the voice to speak in" if tts else "the target speaker"
        raise ProtocolError("reference_required", f"task {task!r} needs a voice name or a reference recording ({what})")
    if voice is not None and reference is not None:
        raise ProtocolError("invalid_reference", "give either voice or reference, not both")
    raw_options = data.get("options", {})
    options = Options(**_parse_options(raw_options, partial=False))
    unknown = set(data) - START_FIELDS
    if unknown:
        raise ProtocolError("invalid_message", f"unknown field(s) {_names(unknown)} in session.start")
    reference_text, language = data.get("reference_text"), data.get("language")
    if tts:
        if reference_text is not None:
            reference_text = _text(reference_text, "reference_text")
        elif reference is not None:
            raise ProtocolError(
                "reference_text_required", "a tts reference needs reference_text: the words spoken in it"
            )
        language = _language(language)
        if set(raw_options) & set(STREAM_ONLY_OPTIONS):
            raise ProtocolError("invalid_options", f"options {list(STREAM_ONLY_OPTIONS)} do not apply to task tts")
    else:
        given = [name for name in TTS_ONLY_START_FIELDS if data.get(name) is not None]
        if given:
            raise ProtocolError("invalid_message", f"{', '.join(given)}: only for task tts, not {task!r}")
    stage1 = _stage1(data.get("stage1"))
    engine = _engine(data.get("engine", "auto"))
    return SessionStart(task, rate, fmt, out_rate, voice, reference, options, stage1, reference_text, language, engine)


def _engine(value) -> str:
    if value not in ENGINE_CHOICES:
        raise ProtocolError(
            "invalid_engine", f"engine must be one of {', '.join(ENGINE_CHOICES)}, got {excerpt(value)}"
        )
    return value


def _rate(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_RATE <= value <= MAX_RATE:
        raise ProtocolError(
            "invalid_sample_rate", f"{name} must be an integer in [{MIN_RATE}, {MAX_RATE}] Hz, got {excerpt(value)}"
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
        raise ProtocolError(
            "invalid_reference", f"reference.data is not valid base64: {excerpt(str(exc), 80)}"
        ) from None


def _parse_options(value, *, partial: bool) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError("invalid_options", "options must be a JSON object")
    allowed = {"bypass", "mix", "stage1_steps", "s2a_steps", "strength"}
    unknown = set(value) - allowed
    if unknown:
        raise ProtocolError("invalid_options", f"unknown option(s) {_names(unknown)}; allowed: {sorted(allowed)}")
    out: dict[str, Any] = {}
    if "bypass" in value:
        if not isinstance(value["bypass"], bool):
            raise ProtocolError("invalid_options", "bypass must be true or false")
        out["bypass"] = value["bypass"]
    if "mix" in value:
        mix = value["mix"]
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0.0 <= mix <= 1.0:
            raise ProtocolError("invalid_options", f"mix must be a number in [0, 1], got {excerpt(mix)}")
        out["mix"] = float(mix)
    if "strength" in value:
        out["strength"] = _strength(value["strength"])
    if "stage1_steps" in value:
        out["stage1_steps"] = _steps(value["stage1_steps"], "stage1_steps")
    if "s2a_steps" in value:
        steps = value["s2a_steps"]
        if not isinstance(steps, list) or not steps:
            raise ProtocolError("invalid_options", "s2a_steps must be a list of positive integers")
        out["s2a_steps"] = tuple(_steps(s, "s2a_steps") for s in steps)
    return out


def _strength(value) -> float:
    low, high = STRENGTH_RANGE_DB
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ProtocolError(
            "invalid_options",
            f"strength must be a number of dB in [{low:g}, {high:g}] (attenuation limit), got {excerpt(value)}",
        )
    return float(value)


def _steps(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ProtocolError("invalid_options", f"{name} must be an integer in [1, 100], got {excerpt(value)}")
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
