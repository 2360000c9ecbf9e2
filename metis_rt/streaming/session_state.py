"""The state of a Metis :class:`~metis_rt.streaming.session.StreamSession` as a typed object and as bytes.

A stream moves to another worker by carrying this state (inside a signed resume token): the new worker builds a
session with the same spec, restores the state into it and continues exactly where the old one was. The state is
taken at a *consistent point*: no hop in flight, input not being flushed (``StreamSession.checkpoint``). It holds:

* the input accounting: ``input_samples`` (all input received, the resume's ``input_samples_acked``), output
  produced (``output_samples``), the stream's mix gain;
* the three resamplers' histories and positions (client rate -> 16 / 24 kHz, 24 kHz -> output rate);
* the audio history the next windows need (16 kHz SSL path, 24 kHz dry path) and the unprocessed input after it;
* committed semantic / acoustic tokens of the left context, the previous hop's crossfade tail;
* drop bookkeeping (input cut out when the engine fell behind) and the sampling noise's generator state
  (deterministic streams use no noise; seeded ones continue their random sequence).

What it does not hold: the reference voice (the connection carries its name), wall-clock arrival times (latency
measurements restart), metrics other than the dropped input. Bytes: :mod:`metis_rt.streaming.state_blob` (no
pickle: tokens come from the network). Pure code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from metis_rt.audio.stream_resampler import StreamResampler
from metis_rt.models.decoding import GumbelNoise
from metis_rt.streaming import state_blob
from metis_rt.streaming.buffers import AudioTimeline, TokenTimeline

if TYPE_CHECKING:
    from metis_rt.streaming.session import StreamSession

STATE_FORMAT = 1
_RESAMPLERS = ("in16", "in24", "out")
_AUDIO = ("audio16", "dry24")
_TOKENS = ("semantic", "acoustic")


class StateMismatch(ValueError):
    """A state that cannot be restored into this session (another format, spec or model size)."""


@dataclass(frozen=True)
class ResamplerState:
    buf: np.ndarray  # [H] float64 input history
    buf_start: int
    received: int
    next_out: int


@dataclass(frozen=True)
class TimelineState:
    data: np.ndarray  # audio [N] float32, or tokens [N] / [N, Q] int64
    start: int
    skip: int = 0


@dataclass(frozen=True)
class StreamState:
    spec: dict[str, Any]  # task, input_rate, output_rate, deterministic, seed, stage1 (must match the session's)
    input_samples: int  # input received (client rate): everything before it is in this state
    output_samples: int  # output produced before this state (output rate)
    target_out: int
    hop: int
    wet: float
    wet_now: float
    resamplers: dict[str, ResamplerState]
    audio: dict[str, TimelineState]
    tokens: dict[str, TimelineState]
    tail: np.ndarray | None  # [crossfade] previous hop's decoded audio beyond its chunk
    dropped16: int
    dropped24: int
    emitted24: int
    drops: tuple[tuple[int, int], ...]
    drops_before: int
    dropped_ms: float
    noise: np.ndarray | None  # uint8 torch generator state (GumbelNoise), None for noise-free decoding

    # --- bytes ----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        meta = {
            "format": STATE_FORMAT,
            "spec": self.spec,
            "counters": {
                "input_samples": self.input_samples,
                "output_samples": self.output_samples,
                "target_out": self.target_out,
                "hop": self.hop,
                "dropped16": self.dropped16,
                "dropped24": self.dropped24,
                "emitted24": self.emitted24,
                "drops_before": self.drops_before,
            },
            "wet": self.wet,
            "wet_now": self.wet_now,
            "dropped_ms": self.dropped_ms,
            "drops": [list(d) for d in self.drops],
            "resamplers": {k: [r.buf_start, r.received, r.next_out] for k, r in self.resamplers.items()},
            "timelines": {k: [t.start, t.skip] for k, t in {**self.audio, **self.tokens}.items()},
        }
        arrays = {f"resampler.{k}": r.buf for k, r in self.resamplers.items()}
        arrays |= {f"timeline.{k}": t.data for k, t in {**self.audio, **self.tokens}.items()}
        if self.tail is not None:
            arrays["tail"] = self.tail
        if self.noise is not None:
            arrays["noise"] = self.noise
        return state_blob.pack(meta, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamState:
        meta, arrays = state_blob.unpack(data)
        if meta.get("format") != STATE_FORMAT:
            raise StateMismatch(f"stream state format {meta.get('format')!r}; this worker reads {STATE_FORMAT}")
        try:
            counters = {k: int(v) for k, v in meta["counters"].items()}
            timelines = meta["timelines"]
            resamplers = {
                k: ResamplerState(arrays[f"resampler.{k}"], *(int(v) for v in meta["resamplers"][k]))
                for k in _RESAMPLERS
            }
            audio = {k: TimelineState(arrays[f"timeline.{k}"], *map(int, timelines[k])) for k in _AUDIO}
            tokens = {k: TimelineState(arrays[f"timeline.{k}"], *map(int, timelines[k])) for k in _TOKENS}
            return cls(
                spec=dict(meta["spec"]),
                resamplers=resamplers,
                audio=audio,
                tokens=tokens,
                tail=arrays.get("tail"),
                noise=arrays.get("noise"),
                wet=float(meta["wet"]),
                wet_now=float(meta["wet_now"]),
                dropped_ms=float(meta["dropped_ms"]),
                drops=tuple((int(a), int(b)) for a, b in meta["drops"]),
                **counters,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateMismatch(f"stream state incomplete or malformed: {exc!r}"[:200]) from exc


def spec_dict(session: StreamSession) -> dict[str, Any]:
    s = session.spec
    return {
        "task": s.task,
        "input_rate": s.input_rate,
        "output_rate": s.output_rate,
        "deterministic": s.deterministic,
        "seed": s.seed,
        "stage1": s.stage1,
    }


def capture(session: StreamSession) -> StreamState:
    """The session's state (lock held, no hop in flight, not ending)."""
    if session.in_flight or session.ending:
        raise RuntimeError(f"session {session.id}: state taken while a hop runs or the input is being flushed")
    noise = session.noise
    return StreamState(
        spec=spec_dict(session),
        input_samples=session.received_in,
        output_samples=session.delivered_out,
        target_out=session.target_out,
        hop=session.hop,
        wet=session.wet,
        wet_now=session._wet_now,
        resamplers={k: _resampler(getattr(session, f"_{k}")) for k in _RESAMPLERS},
        audio={
            k: TimelineState(getattr(session, k).data.copy(), getattr(session, k).start, getattr(session, k).skip)
            for k in _AUDIO
        },
        tokens={k: TimelineState(getattr(session, k).data.copy(), getattr(session, k).start) for k in _TOKENS},
        tail=None if session.tail is None else np.asarray(session.tail).copy(),
        dropped16=session.dropped16,
        dropped24=session.dropped24,
        emitted24=session.emitted24,
        drops=tuple(session.drops),
        drops_before=session.drops_before,
        dropped_ms=session.metrics.dropped_ms,
        noise=noise.generator.get_state().numpy().copy() if isinstance(noise, GumbelNoise) else None,
    )


