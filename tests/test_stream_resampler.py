"""Low-latency streaming resampler: packet independence, exact length, fixed lookahead, frequency response."""

import numpy as np
import pytest

from metis_rt.audio.stream_resampler import StreamResampler

PAIRS = [(48000, 16000), (44100, 16000), (16000, 24000), (24000, 16000), (8000, 24000), (22050, 24000)]


def _stream(rate_in, rate_out, x, packet):
    r = StreamResampler(rate_in, rate_out)
    parts = [r.push(x[i : i + packet]) for i in range(0, len(x), packet)]
    return np.concatenate([*parts, r.flush()])


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_output_is_independent_of_packets_and_has_the_right_length(rate_in, rate_out):
    x = np.random.default_rng(0).standard_normal(rate_in).astype(np.float32)
    outs = [_stream(rate_in, rate_out, x, p) for p in (1, 37, 1000, len(x))]
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    assert len(outs[0]) == -(-len(x) * rate_out // rate_in)


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_lookahead_is_fixed_and_inputs_needed_is_exact(rate_in, rate_out):
    r = StreamResampler(rate_in, rate_out)
    assert r.lookahead_s <= 0.0031  # 24 zero crossings at the lower rate: 1.5 ms at 16 kHz, 3 ms at 8 kHz
    x = np.zeros(rate_in // 2, dtype=np.float32)
    produced = 0
    for n in range(1, len(x) + 1):
        produced += len(r.push(x[n - 1 : n]))
        # the outputs available after n inputs are exactly those whose inputs_needed <= n
        assert r.inputs_needed(produced) <= n < r.inputs_needed(produced + 1)


@pytest.mark.parametrize(("rate_in", "rate_out"), [(48000, 16000), (16000, 24000), (44100, 16000)])
def test_passband_is_flat_and_aliases_are_suppressed(rate_in, rate_out):
    t = np.arange(rate_in) / rate_in
    nyquist = min(rate_in, rate_out) / 2

    def gain_db(freq):
        y = _stream(rate_in, rate_out, np.sin(2 * np.pi * freq * t).astype(np.float32), 4096)[400:-400]
        return 10 * np.log10(np.mean(y.astype(np.float64) ** 2) / 0.5)

    for frac in (0.05, 0.4, 0.8):
        assert abs(gain_db(frac * nyquist)) < 0.05
    if rate_out < rate_in:  # a tone above the output Nyquist frequency must not fold back
        assert gain_db(1.1 * nyquist) < -80


def test_sine_is_reproduced_in_phase():
    t_in, t_out = np.arange(48000) / 48000, np.arange(16000) / 16000
    y = _stream(48000, 16000, np.sin(2 * np.pi * 440 * t_in).astype(np.float32), 480)
    assert np.abs(y[200:-200] - np.sin(2 * np.pi * 440 * t_out)[200:-200]).max() < 1e-4  # content-aligned, no delay


def test_equal_rates_pass_through():
    r = StreamResampler(24000, 24000)
    x = np.arange(10, dtype=np.float32)
    assert np.array_equal(r.push(x), x) and len(r.flush()) == 0 and r.lookahead_s == 0
