"""Low-latency streaming resampler: Kaiser-windowed sinc, polyphase, constant lookahead.

Why not soxr here: soxr's streaming resampler withholds 37-116 ms at its HQ/MQ presets (20 ms at LQ, whose passband
is poor) and the amount varies with the packet phase (measured; see bench/RESULTS.md). A live path wants a few ms
and a *fixed* delay, so that latency can be accounted exactly. This filter needs ``ZERO_CROSSINGS`` samples (at the
lower of the two rates) of future input per output sample: 1.5 ms at 16 kHz, whatever the packet sizes. Response:
flat to 0.8 x Nyquist, -3 dB at 0.9, stopband below -90 dB (tests/test_stream_resampler.py). Offline
file resampling keeps soxr (``metis_rt.audio.files``).

Output sample n sits at input time ``n * rate_in / rate_out`` (content-aligned: no delay in the signal itself, only
in when it can be computed). Output does not depend on how the input is cut into packets.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

ZERO_CROSSINGS = 24  # sinc lobes each side, counted at the lower of the two rates (1.5 ms)
CUTOFF = 0.92  # passband edge as a fraction of the lower Nyquist frequency
KAISER_BETA = 8.6  # ~85 dB side lobes


@lru_cache(maxsize=32)
def _phase_table(up: int, down: int, half: int, cutoff: float) -> np.ndarray:
    """W[p, k]: weight of input ``base - half + 1 + k`` for output phase p (fractional offset p / up)."""
    k = np.arange(2 * half)
    x = np.arange(up)[:, None] / up + half - 1 - k[None, :]  # t - j, in input samples
    fc = cutoff * 0.5 * min(1.0, up / down)  # cycles per input sample
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (x / half) ** 2, 0.0, 1.0))) / np.i0(KAISER_BETA)
    taps = 2 * fc * np.sinc(2 * fc * x) * window
    return taps / taps.sum(axis=1, keepdims=True)  # unit DC gain for every phase


class StreamResampler:
    """Mono float32 stream resampler with state; ``reset()`` starts a new stream. Equal rates pass through."""

    def __init__(self, rate_in: int, rate_out: int):
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
        self.rate_in, self.rate_out = rate_in, rate_out
        g = math.gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        self.half = 0 if self.passthrough else math.ceil(ZERO_CROSSINGS * rate_in / min(rate_in, rate_out))
        self.table = None if self.passthrough else _phase_table(self.up, self.down, self.half, CUTOFF)
        self.reset()

    @property
    def passthrough(self) -> bool:
        return self.rate_in == self.rate_out

    @property
    def lookahead_s(self) -> float:
        """Future input an output sample needs (the resampler's only delay)."""
        return self.half / self.rate_in

    def reset(self) -> None:
        self._buf = np.zeros(self.half, dtype=np.float64)  # input before the stream start is silence
        self._buf_start = -self.half  # input index of _buf[0]
        self._received = 0
        self._next = 0  # next output index

    def push(self, x: np.ndarray) -> np.ndarray:
        """x [N] -> the output samples that can be computed so far (float32)."""
        x = np.asarray(x, dtype=np.float32)
        if self.passthrough:
            return x.copy()
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        self._received += len(x)
        return self._emit(self._received - 1)

    def flush(self) -> np.ndarray:
        """The remaining outputs (input padded with silence); total = ceil(N * rate_out / rate_in)."""
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        total = -(-self._received * self.up // self.down)
        self._buf = np.concatenate([self._buf, np.zeros(self.half + 1)])
        return self._emit(self._received - 1 + self.half + 1, limit=total)

    def _emit(self, last_input: int, limit: int | None = None) -> np.ndarray:
        """Outputs n whose last needed input index ``floor(n*down/up) + half`` is <= ``last_input``."""
        n_stop = ((last_input - self.half) * self.up + self.up - 1) // self.down + 1 if last_input >= self.half else 0
        if limit is not None:
            n_stop = min(n_stop, limit)
        if n_stop <= self._next:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._next, n_stop)
        base = n * self.down // self.up
        index = base[:, None] + np.arange(-self.half + 1, self.half + 1)[None, :] - self._buf_start
        y = np.einsum("nk,nk->n", self.table[n * self.down % self.up], self._buf[index])
        self._next = n_stop
        keep_from = (n_stop * self.down // self.up) - self.half + 1 - self._buf_start
        if keep_from > 0:
            self._buf = self._buf[keep_from:]
            self._buf_start += keep_from
        return y.astype(np.float32)

    def inputs_needed(self, outputs: int) -> int:
        """How many input samples must have arrived before ``outputs`` output samples exist."""
        if self.passthrough or outputs <= 0:
            return max(outputs, 0)
        return (outputs - 1) * self.down // self.up + self.half + 1
