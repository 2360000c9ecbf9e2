"""Streaming engine: geometry, crossfade, sample accounting, packet invariance, offline equivalence, identity delay,
batching of mixed sessions, overload."""

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from metis_rt.config import TaskDecoding
from metis_rt.models.decoding import ZeroNoise
from metis_rt.models.stage1_loading import load_stage1
from metis_rt.pipeline.components import load_components, resolve_config
from metis_rt.pipeline.offline import MetisPipeline
from metis_rt.streaming.config import EngineConfig, StepsConfig, load_stream_config, stream_decoding
from metis_rt.streaming.engine import Engine
from metis_rt.streaming.geometry import Geometry, GeometryConfig
from metis_rt.streaming.overlap_add import crossfade, fade_in_window, splice
from metis_rt.streaming.processor import IdentityProcessor, MetisWindowProcessor
from metis_rt.streaming.session import SessionClosed, SessionSpec, StreamSession, same_duration

from .conftest import EXAMPLES_DIR

FAST_STEPS = StepsConfig(stage1=2, s2a=(3, 2) + (1,) * 10)
SMALL = GeometryConfig(
    chunk_ms=160,
    lookahead_ms=80,
    left_context_ms=480,
    s2a_left_context_ms=320,
    decoder_left_context_ms=160,
    crossfade_ms=20,
)


# ----------------------------------------------------------------------------- pure parts
def test_default_geometry_latency_is_chunk_plus_lookahead_plus_framing():
    g = Geometry.from_config(load_stream_config().geometry)
    assert g.latency_ms == 240 + 160 + 15
    assert g.latency_samples(16000) == 6640 and g.latency_samples(24000) == 9960
    assert g.window(0) == (0, 0, 20) and g.window(10) == (80, 40, 140)
    assert g.ssl_samples_needed(0) == 20 * 320 + 240


@pytest.mark.parametrize(
    "bad", [{"chunk_ms": 250}, {"chunk_ms": 0}, {"crossfade_ms": 200}, {"decoder_left_context_ms": 2000}]
)
def test_geometry_rejects_bad_sizes(bad):
    with pytest.raises(ValueError):
        Geometry.from_config(dataclasses.replace(GeometryConfig(), **bad))


@pytest.mark.parametrize("n", [1, 7, 480])
def test_crossfade_windows_sum_to_one_and_preserve_identical_signals(n):
    ones, zeros = np.ones(2 * n), np.zeros(2 * n)
    fade_out = crossfade(ones, zeros, n)[:n]  # what crossfade gives the previous tail
    fade_in = crossfade(zeros, ones, n)[:n]  # ... and the new chunk
    assert np.allclose(fade_out + fade_in, 1.0, rtol=0, atol=1e-15)
    assert np.array_equal(fade_in, fade_in_window(n))
    if n > 1:
        assert np.all(np.diff(fade_in) > 0) and 0 < fade_in[0] < fade_in[-1] < 1
    assert np.array_equal(crossfade(ones, zeros, n)[n:], zeros[n:])  # only the first n samples are blended
    x = np.random.default_rng(0).standard_normal(2 * n)
    assert np.allclose(crossfade(x, x, n), x, rtol=0, atol=1e-15)


def test_splice_removes_exactly_the_span():
    a, b = np.ones(100), np.zeros(50)
    out = splice(a, b, 10)
    assert len(out) == 140 and out[0] == 1 and out[-1] == 0


# ----------------------------------------------------------------------------- helpers
def _run(sessions, engine, signals, packet_ms, manual=False):
    """Feed each session its signal in packets (all sessions interleaved); returns outputs and emission log."""
    outputs = {s.id: [] for s in sessions}
    emitted = {s.id: [] for s in sessions}  # (input samples pushed so far, output samples so far)
    longest = max(len(x) for x in signals)
    for s in sessions:
        s._packet = max(1, round(s.spec.input_rate * packet_ms / 1000))
    pos = {s.id: 0 for s in sessions}
    while any(pos[s.id] < len(x) for s, x in zip(sessions, signals, strict=True)):
        for s, x in zip(sessions, signals, strict=True):
            if pos[s.id] < len(x):
                s.push(x[pos[s.id] : pos[s.id] + s._packet])
                pos[s.id] += s._packet
        _settle(engine, manual)
        for s in sessions:
            outputs[s.id].append(s.read_output())
            emitted[s.id].append((min(pos[s.id], longest), sum(len(o) for o in outputs[s.id])))
    for s in sessions:
        s.finish()
    _settle(engine, manual)
    return {s.id: np.concatenate(outputs[s.id] + [s.read_output()]) for s in sessions}, emitted


