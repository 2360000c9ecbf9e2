"""Audio file I/O, resampling and input checks, on small generated signals."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

from metis_rt.audio import files
from metis_rt.audio.files import (
    AudioOutputError,
    load_for_model,
    read_audio,
    resample,
    to_mono,
    validate_speech,
    write_audio,
)
from metis_rt.errors import AudioInputError

SR_HZ = 24000
TONE_HZ = 440.0


def tone(seconds: float = 1.0, sr: int = SR_HZ, freq_hz: float = TONE_HZ, amp: float = 0.5) -> np.ndarray:
    t_s = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq_hz * t_s)).astype(np.float32)


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


# ----------------------------------------------------------------------------- round trips
def test_wav_round_trip_is_exact(tmp_path):
    x = tone()
    path = write_audio(tmp_path / "a.wav", x, SR_HZ)
    y, sr = read_audio(path)
    assert sr == SR_HZ and y.dtype == np.float32 and y.shape == (len(x), 1)
    np.testing.assert_array_equal(y[:, 0], x)


def test_flac_round_trip_within_24_bit(tmp_path):
    x = tone()
    y, sr = read_audio(write_audio(tmp_path / "sub/dir/a.flac", x, SR_HZ))
    assert sr == SR_HZ and y.shape == (len(x), 1)
    np.testing.assert_allclose(y[:, 0], x, atol=2.0**-22)


def test_ogg_round_trip_keeps_length_and_pitch(tmp_path):
    x = tone()
    y, sr = read_audio(write_audio(tmp_path / "a.ogg", x, SR_HZ))
    assert sr == SR_HZ and y.shape[1] == 1
    assert abs(len(y) - len(x)) <= 0.01 * SR_HZ
    assert dominant_hz(y[:, 0], sr) == pytest.approx(TONE_HZ, abs=2.0)
    assert np.corrcoef(y[: len(x), 0], x[: len(y)])[0, 1] > 0.99


def test_unsupported_output_extension(tmp_path):
    with pytest.raises(AudioOutputError, match=r"\.mp4.*\.wav"):
        write_audio(tmp_path / "a.mp4", tone(), SR_HZ)


# ----------------------------------------------------------------------------- mono / resampling
def test_stereo_to_mono(tmp_path):
    left, right = tone(amp=0.2), tone(amp=0.6)
    write_audio(tmp_path / "s.wav", np.stack([left, right], axis=1), SR_HZ)
    y, _ = read_audio(tmp_path / "s.wav")
    assert y.shape == (len(left), 2)
    mono = to_mono(y)
    assert mono.shape == (len(left),) and mono.dtype == np.float32
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-6)
    assert to_mono(mono) is mono


@pytest.mark.parametrize("sr_out", [16000, 24000])
def test_resample_length_and_frequency(sr_out):
    sr_in = 44100
    x = tone(seconds=2.0, sr=sr_in, freq_hz=1000.0)
    y = resample(x, sr_in, sr_out)
    assert y.dtype == np.float32
    assert abs(len(y) - 2 * sr_out) <= 1
    assert dominant_hz(y, sr_out) == pytest.approx(1000.0, abs=1.0)
    t_s = np.arange(len(y)) / sr_out
    ideal = 0.5 * np.sin(2 * np.pi * 1000.0 * t_s)
    mid = slice(sr_out // 10, -sr_out // 10)  # away from the edge transients
    np.testing.assert_allclose(y[mid], ideal[mid], atol=1e-3)


def test_resample_keeps_float64_and_same_rate_is_identity():
    x = tone(sr=44100).astype(np.float64)
    assert resample(x, 44100, 16000).dtype == np.float64
    assert resample(x, 16000, 16000) is x


def test_load_for_model_returns_mono_at_each_rate(tmp_path):
    stereo = np.stack([tone(1.5, 44100), tone(1.5, 44100)], axis=1)
    write_audio(tmp_path / "in.flac", stereo, 44100)
    out = load_for_model(tmp_path / "in.flac")
    assert sorted(out) == [16000, 24000]
    for sr, x in out.items():
        assert x.ndim == 1 and x.dtype == np.float32
        assert abs(len(x) - int(1.5 * sr)) <= 1
        assert dominant_hz(x, sr) == pytest.approx(TONE_HZ, abs=1.0)


# ----------------------------------------------------------------------------- bad inputs
def test_nan_is_rejected_with_position():
    x = tone()
    x[[1200, 5000]] = [np.nan, np.inf]
    with pytest.raises(AudioInputError, match=r"2 of \d+ sample.*NaN or Inf.*sample 1200 \(0\.050 s\)"):
        validate_speech(x, SR_HZ)


def test_too_short_says_duration_and_minimum():
    with pytest.raises(AudioInputError, match=r"0\.100 s .*at least 0\.5 s"):
        validate_speech(tone(0.1), SR_HZ, min_seconds=0.5, name="ref.wav")


def test_silence_says_peak_level():
    with pytest.raises(AudioInputError, match=r"-80\.0 dBFS.*silent"):
        validate_speech(tone(amp=1e-4), SR_HZ)
    with pytest.raises(AudioInputError, match=r"-inf dBFS"):
        validate_speech(np.zeros(SR_HZ, np.float32), SR_HZ)


def test_clipping_is_rejected_or_warned(caplog):
    x = np.clip(tone(amp=2.0), -1.0, 1.0)  # a sine driven 6 dB into clipping
    with pytest.raises(AudioInputError, match=r"% of the samples are clipped.*lower the input gain"):
        validate_speech(x, SR_HZ)
    with caplog.at_level(logging.WARNING, logger=files.__name__):
        validate_speech(x, SR_HZ, allow_clipped=True)
    assert "clipped" in caplog.text
    validate_speech(x, SR_HZ, max_clipped_fraction=0.9)


def test_a_little_clipping_is_fine():
    x = tone()
    x[:10] = 1.0  # 10 of 24000 samples
    validate_speech(x, SR_HZ)


def test_text_file_renamed_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n")
    with pytest.raises(AudioInputError, match=r"notes\.wav.*soundfile says.*Supported formats:.*WAV"):
        read_audio(path)


def test_missing_file(tmp_path):
    with pytest.raises(AudioInputError, match=r"does not exist"):
        load_for_model(tmp_path / "nope.wav")


def test_load_for_model_validates_once(tmp_path):
    sf.write(tmp_path / "quiet.wav", tone(amp=1e-5), SR_HZ)
    with pytest.raises(AudioInputError, match=r"quiet\.wav.*silent"):
        load_for_model(tmp_path / "quiet.wav")
