"""Typed per-stream state: input buffers, committed tokens, crossfade tail, resamplers, counters.

A session turns pushed audio into :class:`WindowJob` s (one hop at a time: hop k+1 needs hop k's tokens) and turns
the engine's results back into output audio. It owns no model. All methods are thread-safe (one lock).

Timing: a hop runs as soon as both model-rate paths (16 kHz for SSL features, 24 kHz dry audio) hold its window.
The resamplers have a fixed lookahead and do not depend on packet sizes, so output leaves after exactly
:attr:`latency_ms` of input whatever the packet sizes, and deterministic output does not depend on them either.

Overload: when the engine falls behind, i.e. the next window has been complete for longer than ``max_backlog_ms``
and the one after it is complete too, whole chunks of the oldest unprocessed input are cut out of the timeline
(with a short crossfade) and counted as dropped, so delay stays bounded instead of growing without end. A burst of
input (large packets) is not overload. Undelivered output is bounded too (oldest dropped, counted).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from metis_rt.audio.stream_resampler import StreamResampler
from metis_rt.config import TaskDecoding, stage1_variant
from metis_rt.models.decoding import GumbelNoise, NoiseSource, ZeroNoise
from metis_rt.streaming.base import SessionBase, SessionClosed, checked_samples, same_duration
from metis_rt.streaming.buffers import AudioTimeline, TokenTimeline
from metis_rt.streaming.config import EngineConfig
from metis_rt.streaming.geometry import CODEC_FRAME_SAMPLES, CODEC_RATE, SSL_FRAME_SAMPLES, SSL_RATE, Geometry
from metis_rt.streaming.metrics import SessionMetrics
from metis_rt.streaming.overlap_add import crossfade
from metis_rt.streaming.session_state import StreamState, capture, restore
from metis_rt.streaming.window import ReferenceTokens, WindowJob, WindowResult

SPLICE_FADE_MS = 5  # crossfade where dropped input is cut out
MAX_ARRIVALS = 4096
PROMPT_TASKS = ("tse", "vc")


@dataclass(frozen=True)
class SessionSpec:
    task: str
    input_rate: int
    output_rate: int
    settings: TaskDecoding
    deterministic: bool = False
    seed: int | None = None
    stage1: str = "task"  # "task" (the task's own stage-1 model) or "omni" (Metis-Omni serves every task)

    @property
    def variant(self) -> str:
        """The stage-1 model that runs this stream."""
        return stage1_variant(self.task, self.stage1)


__all__ = ["PROMPT_TASKS", "SessionClosed", "SessionSpec", "StreamSession", "same_duration"]


class StreamSession(SessionBase):
    """A Metis windowed stream (see the module docstring); the shared behaviour is in ``SessionBase``."""

    def __init__(
        self,
        session_id: int,
        spec: SessionSpec,
        geometry: Geometry,
        engine_cfg: EngineConfig,
        num_quantizers: int,
        reference: ReferenceTokens | None = None,
        on_output: Callable[[np.ndarray], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ):
        if (spec.task in PROMPT_TASKS) != (reference is not None):
            raise ValueError(f"task {spec.task!r}: a reference is {'required' if reference is None else 'not used'}")
        super().__init__(session_id, engine_cfg, on_output, on_done)
        self.spec = spec
        self.geometry = geometry
        self.num_quantizers = num_quantizers
        self.reference = reference
        self._checkpoint_waiters: list[Callable[[StreamState], None]] = []
        self.reset()

    # --- lifecycle ------------------------------------------------------------------------------
    def _reset_state(self) -> None:  # lock held
        self._reset_common(SessionMetrics(chunk_ms=self.geometry.chunk_ms))
        self._in16 = StreamResampler(self.spec.input_rate, SSL_RATE)
        self._in24 = StreamResampler(self.spec.input_rate, CODEC_RATE)
        self._out = StreamResampler(CODEC_RATE, self.spec.output_rate)
        self.audio16, self.dry24 = AudioTimeline(), AudioTimeline()
        self.semantic, self.acoustic = TokenTimeline(), TokenTimeline(self.num_quantizers)
        self.hop, self.tail = 0, None
        self.dropped16, self.dropped24 = 0, 0
        self.emitted24, self.last_hop, self.target24 = 0, -1, 0
        # (input clock at 16 kHz after a push, wall time); bounded in case the engine stalls
        self.arrivals: deque[tuple[int, float]] = deque(maxlen=MAX_ARRIVALS)
        self.drops: list[tuple[int, int]] = []  # cuts ahead of the last emitted chunk: (16 kHz position, size)
        self.drops_before = 0  # samples cut before the last emitted chunk
        self.noise: NoiseSource = ZeroNoise() if self.spec.deterministic else GumbelNoise(self.spec.seed)

    @property
    def latency_input_samples(self) -> int:
        """Input samples between a chunk's first sample and the moment its hop can run (constant for all hops)."""
        g = self.geometry
        need24 = g.window(0)[2] * CODEC_FRAME_SAMPLES
        return max(self._in16.inputs_needed(g.ssl_samples_needed(0)), self._in24.inputs_needed(need24))

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency of this stream: the geometry's (chunk + lookahead + framing) plus the input
        resampler's fixed lookahead when the client rate is not 16 kHz."""
        return self.latency_input_samples * 1000 / self.spec.input_rate

    # --- checkpoints (a stream moving to another worker: metis_rt.streaming.session_state) ------------
    def checkpoint(self, on_state: Callable[[StreamState], None]) -> None:
        """Call ``on_state(state)`` at the next consistent point: now (caller's thread) when no hop is in flight and
        the input is not being flushed, else right after the hop that completes next (engine thread), after that
        hop's output was delivered."""
        with self.lock:
            if not self._consistent():
                self._checkpoint_waiters.append(on_state)
                return
            state = capture(self)
        on_state(state)

    def restore(self, state: StreamState) -> None:
        """Continue the stream ``state`` was taken from (a fresh session of the same spec); StateMismatch if not."""
        with self.lock:
            if self.received_in or self.hop:
                raise RuntimeError(f"session {self.id}: restore into a stream that has started")
            restore(self, state)

    def _consistent(self) -> bool:  # lock held
        return not (self.in_flight or self.ending or self.done or self.error is not None)

    def _take_checkpoints(self) -> tuple[list[Callable[[StreamState], None]], StreamState | None]:  # lock held
        if not self._checkpoint_waiters or not self._consistent():
            return [], None
        waiters, self._checkpoint_waiters = self._checkpoint_waiters, []
        return waiters, capture(self)

    def update_settings(self, settings: TaskDecoding) -> None:
        with self.lock:
            self.spec = dataclasses.replace(self.spec, settings=settings)

    def restart(self, task: str, settings: TaskDecoding, reference: ReferenceTokens | None) -> None:
        """Switch to another task: the stream starts afresh (a job in flight is discarded when it returns), so the
        output pauses for about one algorithmic latency. Rates, mix and callbacks stay."""
        if (task in PROMPT_TASKS) != (reference is not None):
            raise ValueError(f"task {task!r}: a reference is {'required' if reference is None else 'not used'}")
        with self.lock:
            if self.ending:
                raise SessionClosed(f"session {self.id}: input already finished")
            self.spec = dataclasses.replace(self.spec, task=task, settings=settings)
            self.reference = reference
            self.generation += 1
            self._reset_state()

    # --- input ----------------------------------------------------------------------------------
    def push(self, samples: np.ndarray, now: float | None = None) -> None:
        """Append mono float samples at the input rate."""
        x = checked_samples(samples)
        with self.lock:
            if self.ending:
                raise SessionClosed(f"session {self.id}: input already finished")
            self.received_in += len(x)
            self.audio16.append(self._in16.push(x))
            self.dry24.append(self._in24.push(x))
            clock = self.received_in * SSL_RATE // self.spec.input_rate
            now = time.perf_counter() if now is None else now
            self.arrivals.append((clock, now))
            self._drop_if_behind(now)
        self._wake()

    def finish(self) -> None:
        """End of input: the remaining audio (padded with silence) will be processed and the output completed."""
        with self.lock:
            if self.ending:
                return
            self.ending = True
            self.audio16.append(self._in16.flush())
            self.dry24.append(self._in24.flush())
            rate_in, rate_out = self.spec.input_rate, self.spec.output_rate
            self.target24 = same_duration(self.received_in, rate_in, CODEC_RATE) - self.dropped24
            self.target_out = same_duration(self.received_in, rate_in, rate_out) - same_duration(
                self.dropped24, CODEC_RATE, rate_out
            )
            frames = math.ceil(self.target24 / CODEC_FRAME_SAMPLES)
            self.last_hop = math.ceil(frames / self.geometry.chunk) - 1
            if self.hop > self.last_hop and not self.in_flight:
                self._finalise(self._out.flush())
                return
            _, _, end = self.geometry.window(self.last_hop)
            self.audio16.pad_to(self.geometry.ssl_samples_needed(self.last_hop))
            self.dry24.pad_to(end * CODEC_FRAME_SAMPLES)
        self._wake()

    # --- hops -----------------------------------------------------------------------------------
    def _ready(self) -> bool:
        if self.in_flight or self.done or self.error is not None:
            return False
        if self.ending:
            return self.hop <= self.last_hop
        need16 = self.geometry.ssl_samples_needed(self.hop)
        need24 = self.geometry.window(self.hop)[2] * CODEC_FRAME_SAMPLES
        return self.audio16.end >= need16 and self.dry24.end >= need24

    def take_window(self) -> WindowJob | None:
        """The next hop's job, or None if it cannot run yet. Marks the session in flight."""
        with self.lock:
            if not self._ready():
                return None
            g, hop = self.geometry, self.hop
            left, _, end = g.window(hop)
            chunk_start = g.chunk_start(hop)
            if self.semantic.end != chunk_start:
                raise RuntimeError(f"session {self.id}: tokens end at {self.semantic.end}, hop starts {chunk_start}")
            dec_left = min(g.decoder_left, chunk_start)
            s2a_left = min(g.s2a_left, left)
            job = WindowJob(
                session_id=self.id,
                hop=hop,
                task=self.spec.task,
                variant=self.spec.variant,
                target=g.chunk + g.lookahead,
                audio_16k=self.audio16.read(*g.ssl_window_samples(hop)),
                dry_24k=self.dry24.read((chunk_start - dec_left) * CODEC_FRAME_SAMPLES, end * CODEC_FRAME_SAMPLES),
                left_semantic=self.semantic.last(left),
                s2a_semantic=self.semantic.last(s2a_left),
                s2a_acoustic=self.acoustic.last(s2a_left),
                decoder_acoustic=self.acoustic.last(dec_left),
                reference=self.reference,
                settings=self.spec.settings,
                noise=self.noise,
                generation=self.generation,
            )
            self.in_flight = True
            return job

    def complete(self, job: WindowJob, result: WindowResult, compute_s: float, now: float | None = None) -> None:
        """Commit the chunk's tokens and emit its audio (crossfaded with the previous hop's tail)."""
        with self.lock:
            if job.generation != self.generation:
                return  # taken before a restart: its stream is gone
            g = self.geometry
            self.semantic.append(result.semantic[: g.chunk])
            self.acoustic.append(result.acoustic[: g.chunk])
            self.semantic.keep_last(g.left)
            self.acoustic.keep_last(g.left)
            first = job.decoder_left * CODEC_FRAME_SAMPLES
            stop = first + g.chunk * CODEC_FRAME_SAMPLES
            tail = result.wav_24k[stop : stop + g.crossfade_samples]
            fade = g.crossfade_samples if self.tail is not None else 0
            out24 = crossfade(self.tail, result.wav_24k[first:stop], fade)
            self.tail = tail if len(tail) == g.crossfade_samples else None
            out24 = self._mix(out24, job.dry_24k[first:stop]).astype(np.float32)
            self.hop += 1
            self.in_flight = False
            self._trim_history()
            if self.ending:
                out24 = out24[: max(0, self.target24 - self.emitted24)]
            self.emitted24 += len(out24)
            emit_time = time.perf_counter() if now is None else now
            self.metrics.record_hop(compute_s, self._latency_of(job.hop, emit_time), self._backlog_ms())
            self._deliver(self._out.push(out24))
            if self.ending and self.hop > self.last_hop:
                self._finalise(self._out.flush())
            waiters, state = self._take_checkpoints()
        for on_state in waiters:
            on_state(state)

    # --- bookkeeping ----------------------------------------------------------------------------
    def _trim_history(self) -> None:
        g = self.geometry
        start16, _ = g.ssl_window_samples(self.hop)
        self.audio16.trim_before(start16)
        dec_left = min(g.decoder_left, g.chunk_start(self.hop))
        self.dry24.trim_before((g.chunk_start(self.hop) - dec_left) * CODEC_FRAME_SAMPLES)

    def _backlog_ms(self) -> float:
        next_hop = self.hop + (1 if self.in_flight else 0)
        excess = self.audio16.end - self.geometry.ssl_samples_needed(next_hop)
        return max(0, excess) * 1000 / SSL_RATE

    def _drop_if_behind(self, now: float) -> None:
        """Cut out the oldest unprocessed chunks when the engine is behind (see the module docstring).

        (A) windows that have been complete for longer than ``max_backlog_ms`` go, as long as the window after them
        is complete too (a burst the engine is still working through is not overload); (B) whatever the timing,
        buffered input beyond the next window never exceeds ``max_buffer_ms`` (bounded memory at any feed rate).
        """
        g, cfg = self.geometry, self.engine_cfg
        chunk16 = g.chunk * SSL_FRAME_SAMPLES
        first = self.hop + (1 if self.in_flight else 0)
        need = g.ssl_samples_needed(first)
        excess = self.audio16.end - need
        n = max(0, math.ceil((excess - cfg.max_buffer_ms * SSL_RATE // 1000) / chunk16))  # rule B
        while self.audio16.end >= need + (n + 1) * chunk16:  # rule A
            ready_at = self._arrival(need + n * chunk16 - 1 + self.dropped16)
            if ready_at is None or now - ready_at <= cfg.max_backlog_ms / 1000:
                break
            n += 1
        n = min(n, excess // chunk16)
        if n > 0:
            self._cut(g.chunk_start(first), n)

    def _cut(self, at_frame: int, chunks: int) -> None:
        """Remove ``chunks`` chunks of input starting at frame ``at_frame`` from both model-rate paths."""
        g = self.geometry
        n16, n24 = chunks * g.chunk * SSL_FRAME_SAMPLES, chunks * g.chunk * CODEC_FRAME_SAMPLES
        self.audio16.cut(at_frame * SSL_FRAME_SAMPLES, n16, SPLICE_FADE_MS * SSL_RATE // 1000)
        self.dry24.cut(at_frame * CODEC_FRAME_SAMPLES, n24, SPLICE_FADE_MS * CODEC_RATE // 1000)
        self.drops.append((at_frame * SSL_FRAME_SAMPLES, n16))
        self.dropped16 += n16
        self.dropped24 += n24
        self.metrics.dropped_ms += chunks * g.chunk_ms

    def _arrival(self, clock: int) -> float | None:
        """Wall time of the push that delivered input-clock sample ``clock`` (16 kHz), if still remembered."""
        for position, t in self.arrivals:
            if position > clock:
                return t
        return None

    def _latency_of(self, hop: int, emit_time: float) -> float | None:
        """Wall time from the arrival of the chunk's first sample to the emission of its output (ms)."""
        timeline = self.geometry.chunk_start(hop) * SSL_FRAME_SAMPLES
        self.drops_before += sum(n for at, n in self.drops if at <= timeline)
        self.drops = [(at, n) for at, n in self.drops if at > timeline]
        position = timeline + self.drops_before  # the chunk's first sample on the input clock
        while self.arrivals and self.arrivals[0][0] <= position:
            self.arrivals.popleft()
        return (emit_time - self.arrivals[0][1]) * 1000 if self.arrivals else None
