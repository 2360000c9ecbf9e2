"""Cutting long offline inputs into segments the whole-utterance models can take.

Metis attends over the whole input (cost grows with the square of its length), so ``metis-rt process`` runs
inputs longer than ``max_segment_s`` in pieces. Each cut is placed at the quietest 20 ms frame of the last
``search_s`` seconds before the limit, so boundaries fall into pauses where possible. Pure code.
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.02  # one model frame (semantic and acoustic tokens run at 50 Hz)
DEFAULT_MAX_SEGMENT_S = 20.0
DEFAULT_SEARCH_S = 3.0


def plan_segments(
    wav: np.ndarray,
    sample_rate: int,
    max_segment_s: float = DEFAULT_MAX_SEGMENT_S,
    search_s: float = DEFAULT_SEARCH_S,
) -> list[tuple[int, int]]:
    """[(start, end)] sample ranges covering ``wav`` [N] with no gap or overlap, each <= ``max_segment_s``."""
    if max_segment_s <= search_s:
        raise ValueError(f"max_segment_s ({max_segment_s}) must exceed search_s ({search_s})")
    n = len(wav)
    frame = int(round(FRAME_S * sample_rate))
    limit = int(max_segment_s * sample_rate) // frame * frame
    search = int(search_s * sample_rate) // frame * frame
    segments, start = [], 0
    while n - start > limit:
        cut = _quietest_frame(wav, start + limit - search, start + limit, frame)
        segments.append((start, cut))
        start = cut
    segments.append((start, n))
    return segments


def _quietest_frame(wav: np.ndarray, lo: int, hi: int, frame: int) -> int:
    """Middle of the lowest-energy frame of [lo, hi] (frames of ``frame`` samples)."""
    n_frames = (hi - lo) // frame
    if n_frames == 0:
        return hi
    frames = wav[lo : lo + n_frames * frame].reshape(n_frames, frame).astype(np.float64)
    best = int(np.argmin((frames**2).mean(axis=1)))
    return lo + best * frame + frame // 2
