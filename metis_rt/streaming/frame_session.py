"""A stream through a frame-wise denoiser (DeepFilterNet3, RNNoise): typed per-stream state on the engine contract.

The client's audio is resampled to the denoiser's native rate (not at all when the rates agree: a 48 kHz client
reaches DeepFilterNet3 untouched), cut into whole frames and handed to the engine thread as jobs of up to
``MAX_JOB_FRAMES`` frames; the denoiser instance belongs to this session and is only ever called on the engine
thread (its reset and strength travel with the job). The denoiser's own delay (``latency_samples``) is compensated:
its first ``latency_samples`` outputs are discarded and at the end the input is padded with silence, so the output
is time-aligned with the input and lasts exactly as long (``SessionBase``). Feeding a file in one push gives the
offline result; any packet sizes give the same samples.

Algorithmic latency at the native rate: an output sample leaves once the frame holding the input
``latency_samples`` after it is complete, i.e. at most ``latency_samples + frame`` samples after it arrived (exact:
some sample of every frame waits that long), plus the resamplers' fixed lookahead at other client rates.

Overload: pending input (not yet given to the denoiser) that arrived longer than ``max_backlog_ms`` ago is cut out
of the timeline in whole frames (crossfaded, counted in ``metrics.dropped_ms``); pending input never exceeds
``max_buffer_ms``. A burst of input (a large packet) is not overload.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from metis_rt.audio.stream_resampler import StreamResampler
from metis_rt.denoisers import STRENGTH_RANGE_DB, FrameDenoiser
from metis_rt.streaming.base import SessionBase, SessionClosed, checked_samples, same_duration
from metis_rt.streaming.buffers import AudioTimeline
from metis_rt.streaming.config import EngineConfig
from metis_rt.streaming.metrics import SessionMetrics

if TYPE_CHECKING:
    from metis_rt.streaming.engine import Engine

MAX_JOB_FRAMES = 10  # frames per engine job (a burst is worked through in slices, so sessions take turns)
SPLICE_FADE_MS = 5  # crossfade where dropped input is cut out
MAX_ARRIVALS = 4096
FRAME_TASKS = ("se",)
DEFAULT_STRENGTH_DB = STRENGTH_RANGE_DB[1]


@dataclass(frozen=True)
class FrameSpec:
    task: str  # "se": frame-wise engines only denoise
    input_rate: int
    output_rate: int
    engine: str  # the denoiser's name


@dataclass(frozen=True)
class FrameJob:
    """Frames of one session for the engine thread. ``audio`` [n * frame] float32 at the denoiser's rate."""

    session_id: int
    denoiser: FrameDenoiser
    audio: np.ndarray
    strength_db: float
    fresh: bool  # reset the denoiser first (the stream restarted)
    generation: int


class FrameProcessor:
    """Runs frame jobs on the engine thread: each job on its own session's denoiser."""

    num_quantizers = 0

    def run(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        out = []
        for job in jobs:
            if job.fresh:
                job.denoiser.reset()
            job.denoiser.set_strength(job.strength_db)
            out.append(np.asarray(job.denoiser.process(job.audio), dtype=np.float32))
        return out

    def prepare_reference(self, reference_16k, reference_24k):
        raise ValueError("frame-wise engines take no reference voice")


def check_strength(value: float) -> float:
    low, high = STRENGTH_RANGE_DB
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"strength must be a number of dB in [{low:g}, {high:g}], got {value!r}")
    return float(value)