def _settle(engine, manual):
    if manual:
        while engine.step():
            pass
    else:
        assert engine.wait_idle(120)


def _session(
    sid,
    task,
    geometry,
    engine_cfg,
    official,
    processor,
    rate_in=16000,
    rate_out=24000,
    reference=None,
    steps=FAST_STEPS,
    deterministic=True,
):
    settings = stream_decoding(official, task, steps) if official is not None else TaskDecoding()
    spec = SessionSpec(task, rate_in, rate_out, settings, deterministic=deterministic, seed=sid)
    return StreamSession(sid, spec, geometry, engine_cfg, processor.num_quantizers, reference)


@pytest.fixture(scope="module")
def speech():
    x, sr = sf.read(EXAMPLES_DIR / "speech_noisy.wav", dtype="float32")
    ref, _ = sf.read(EXAMPLES_DIR / "reference.wav", dtype="float32")
    assert sr == 16000
    return x, ref


@pytest.fixture(scope="module")
def metis64(parity_dir):
    """SE/TSE/VC stage-1 models (each from its own vector directory) over one set of shared components."""
    cfg, official = resolve_config(parity_dir / "se", "se")
    comps = load_components(parity_dir / "se", ["se"], cfg, dtype=torch.float64)
    for task in ("tse", "vc"):
        tcfg, _ = resolve_config(parity_dir / task, task)
        comps.stage1[task] = load_stage1(parity_dir / task, task, tcfg, dtype=torch.float64)
    return comps, official


# ----------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize(("rate_in", "rate_out"), [(16000, 24000), (48000, 16000), (44100, 44100), (8000, 48000)])
def test_output_has_as_many_samples_as_input(rate_in, rate_out):
    geometry, cfg = Geometry.from_config(SMALL), EngineConfig()
    engine = Engine(IdentityProcessor(), cfg)
    engine.start()
    try:
        s = _session(1, "se", geometry, cfg, None, engine.processor, rate_in, rate_out)
        engine.add(s)
        x = (0.1 * np.random.default_rng(1).standard_normal(int(2.345 * rate_in))).astype(np.float32)
        out, _ = _run([s], engine, [x], 37)
    finally:
        engine.stop()
    assert len(out[1]) == same_duration(len(x), rate_in, rate_out)


def test_identity_model_returns_input_delayed_by_exactly_the_declared_latency():
    geometry, cfg = Geometry.from_config(SMALL), EngineConfig()
    engine = Engine(IdentityProcessor(), cfg)
    engine.start()
    try:
        s = _session(1, "se", geometry, cfg, None, engine.processor, 24000, 24000)
        engine.add(s)
        x = np.random.default_rng(2).standard_normal(24000 * 3).astype(np.float32)
        out, log = _run([s], engine, [x], 1)  # 1 ms packets: emission times are exact to the sample
    finally:
        engine.stop()
    assert np.array_equal(out[1], x)
    # latency of output sample m = input samples received when it was emitted - m
    latency = []
    previous = 0
    for received, produced in log[1]:
        latency.extend(received - m for m in range(previous, produced))
        previous = produced
    declared = s.latency_input_samples
    # = chunk + lookahead + 15 ms feature framing + the 24 -> 16 kHz resampler's 1.5 ms lookahead
    assert abs(declared - geometry.latency_samples(24000) - 36) <= 1
    assert max(latency) == -(-declared // 24) * 24  # every sample within the latency, up to 1 ms packet granularity
    # and to the sample: the first output appears exactly when the declared latency of input has arrived
    engine = Engine(IdentityProcessor(), cfg)
    s = _session(2, "se", geometry, cfg, None, engine.processor, 24000, 24000)
    engine.add(s)
    for n in range(1, declared + 1):
        s.push(x[n - 1 : n])
        while engine.step():
            pass
        if s.output_samples:
            break
    assert n == declared and s.read_output()[0] == x[0]


def test_packet_size_does_not_change_deterministic_output(parity_dir, speech):
    cfg, official = resolve_config(parity_dir / "tse", "tse")
    comps = load_components(parity_dir / "tse", ["tse"], cfg)
    processor = MetisWindowProcessor(comps)
    x, ref = speech
    reference = processor.prepare_reference(ref, _to24(ref))
    results = []
    for packet_ms in (10, 37, 500):
        engine = Engine(processor, EngineConfig())
        engine.start()
        try:
            s = _session(1, "tse", Geometry.from_config(SMALL), engine.cfg, official, processor, reference=reference)
            engine.add(s)
            out, _ = _run([s], engine, [x], packet_ms)
        finally:
            engine.stop()
        results.append(out[1])
    assert len(results[0]) == same_duration(len(x), 16000, 24000)
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])
    assert results[0].std() > 0


