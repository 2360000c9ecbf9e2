"""Stand-ins for the frame-wise denoisers (tests only): the FrameDenoiser contract, deterministic and stateful."""

from __future__ import annotations

import time

import numpy as np


class DelayFilter:
    """Output n = g * one-pole low-pass(input)[n - latency] with g = 1 at strength 0 (pure delay) and state carried
    across calls, so a session that cut or re-ordered frames would show. ``sleep_s`` per frame simulates load."""

    name = "fake"
    sample_rate = 48000
    frame_samples = 480

    def __init__(self, latency_samples: int = 960, sleep_s: float = 0.0):
        self.latency_samples = latency_samples
        self.sleep_s = sleep_s
        self.strength_db = 100.0
        self.calls = 0
        self.reset()

    def reset(self) -> None:
        self.history = np.zeros(self.latency_samples, dtype=np.float64)
        self.state = 0.0

    def set_strength(self, attenuation_limit_db: float) -> None:
        if not 0.0 <= attenuation_limit_db <= 100.0:
            raise ValueError(attenuation_limit_db)
        self.strength_db = attenuation_limit_db

    def process(self, frames: np.ndarray) -> np.ndarray:
        assert len(frames) % self.frame_samples == 0, len(frames)
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s * len(frames) / self.frame_samples)
        x = frames.astype(np.float64)
        if self.strength_db > 0:
            y = np.empty_like(x)
            for i, v in enumerate(x):
                self.state = 0.7 * self.state + 0.3 * v
                y[i] = 0.5 * self.state
            x = y
        joined = np.concatenate([self.history, x])
        self.history = joined[len(joined) - self.latency_samples :] if self.latency_samples else joined[:0]
        return joined[: len(x)].astype(np.float32)