class FrameSession(SessionBase):
    def __init__(
        self,
        session_id: int,
        spec: FrameSpec,
        denoiser: FrameDenoiser,
        engine_cfg: EngineConfig,
        on_output: Callable[[np.ndarray], None] | None = None,
        on_done: Callable[[], None] | None = None,
        strength_db: float = DEFAULT_STRENGTH_DB,
    ):
        if spec.task not in FRAME_TASKS:
            raise ValueError(f"engine {spec.engine!r} only denoises (task se), not {spec.task!r}")
        super().__init__(session_id, engine_cfg, on_output, on_done)
        self.spec = spec
        self.denoiser = denoiser
        self.rate, self.frame = denoiser.sample_rate, denoiser.frame_samples
        self.delay = denoiser.latency_samples
        self.strength_db = check_strength(strength_db)
        self.reset()

    # --- lifecycle ------------------------------------------------------------------------------
    def _reset_state(self) -> None:  # lock held
        self._reset_common(SessionMetrics(chunk_ms=self.frame * 1000 / self.rate))
        self.generation += 1  # a job in flight belongs to the old stream: its result is discarded
        self._in = StreamResampler(self.spec.input_rate, self.rate)
        self._out = StreamResampler(self.rate, self.spec.output_rate)
        self.audio = AudioTimeline()  # native-rate input: [taken, end) pending, [emitted, ...) kept as the dry path
        self.taken, self.emitted = 0, 0  # timeline positions: given to the denoiser; output emitted up to
        self.discard = self.delay  # denoiser outputs before the stream start, still to be discarded
        self.dropped, self.target, self.padded_end = 0, 0, 0
        self.fresh = True  # the next job resets the denoiser (never touched outside the engine thread)
        self.arrivals: deque[tuple[int, float]] = deque(maxlen=MAX_ARRIVALS)  # (timeline end after a push, time)

    def set_strength(self, strength_db: float) -> None:
        """Attenuation limit in dB (0 = the input unchanged, 100 = unlimited); applies from the next frames."""
        value = check_strength(strength_db)
        with self.lock:
            self.strength_db = value

    def restart(self, task: str, settings=None, reference=None) -> None:
        """A task switch: frame-wise engines run se only."""
        raise ValueError(f"engine {self.spec.engine!r} only denoises (task se), not {task!r}")

    def update_settings(self, settings) -> None:
        """Decoding settings do not apply to a frame-wise engine."""

    @property
    def latency_native_samples(self) -> int:
        """Worst-case wait (native rate) between a sample's arrival and its output (see the module docstring)."""
        return self.delay + self.frame

    @property
    def latency_ms(self) -> float:
        resampling_s = self._in.lookahead_s + self._out.lookahead_s
        return (self.latency_native_samples / self.rate + resampling_s) * 1000

    # --- input ----------------------------------------------------------------------------------
    def push(self, samples: np.ndarray, now: float | None = None) -> None:
        x = checked_samples(samples)
        with self.lock:
            if self.ending:
                raise SessionClosed(f"session {self.id}: input already finished")
            self.received_in += len(x)
            self.audio.append(self._in.push(x))
            now = time.perf_counter() if now is None else now
            self.arrivals.append((self.audio.end, now))
            self._drop_if_behind(now)
        self._wake()

    def finish(self) -> None:
        """End of input: the rest (padded with silence past the denoiser's delay) is processed, the output completed."""
        with self.lock:
            if self.ending:
                return
            self.ending = True
            self.audio.append(self._in.flush())
            rate_in, rate_out = self.spec.input_rate, self.spec.output_rate
            self.target = same_duration(self.received_in, rate_in, self.rate) - self.dropped
            self.target_out = same_duration(self.received_in, rate_in, rate_out) - same_duration(
                self.dropped, self.rate, rate_out
            )
            self.padded_end = self.frame * math.ceil((self.target + self.delay) / self.frame)
            self.audio.pad_to(self.padded_end)
            if self.emitted >= self.target and not self.in_flight:
                self._finalise(self._out.flush())
                return
        self._wake()

    # --- jobs -----------------------------------------------------------------------------------
    def _ready(self) -> bool:  # lock held
        if self.in_flight or self.done or self.error is not None:
            return False
        if self.ending:
            return self.taken < self.padded_end
        return self.audio.end - self.taken >= self.frame

    def take_window(self) -> FrameJob | None:
        """The next whole frames of input (at most MAX_JOB_FRAMES), or None. Marks the session in flight."""
        with self.lock:
            if not self._ready():
                return None
            n = min((self.audio.end - self.taken) // self.frame, MAX_JOB_FRAMES) * self.frame
            job = FrameJob(
                self.id,
                self.denoiser,
                self.audio.read(self.taken, self.taken + n),
                self.strength_db,
                self.fresh,
                self.generation,
            )
            self.taken += n
            self.fresh, self.in_flight = False, True
            return job

    def complete(self, job: FrameJob, result: np.ndarray, compute_s: float, now: float | None = None) -> None:
        """Emit the denoised frames, shifted back by the denoiser's delay and mixed with the dry input."""
        with self.lock:
            if job.generation != self.generation:
                return
            self.in_flight = False
            if len(result) != len(job.audio):
                self.error = RuntimeError(f"denoiser returned {len(result)} samples for {len(job.audio)}")
                return
            skip = min(self.discard, len(result))
            self.discard -= skip
            wet = result[skip:]
            if self.ending:
                wet = wet[: max(0, self.target - self.emitted)]
            start = self.emitted
            out = self._mix(wet, self.audio.read(start, start + len(wet))).astype(np.float32)
            self.emitted += len(out)
            self.audio.trim_before(min(self.emitted, self.taken))
            emit_time = time.perf_counter() if now is None else now
            frames = len(job.audio) // self.frame
            self.metrics.record_hop(compute_s / frames, self._latency_of(start, emit_time), self._backlog_ms())
            self._deliver(self._out.push(out))
            if self.ending and self.emitted >= self.target:
                self._finalise(self._out.flush())

    # --- bookkeeping ----------------------------------------------------------------------------
    def _backlog_ms(self) -> float:
        return max(0, self.audio.end - self.taken) * 1000 / self.rate

    def _arrival(self, position: int) -> float | None:
        """Wall time of the push that delivered timeline sample ``position``, if still remembered."""
        for end, t in self.arrivals:
            if end > position:
                return t
        return None

    def _latency_of(self, position: int, emit_time: float) -> float | None:
        """Wall time from the arrival of the output block's first sample to its emission (ms)."""
        while self.arrivals and self.arrivals[0][0] <= position:
            self.arrivals.popleft()
        t = self._arrival(position)
        return None if t is None else (emit_time - t) * 1000

    def _drop_if_behind(self, now: float) -> None:  # lock held
        """Cut stale pending input in whole frames (see the module docstring)."""
        cfg = self.engine_cfg
        stale_end = self.taken
        for end, t in self.arrivals:
            if now - t > cfg.max_backlog_ms / 1000:
                stale_end = max(stale_end, end)
        pending = self.audio.end - self.taken
        stale = (stale_end - self.taken) // self.frame * self.frame  # (A) whole frames waiting too long
        over = math.ceil(max(0, pending - cfg.max_buffer_ms * self.rate // 1000) / self.frame) * self.frame  # (B)
        n = min(max(stale, over), pending // self.frame * self.frame)
        if self.ending or n <= 0:
            return
        self.audio.cut(self.taken, n, SPLICE_FADE_MS * self.rate // 1000)
        self.dropped += n
        self.metrics.dropped_ms += n * 1000 / self.rate
        self.arrivals = deque(((max(self.taken, e - n), t) for e, t in self.arrivals), maxlen=MAX_ARRIVALS)


def frame_engine(cfg: EngineConfig) -> Engine:
    """An engine thread for frame sessions: one session per step (each on its own denoiser, so one stream's failure
    or slowness is its own), round-robin across sessions."""
    from metis_rt.streaming.engine import Engine

    return Engine(FrameProcessor(), dataclasses.replace(cfg, max_batch=1))


def run_until_idle(session: FrameSession) -> None:
    """Run the session's pending jobs in this thread (offline use: no engine thread, no event loop)."""
    processor = FrameProcessor()
    while (job := session.take_window()) is not None:
        session.complete(job, processor.run([job])[0], 0.0)


def denoise(
    denoiser: FrameDenoiser,
    wav: np.ndarray,
    rate: int,
    output_rate: int | None = None,
    strength_db: float = DEFAULT_STRENGTH_DB,
) -> np.ndarray:
    """A whole signal through the same session a stream uses (one push): delay compensated, same duration."""
    out: list[np.ndarray] = []
    spec = FrameSpec("se", rate, output_rate or rate, denoiser.name)
    session = FrameSession(0, spec, denoiser, EngineConfig(), on_output=out.append, strength_db=strength_db)
    session.push(wav)
    session.finish()
    run_until_idle(session)
    if session.error is not None:
        raise session.error
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