def restore(session: StreamSession, state: StreamState) -> None:
    """Put ``state`` into a fresh ``session`` of the same spec (lock held); StateMismatch if it does not fit."""
    if state.spec != spec_dict(session):
        raise StateMismatch(f"stream state of {state.spec} cannot continue a session of {spec_dict(session)}")
    width = state.tokens["acoustic"].data.shape[1:] if state.tokens["acoustic"].data.ndim == 2 else None
    if width != (session.num_quantizers,):
        raise StateMismatch(f"acoustic tokens of width {width}; this model has {session.num_quantizers} layers")
    if (state.noise is None) != (not isinstance(session.noise, GumbelNoise)):
        raise StateMismatch("the state's sampling noise does not match the session's (deterministic or not)")
    session.received_in, session.delivered_out, session.target_out = (
        state.input_samples,
        state.output_samples,
        state.target_out,
    )
    session.hop, session.wet, session._wet_now = state.hop, state.wet, state.wet_now
    for k in _RESAMPLERS:
        _set_resampler(getattr(session, f"_{k}"), state.resamplers[k])
    for k in _AUDIO:
        timeline = AudioTimeline()
        timeline.data, timeline.start, timeline.skip = (
            state.audio[k].data.astype(np.float32),
            state.audio[k].start,
            state.audio[k].skip,
        )
        setattr(session, k, timeline)
    for k in _TOKENS:
        tokens = TokenTimeline() if k == "semantic" else TokenTimeline(session.num_quantizers)
        tokens.data, tokens.start = state.tokens[k].data.astype(np.int64), state.tokens[k].start
        setattr(session, k, tokens)
    session.tail = state.tail
    session.dropped16, session.dropped24, session.emitted24 = state.dropped16, state.dropped24, state.emitted24
    session.drops, session.drops_before = list(state.drops), state.drops_before
    session.metrics.dropped_ms = state.dropped_ms
    if state.noise is not None:
        session.noise.generator.set_state(torch.from_numpy(state.noise.astype(np.uint8)))


def _resampler(r: StreamResampler) -> ResamplerState:
    return ResamplerState(r._buf.copy(), r._buf_start, r._received, r._next)


def _set_resampler(r: StreamResampler, s: ResamplerState) -> None:
    r._buf, r._buf_start, r._received, r._next = s.buf.astype(np.float64), s.buf_start, s.received, s.next_out
