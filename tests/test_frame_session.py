"""The engine contract with a frame-wise denoiser: accounting, exact latency, streaming == offline, mix, overload.

A deterministic stand-in (tests/fake_denoisers.py) replaces DeepFilterNet3 so every property is checked to the
sample; tests/test_denoisers.py and the server / bridge tests run the real package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metis_rt.streaming.config import EngineConfig
from metis_rt.streaming.frame_session import (
    FrameSession,
    FrameSpec,
    denoise,
    frame_engine,
    run_until_idle,
)
from metis_rt.streaming.simulate import simulate
from tests.fake_denoisers import DelayFilter


def noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def session(rate=48000, out_rate=None, latency=960, strength=100.0, cfg=None, **kw) -> FrameSession:
    spec = FrameSpec("se", rate, out_rate or rate, "fake")
    return FrameSession(1, spec, DelayFilter(latency), cfg or EngineConfig(), strength_db=strength, **kw)


@pytest.mark.parametrize("latency", [0, 480, 960, 700])
def test_strength_zero_returns_the_input_aligned_and_latency_is_exact(latency):
    """Pushing one sample at a time: every input sample comes out unchanged at its own position, and the longest
    wait (input samples that arrived between a sample and its output) equals the declared latency exactly."""
    x = noise(0.1, 48000)
    s = session(latency=latency, strength=0.0)
    emitted_after: list[int] = []  # output samples available after each push
    out = []
    for i in range(len(x)):
        s.push(x[i : i + 1])
        run_until_idle(s)
        out.append(s.read_output())
        emitted_after.append(sum(map(len, out)))
    s.finish()
    run_until_idle(s)
    out.append(s.read_output())
    y = np.concatenate(out)
    assert s.done and len(y) == len(x)
    np.testing.assert_array_equal(y, x)
    counts = np.asarray(emitted_after)
    # sample m is out after push number first_push[m] (1-based); it arrived with push m + 1
    first_push = np.searchsorted(counts, np.arange(counts[-1]) + 1) + 1
    waits = first_push - np.arange(counts[-1])
    assert waits.max() == s.latency_native_samples
    assert s.latency_ms == pytest.approx(s.latency_native_samples / 48)
    assert s.latency_native_samples == latency + 480


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_output_lasts_exactly_as_long_as_the_input(rate):
    for seconds in (0.0, 0.003, 0.5, 1.237):
        x = noise(seconds, rate)
        assert len(denoise(DelayFilter(), x, rate)) == len(x)
        assert len(denoise(DelayFilter(), x, rate, output_rate=24000)) == round(len(x) * 24000 / rate)


def test_48k_is_not_resampled():
    s = session(rate=48000)
    assert s._in.passthrough and s._out.passthrough
    assert s.latency_ms == pytest.approx(s.latency_native_samples / 48)
    assert not session(rate=16000)._in.passthrough


@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_streaming_equals_offline(rate):
    """10 / 37 / 500 ms packets through the engine thread give the samples of one offline pass."""
    x = noise(1.3, rate, seed=3)
    offline = denoise(DelayFilter(), x, rate)
    assert np.abs(offline).max() > 0.01
    for packet_ms in (10, 37, 500):
        s = session(rate=rate)
        engine = frame_engine(EngineConfig())
        engine.add(s)
        engine.start()
        try:
            y, report = simulate(engine, s, x, packet_ms)
        finally:
            engine.stop()
        assert report.dropped_ms == 0
        np.testing.assert_array_equal(y, offline, err_msg=f"{packet_ms} ms packets at {rate} Hz")


def test_mix_and_bypass_ramp_between_processed_and_dry():
    x = noise(0.6, 48000, seed=1)
    wet = denoise(DelayFilter(), x, 48000)
    s = session()
    s.set_mix(0.0, bypass=True)
    s.push(x)
    s.finish()
    run_until_idle(s)
    np.testing.assert_allclose(s.read_output(), x, atol=1e-6)  # bypass from the start: the dry input, aligned

    s = session()
    half = 24000
    s.push(x[:half])
    run_until_idle(s)
    s.set_mix(0.5)
    s.push(x[half:])
    s.finish()
    run_until_idle(s)
    y = s.read_output()
    np.testing.assert_array_equal(y[:4800], wet[:4800])  # before the change: processed only
    np.testing.assert_allclose(y[-900:], 0.5 * wet[-900:] + 0.5 * x[-900:], atol=1e-6)  # after the ramp block


def test_overload_drops_stale_frames_and_keeps_delay_bounded():
    """Input the engine did not take within max_backlog_ms is cut in whole frames (counted); the output still lasts
    as long as the input minus what was dropped."""
    cfg = EngineConfig(max_backlog_ms=100, max_buffer_ms=300)
    s = session(cfg=cfg)
    x = noise(1.0, 48000)
    packet = 480
    for i, t in enumerate(range(0, len(x), packet)):  # 10 ms packets arriving on time, nobody processing
        s.push(x[t : t + packet], now=i * 0.01)
        assert s.audio.end - s.taken <= 0.1 * 48000 + 2 * packet  # bounded by the backlog rule
    assert s.metrics.dropped_ms > 0
    dropped = s.dropped
    assert dropped % 480 == 0 and dropped * 1000 / 48000 == pytest.approx(s.metrics.dropped_ms)
    s.finish()
    run_until_idle(s)
    assert len(s.read_output()) == len(x) - dropped


def test_a_burst_is_not_overload():
    s = session(cfg=EngineConfig(max_backlog_ms=100))
    s.push(noise(0.5, 48000), now=0.0)  # one 500 ms packet
    s.push(noise(0.01, 48000), now=0.05)
    assert s.metrics.dropped_ms == 0


def test_reset_starts_a_fresh_stream_on_the_engine_thread():
    x = noise(0.4, 48000)
    s = session()
    for _ in range(2):
        s.push(x)
        s.finish()
        run_until_idle(s)
        y = s.read_output()
        np.testing.assert_array_equal(y, denoise(DelayFilter(), x, 48000))
        s.reset()  # the denoiser's own reset happens with the next job, on the engine thread


@pytest.mark.parametrize("bad", [-1, 100.5, "20", True, float("nan")])
def test_strength_out_of_range_is_refused(bad):
    s = session()
    with pytest.raises(ValueError, match="strength"):
        s.set_strength(bad)
    assert s.strength_db == 100.0


def test_strength_reaches_the_denoiser_with_the_next_frames():
    x = noise(0.3, 48000)
    s = session()
    s.set_strength(0.0)
    s.push(x)
    s.finish()
    run_until_idle(s)
    np.testing.assert_array_equal(s.read_output(), x)
    assert s.denoiser.strength_db == 0.0


def test_only_se():
    with pytest.raises(ValueError, match="only denoises"):
        FrameSession(1, FrameSpec("tse", 48000, 48000, "fake"), DelayFilter(), EngineConfig())
    with pytest.raises(ValueError, match="only denoises"):
        session().restart("vc")


# ----------------------------------------------------------------------------- the real DeepFilterNet3
NOISY = Path(__file__).resolve().parents[1] / "examples" / "speech_noisy.wav"


@pytest.mark.parametrize("rate", [48000, 16000])
def test_deepfilternet3_streaming_equals_offline(rate):
    from metis_rt.audio.files import load_for_model
    from metis_rt.denoisers import open_denoiser

    x = load_for_model(NOISY, rates=(rate,), min_seconds=1.0)[rate][: int(1.5 * rate)].astype(np.float32)
    offline = denoise(open_denoiser("deepfilternet3"), x, rate)
    assert len(offline) == len(x) and np.abs(offline).max() > 0.01
    assert not np.allclose(offline, x, atol=1e-3)  # it did something
    for packet_ms in (10, 37, 500):
        spec = FrameSpec("se", rate, rate, "deepfilternet3")
        s = FrameSession(1, spec, open_denoiser("deepfilternet3"), EngineConfig())
        engine = frame_engine(EngineConfig())
        engine.add(s)
        engine.start()
        try:
            y, report = simulate(engine, s, x, packet_ms)
        finally:
            engine.stop()
        assert report.dropped_ms == 0
        np.testing.assert_array_equal(y, offline, err_msg=f"{packet_ms} ms packets at {rate} Hz")
