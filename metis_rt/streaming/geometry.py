"""Window geometry of the stream: ``[left context | chunk | lookahead]`` in 20 ms frames, hop = chunk.

This module is the one place that computes the algorithmic latency; every other component asks it. Pure code.

Frame f covers [20 f, 20 f + 20) ms: semantic token f (50 Hz), acoustic frame f (480 samples at 24 kHz, the
codec's hop) and output samples [480 f, 480 f + 480). The w2v-BERT input frame f is a stacked pair of 25 ms
fbank windows and spans 35 ms of 16 kHz audio ``[320 f, 320 f + 560)``: computing the features of frames
``[a, b)`` needs the audio ``[320 a, 320 b + 240)`` — the 15 ms *feature framing* beyond the last frame.

Hop k emits output frames ``[kC, (k+1)C)``. It runs once the input reaches frame ``(k+1)C + A`` plus the
feature framing, so the first sample of every chunk leaves ``C + A`` frames + 15 ms after it arrived: that is the
algorithmic latency (compute time and transport come on top).
"""

from __future__ import annotations

from dataclasses import dataclass

FRAME_MS = 20
SSL_RATE = 16000
CODEC_RATE = 24000
SSL_FRAME_SAMPLES = SSL_RATE * FRAME_MS // 1000  # 320
CODEC_FRAME_SAMPLES = CODEC_RATE * FRAME_MS // 1000  # 480
FEATURE_FRAMING_SAMPLES = 240  # 16 kHz samples past the last frame needed by the 25 ms / stacked-pair fbank
FEATURE_FRAMING_MS = FEATURE_FRAMING_SAMPLES * 1000 / SSL_RATE  # 15 ms


@dataclass(frozen=True)
class GeometryConfig:
    """Stream window sizes in milliseconds (multiples of 20 ms)."""

    chunk_ms: int = 240
    lookahead_ms: int = 160
    left_context_ms: int = 1600  # stage-1 prompt prefix and SSL context
    s2a_left_context_ms: int = 1600  # acoustic prompt prefix of S2A (<= left_context_ms)
    decoder_left_context_ms: int = 400  # acoustic frames decoded before the chunk (<= s2a_left_context_ms)
    crossfade_ms: int = 20  # join of consecutive chunks (<= lookahead_ms)


@dataclass(frozen=True)
class Geometry:
    chunk: int  # frames
    lookahead: int
    left: int
    s2a_left: int
    decoder_left: int
    crossfade_samples: int  # at 24 kHz

    @classmethod
    def from_config(cls, cfg: GeometryConfig) -> Geometry:
        frames = {}
        for name in ("chunk_ms", "lookahead_ms", "left_context_ms", "s2a_left_context_ms", "decoder_left_context_ms"):
            value = getattr(cfg, name)
            if value < 0 or value % FRAME_MS:
                raise ValueError(f"{name}={value}: must be a non-negative multiple of {FRAME_MS} ms")
            frames[name] = value // FRAME_MS
        if frames["chunk_ms"] < 1:
            raise ValueError("chunk_ms must be at least one 20 ms frame")
        if not frames["decoder_left_context_ms"] <= frames["s2a_left_context_ms"] <= frames["left_context_ms"]:
            raise ValueError("need decoder_left_context_ms <= s2a_left_context_ms <= left_context_ms")
        if not 0 <= cfg.crossfade_ms <= min(cfg.lookahead_ms, cfg.chunk_ms):
            raise ValueError(f"crossfade_ms={cfg.crossfade_ms} must lie in [0, min(lookahead_ms, chunk_ms)]")
        return cls(
            chunk=frames["chunk_ms"],
            lookahead=frames["lookahead_ms"],
            left=frames["left_context_ms"],
            s2a_left=frames["s2a_left_context_ms"],
            decoder_left=frames["decoder_left_context_ms"],
            crossfade_samples=cfg.crossfade_ms * CODEC_RATE // 1000,
        )

    @property
    def chunk_ms(self) -> int:
        return self.chunk * FRAME_MS

    # --- latency --------------------------------------------------------------------------------
    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: chunk + lookahead + feature framing."""
        return (self.chunk + self.lookahead) * FRAME_MS + FEATURE_FRAMING_MS

    def latency_samples(self, rate: int) -> int:
        """The algorithmic latency in samples at ``rate`` (exact for 16 and 24 kHz)."""
        return round(self.latency_ms * rate / 1000)

    # --- per hop --------------------------------------------------------------------------------
    def chunk_start(self, hop: int) -> int:
        """First frame emitted by ``hop``."""
        return hop * self.chunk

    def window(self, hop: int) -> tuple[int, int, int]:
        """(left frames actually available, first window frame, end frame) of ``hop``.

        The window is ``[start, end)`` with ``end = (hop+1) C + A``; left context is shorter at stream start.
        """
        start_chunk = self.chunk_start(hop)
        left = min(self.left, start_chunk)
        return left, start_chunk - left, start_chunk + self.chunk + self.lookahead

    def ssl_samples_needed(self, hop: int) -> int:
        """16 kHz samples (from stream start) that must have arrived before ``hop`` can run."""
        return self.window(hop)[2] * SSL_FRAME_SAMPLES + FEATURE_FRAMING_SAMPLES

    def ssl_window_samples(self, hop: int) -> tuple[int, int]:
        """[first, end) 16 kHz sample range fed to the feature extractor for ``hop``."""
        _, start, end = self.window(hop)
        return start * SSL_FRAME_SAMPLES, end * SSL_FRAME_SAMPLES + FEATURE_FRAMING_SAMPLES

    @property
    def history_frames(self) -> int:
        """Frames of committed tokens / audio a session must keep before the current chunk."""
        return self.left
