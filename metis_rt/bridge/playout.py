"""What the sound card pulls: a jitter buffer plus a click-free fade (pure: numpy and a lock, no I/O).

The bridge's output device (the virtual microphone) must never click: not when the stream starts, not when it
stops, not when the network or the engine let the buffer run dry and playback resumes. :class:`Fader` is a gain
that moves linearly towards its target (1 = playing, 0 = silent) by at most ``1 / fade_samples`` per sample;
:class:`Playout` applies it to what the jitter buffer yields:

- start: the gain starts at 0, so the first audio fades in over ``fade_ms``;
- buffer ran dry (underrun, or still prefilling): the gain drops to 0 with the audio, so the resumed audio fades
  in again instead of starting mid-waveform at full level;
- stop: :meth:`Playout.fade_out` sets the target to 0; :attr:`Playout.silent` turns true once the gain reached 0,
  after which the device can be closed without a click.
"""

from __future__ import annotations

import threading

import numpy as np

from metis_rt.clients.jitter import JitterBuffer

DEFAULT_FADE_MS = 20.0


class Fader:
    """A gain that ramps linearly towards ``target`` at ``1 / fade_samples`` per sample."""

    def __init__(self, fade_samples: int, level: float = 0.0, target: float = 1.0):
        if fade_samples < 1:
            raise ValueError(f"fade_samples must be at least 1, got {fade_samples}")
        self.step = 1.0 / fade_samples
        self.level = float(level)
        self.target = float(target)

    def gains(self, n: int) -> np.ndarray:
        """The next ``n`` per-sample gains (float32); advances the level."""
        distance = self.target - self.level
        ramp_len = min(n, int(np.ceil(abs(distance) / self.step - 1e-9)))
        out = np.full(n, self.target, dtype=np.float32)
        if ramp_len > 0:
            direction = 1.0 if distance > 0 else -1.0
            ramp = self.level + direction * self.step * np.arange(1, ramp_len + 1)
            out[:ramp_len] = np.clip(ramp, min(self.level, self.target), max(self.level, self.target))
        self.level = float(out[-1]) if n else self.level
        return out


class Playout:
    """Jitter buffer + fader for one output device. One writer thread, one reader (the audio callback)."""

    def __init__(self, rate: int, capacity_ms: float, prefill_ms: float, fade_ms: float = DEFAULT_FADE_MS):
        self.rate = rate
        self.jitter = JitterBuffer.from_ms(rate, capacity_ms, prefill_ms)
        self.fader = Fader(max(1, round(rate * fade_ms / 1000)))
        self._lock = threading.Lock()
        self._stopping = False

    def write(self, samples: np.ndarray) -> int:
        return self.jitter.write(samples)

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` (1-D float32) with faded audio; returns how many samples were real audio."""
        real = self.jitter.read_into(out)
        with self._lock:
            if real:
                out[:real] *= self.fader.gains(real)
            if real < len(out):  # dry or prefilling: silence, and the next audio fades in
                self.fader.level = 0.0
        return real

    def fade_out(self) -> None:
        with self._lock:
            self._stopping = True
            self.fader.target = 0.0

    @property
    def silent(self) -> bool:
        """True once a fade-out has completed (or nothing is playing): closing the device now cannot click."""
        with self._lock:
            return self._stopping and self.fader.level == 0.0

    @property
    def depth_ms(self) -> float:
        return self.jitter.depth_samples * 1000 / self.rate