def _to24(x16):
    from metis_rt.audio.files import resample

    return resample(x16, 16000, 24000).astype(np.float32)


def test_one_window_over_the_whole_input_reproduces_the_offline_pipeline(metis64, speech):
    comps, official = metis64
    x, _ = speech
    frames = (len(x) - 240) // 320
    x = x[: frames * 320 + 240]  # exactly `frames` feature frames
    geometry = Geometry.from_config(
        GeometryConfig(
            chunk_ms=frames * 20,
            lookahead_ms=0,
            left_context_ms=0,
            s2a_left_context_ms=0,
            decoder_left_context_ms=0,
            crossfade_ms=0,
        )
    )
    processor = MetisWindowProcessor(comps)
    engine = Engine(processor, EngineConfig(max_backlog_ms=10**6))
    s = _session(1, "se", geometry, engine.cfg, official, processor)
    engine.add(s)
    out, _ = _run([s], engine, [x], 500, manual=True)
    with torch.inference_mode():
        offline = MetisPipeline(comps).run("se", torch.from_numpy(x), s.spec.settings, ZeroNoise())
    expected = offline.wav.float().numpy()
    assert len(expected) == frames * 480
    assert np.array_equal(out[1][: len(expected)], expected)


def test_mixed_tasks_and_references_batched_equal_each_alone(metis64, speech):
    comps, official = metis64
    processor = MetisWindowProcessor(comps)
    x, ref = speech
    ref_a = processor.prepare_reference(ref, _to24(ref))
    other = x[8000:40000]
    ref_b = processor.prepare_reference(other, _to24(other))  # a different reference length
    plan = [("se", None, x), ("tse", ref_a, x[::-1].copy()), ("vc", ref_b, x), ("se", None, x[4000:])]
    geometry = Geometry.from_config(SMALL)

    def run(items):
        engine = Engine(processor, EngineConfig(max_backlog_ms=10**6))
        sessions = []
        for sid, task, reference, _ in items:
            sessions.append(_session(sid, task, geometry, engine.cfg, official, processor, reference=reference))
            engine.add(sessions[-1])
        out, _ = _run(sessions, engine, [signal for *_, signal in items], 40, manual=True)
        return out, engine

    numbered = [(i + 1, *p) for i, p in enumerate(plan)]
    together, engine = run(numbered)
    assert max(engine.batch_sizes) == len(plan)  # really batched
    for item in numbered:
        alone, _ = run([item])
        sid = item[0]
        assert len(alone[sid]) == len(together[sid])
        assert np.abs(alone[sid] - together[sid]).max() < 1e-9


