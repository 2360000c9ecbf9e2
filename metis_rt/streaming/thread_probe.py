"""Synthetic engine steps that time CPU thread counts (issue 20) on the processor's own code path.

Which thread count suits a hop depends on how the hop runs, not only on its arithmetic: a hop of small models is
thousands of small operators with interpreter work between them, and a tight loop of one operator times the same
under any count where the real hop does not. So this probe runs real windows through
:meth:`MetisWindowProcessor.run` with the stream's own settings (:class:`ProbeSettings`: geometry, decoding steps
and guidance of the model directory; the package defaults when the caller has none), seeded noise as input,
``batch`` windows per step, for the first SE/TSE/VC model loaded (numpy's BLAS already held to one thread:
:func:`~metis_rt.models.thread_choice.quiet_numpy_blas`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from metis_rt.config import OfficialConfig, TaskDecoding, load_official_config
from metis_rt.models.decoding import GumbelNoise
from metis_rt.models.thread_choice import ThreadPlan, architecture_key, measured_plan, plan_key, resolve_threads
from metis_rt.streaming.config import StreamConfig, load_stream_config, stream_decoding
from metis_rt.streaming.geometry import (
    CODEC_FRAME_SAMPLES,
    FEATURE_FRAMING_SAMPLES,
    SSL_FRAME_SAMPLES,
    Geometry,
    GeometryConfig,
)
from metis_rt.streaming.window import WindowJob

PROBE_TASKS = ("se", "tse", "vc")
REFERENCE_SECONDS = 3.0


@dataclass(frozen=True)
class ProbeSettings:
    """What the streams will run: the official decoding settings and the streaming configuration."""

    official: OfficialConfig = field(default_factory=load_official_config)
    stream: StreamConfig = field(default_factory=load_stream_config)


def thread_plan(processor, probe: ProbeSettings | None = None) -> ThreadPlan | None:
    """The processor's ``speed.threads`` as a plan (None: torch's setting left alone), measured by probe steps
    for ``"auto"`` on a CPU. Call with the eager fast path in place (the probe runs what the streams will run)."""
    setting, device = processor.speed.threads, processor.comps.device
    if setting != "auto":
        return resolve_threads(setting, device)
    task = probe_task(processor)
    if task is None:
        return None
    probe = probe or ProbeSettings()
    settings = stream_decoding(probe.official, task, probe.stream.steps_for(task))
    key = plan_key(architecture_key(processor.comps), task, settings, probe.stream.geometry)
    measure = partial(measured_plan, key, partial(probe_step, processor, task, settings, probe.stream.geometry))
    return resolve_threads(setting, device, measure)


def probe_task(processor) -> str | None:
    """The task a probe runs: the first of SE, TSE, VC whose stage-1 model is loaded (None: none is)."""
    loaded = processor.comps.stage1
    return next((t for t in PROBE_TASKS if t in loaded), None)


def probe_step(
    processor, task: str, settings: TaskDecoding, geometry_cfg: GeometryConfig, batch: int
) -> tuple[Callable[[], float], int]:
    """(a callable that runs one engine step of ``batch`` synthetic windows and returns its seconds, the step's
    window frames as :func:`~metis_rt.streaming.processor.window_frames` counts them)."""
    geometry = Geometry.from_config(geometry_cfg)
    rng = np.random.default_rng(0)
    reference = None
    if task != "se":
        noise16 = (0.1 * rng.standard_normal(int(16000 * REFERENCE_SECONDS))).astype(np.float32)
        noise24 = (0.1 * rng.standard_normal(int(24000 * REFERENCE_SECONDS))).astype(np.float32)
        reference = processor.prepare_reference(noise16, noise24)
    left, target, q = geometry.left, geometry.chunk + geometry.lookahead, processor.num_quantizers
    s2a_left, decoder_left = geometry.s2a_left, geometry.decoder_left
    audio = (0.1 * rng.standard_normal((left + target) * SSL_FRAME_SAMPLES + FEATURE_FRAMING_SAMPLES)).astype(
        np.float32
    )
    jobs = [
        WindowJob(
            session_id=i,
            hop=0,
            task=task,
            target=target,
            audio_16k=audio,
            dry_24k=np.zeros((decoder_left + target) * CODEC_FRAME_SAMPLES, np.float32),
            left_semantic=np.zeros(left, np.int64),
            s2a_semantic=np.zeros(s2a_left, np.int64),
            s2a_acoustic=np.zeros((s2a_left, q), np.int64),
            decoder_acoustic=np.zeros((decoder_left, q), np.int64),
            reference=reference,
            settings=settings,
            noise=GumbelNoise(i),
        )
        for i in range(batch)
    ]

    def probe() -> float:
        t0 = time.perf_counter()
        processor.run(jobs)
        return time.perf_counter() - t0

    frames = batch * (left + target + (0 if reference is None else reference.frames))
    return probe, frames
