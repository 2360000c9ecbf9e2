"""Resuming streams on another worker: what a checkpoint token carries and how a worker issues and opens one.

A token (``metis_rt.server.resume_token``: HMAC-SHA256 over a versioned envelope) carries a :class:`Ticket`: the
connection's settings that are not part of the session's spec (wire format, decoding steps, mix, voice name) and
the session's :class:`~metis_rt.streaming.session_state.StreamState`. Both go through ``state_blob`` (JSON and raw
arrays, never pickle). The *fingerprint* every token is checked against is the digest of what must be equal for a
stream to continue exactly (:func:`server_fingerprint`): the protocol version, the official model configuration,
the stream geometry and speed settings, the model's quantizer count and kind, deterministic decoding, and a cheap
identity of the model files (their names and sizes; not a hash of the weights: reading gigabytes at start-up is
too slow, and the workers of one deployment share the files anyway).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metis_rt.server import protocol as proto
from metis_rt.server import resume_token
from metis_rt.server.resume_token import ResumeSettings, ResumeTokenError
from metis_rt.streaming import state_blob
from metis_rt.streaming.config import StepsConfig
from metis_rt.streaming.session_state import StateMismatch, StreamState

TICKET_FORMAT = 1


@dataclass(frozen=True)
class Ticket:
    """What a resume token carries: the connection's settings and the stream's state."""

    format: str
    steps: StepsConfig
    mix: float
    bypass: bool
    voice: str | None  # the server-side voice of a tse/vc stream (uploaded references are not resumable)
    resumes: int  # moves the stream made before this token
    resume_gap_ms: float  # wall time the stream spent without a worker over those moves
    stream: StreamState

    def to_bytes(self) -> bytes:
        meta = {
            "format": TICKET_FORMAT,
            "wire_format": self.format,
            "steps": [self.steps.stage1, list(self.steps.s2a)],
            "mix": self.mix,
            "bypass": self.bypass,
            "voice": self.voice,
            "resumes": self.resumes,
            "resume_gap_ms": self.resume_gap_ms,
        }
        return state_blob.pack(meta, {"stream": np.frombuffer(self.stream.to_bytes(), np.uint8)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Ticket:
        meta, arrays = state_blob.unpack(data)
        if meta.get("format") != TICKET_FORMAT:
            raise StateMismatch(f"ticket format {meta.get('format')!r}; this worker reads {TICKET_FORMAT}")
        try:
            stage1, s2a = meta["steps"]
            voice = meta["voice"]
            return cls(
                format=str(meta["wire_format"]),
                steps=StepsConfig(int(stage1), tuple(int(n) for n in s2a)),
                mix=float(meta["mix"]),
                bypass=bool(meta["bypass"]),
                voice=None if voice is None else str(voice),
                resumes=int(meta["resumes"]),
                resume_gap_ms=float(meta["resume_gap_ms"]),
                stream=StreamState.from_bytes(arrays["stream"].tobytes()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, StateMismatch):
                raise
            raise StateMismatch(f"ticket incomplete or malformed: {exc!r}"[:200]) from exc


class Resumer:
    """Issues and opens tokens for one worker (pure apart from the injectable clock: wall time, shared by workers)."""

    def __init__(self, settings: ResumeSettings, fingerprint: str, clock: Callable[[], float] = time.time):
        self.settings, self.fingerprint, self.clock = settings, fingerprint, clock

    def issue(self, ticket: Ticket) -> str:
        return resume_token.sign(
            ticket.to_bytes(),
            self.settings.keys,
            fingerprint=self.fingerprint,
            now=self.clock(),
            protocol=proto.PROTOCOL_VERSION,
        )

    def open(self, token: str) -> tuple[Ticket, float]:
        """(ticket, seconds since it was issued); ResumeTokenError (its ``code`` for the error event) otherwise."""
        now = self.clock()
        contents = resume_token.verify(
            token,
            self.settings.keys,
            fingerprint=self.fingerprint,
            now=now,
            max_age_s=self.settings.max_age_s,
            protocol=proto.PROTOCOL_VERSION,
        )
        try:
            ticket = Ticket.from_bytes(contents.state)
        except (StateMismatch, state_blob.StateBlobError) as exc:
            raise ResumeTokenError("resume_refused", f"resume token: its state cannot be read here ({exc})") from exc
        return ticket, max(0.0, now - contents.issued_at)


def server_fingerprint(
    *, official: object, stream_cfg: object, processor: object, deterministic: bool, model_identity: str = ""
) -> str:
    """The fingerprint of a worker (see the module docstring)."""
    return resume_token.fingerprint(
        proto.PROTOCOL_VERSION,
        repr(official),
        repr(getattr(stream_cfg, "geometry", None)),
        repr(getattr(stream_cfg, "speed", None)),
        type(processor).__name__,
        getattr(processor, "num_quantizers", None),
        deterministic,
        model_identity,
    )


MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".json", ".yaml")


def model_identity(model_dir: str | Path) -> str:
    """Names and sizes of the model and config files under ``model_dir`` (sorted): cheap, and equal on workers that
    share the files (mtimes are not: copies differ)."""
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.suffix in MODEL_FILE_SUFFIXES and p.is_file())
    return ";".join(f"{p.relative_to(root)}:{p.stat().st_size}" for p in files)