def test_overload_drops_oldest_input_and_keeps_delay_and_memory_bounded():
    """A simulated clock: input arrives 20x faster than real time, the engine manages one hop per 50 ms."""
    geometry = Geometry.from_config(SMALL)  # 160 ms chunks
    cfg = EngineConfig(max_backlog_ms=320, max_buffer_ms=2000)
    engine = Engine(IdentityProcessor(), cfg)
    s = _session(1, "se", geometry, cfg, None, engine.processor, 16000, 16000)
    engine.add(s)
    x = (0.1 * np.random.default_rng(3).standard_normal(16000 * 30)).astype(np.float32)
    packet, now, next_step, sizes, outs = 1600, 0.0, 0.0, [], []
    for i in range(0, len(x), packet):  # 100 ms of audio every 5 ms
        now += 0.005
        s.push(x[i : i + packet], now=now)
        sizes.append(len(s.audio16.data))
        if now >= next_step:
            engine.step(now=now)
            next_step = now + 0.050
            outs.append(s.read_output())
    s.finish()
    while engine.step(now=now):
        pass
    out, m = np.concatenate([*outs, s.read_output()]), s.metrics
    assert m.dropped_ms > 20000  # most of the input had to go, and it is counted
    window_ms = SMALL.left_context_ms + SMALL.chunk_ms + SMALL.lookahead_ms + 15  # history kept + next window
    assert max(sizes) <= (2000 + window_ms + SMALL.chunk_ms + 100) * 16  # max_buffer + window + chunk + packet
    waits = list(m.latency_ms)[:-3]  # arrival -> emission on the simulated clock (the flush at the end aside)
    assert max(waits) <= 320 + 50 + 160 + 5  # limit + one engine step + chunk + packet granularity
    assert len(out) == len(x) - round(m.dropped_ms * 16)  # output = input minus what was dropped
    assert np.isfinite(out).all()


def test_unread_output_is_bounded():
    geometry, cfg = Geometry.from_config(SMALL), EngineConfig(max_output_ms=500, max_backlog_ms=10**6)
    engine = Engine(IdentityProcessor(), cfg)
    s = _session(1, "se", geometry, cfg, None, engine.processor, 16000, 16000)
    engine.add(s)
    s.push(np.zeros(16000 * 5, dtype=np.float32))
    while engine.step():
        pass
    assert s.output_samples <= 16000 * 0.5 + geometry.chunk * 320
    assert s.metrics.dropped_output_ms > 3000


def test_session_rejects_bad_samples_and_reset_restarts():
    geometry, cfg = Geometry.from_config(SMALL), EngineConfig()
    s = _session(1, "se", geometry, cfg, None, IdentityProcessor())
    with pytest.raises(ValueError, match="NaN"):
        s.push(np.array([0.0, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="mono"):
        s.push(np.zeros((10, 2), dtype=np.float32))
    s.push(np.zeros(16000, dtype=np.float32))
    assert s.received_in == 16000
    s.reset()
    assert s.received_in == 0 and s.hop == 0 and len(s.audio16.data) == 0


def test_restart_switches_task_and_discards_the_job_in_flight():
    geometry, cfg = Geometry.from_config(SMALL), EngineConfig()
    processor = IdentityProcessor()
    s = _session(1, "se", geometry, cfg, None, processor, 24000, 24000)
    x = np.random.default_rng(5).standard_normal(24000 * 2).astype(np.float32)
    s.push(x)
    job = s.take_window()
    assert job is not None and job.task == "se"
    reference = processor.prepare_reference(np.zeros(16000, np.float32), np.zeros(24000, np.float32))
    with pytest.raises(ValueError, match="reference is required"):
        s.restart("vc", TaskDecoding(), None)
    s.set_mix(0.0, bypass=True)
    s.restart("vc", TaskDecoding(), reference)
    [result] = processor.run([job])
    s.complete(job, result, 0.01)  # taken before the restart: ignored
    assert s.hop == 0 and s.output_samples == 0 and not s.in_flight
    assert s.spec.task == "vc" and s.reference is reference and s.wet == 0.0  # mix/bypass survive
    y = np.random.default_rng(6).standard_normal(24000 * 2).astype(np.float32)
    engine = Engine(processor, cfg)
    engine.add(s)
    s.push(y)
    s.finish()
    while engine.step():
        pass
    out = s.read_output()
    assert np.array_equal(out, y)  # the new stream only: no audio of the old one, exact length
    with pytest.raises(SessionClosed):
        s.restart("se", TaskDecoding(), None)
