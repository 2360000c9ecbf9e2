"""Segment planning for long offline inputs (pure code)."""

import numpy as np
import pytest

from metis_rt.pipeline.segments import plan_segments

SR = 16000


def test_short_input_is_one_segment():
    assert plan_segments(np.zeros(SR * 5), SR, max_segment_s=20) == [(0, SR * 5)]


def test_segments_cover_input_without_gaps_and_respect_the_limit():
    rng = np.random.default_rng(0)
    wav = rng.standard_normal(SR * 65)
    segs = plan_segments(wav, SR, max_segment_s=20, search_s=3)
    assert segs[0][0] == 0 and segs[-1][1] == len(wav)
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:], strict=False))
    assert all(0 < end - start <= 20 * SR for start, end in segs)
    assert len(segs) == 4


def test_cut_falls_into_the_pause():
    rng = np.random.default_rng(1)
    wav = rng.standard_normal(SR * 30)
    pause = slice(int(18.5 * SR), int(18.7 * SR))
    wav[pause] = 0.0
    (_, cut), _ = plan_segments(wav, SR, max_segment_s=20, search_s=3)
    assert pause.start <= cut < pause.stop


def test_search_window_must_be_shorter_than_segment():
    with pytest.raises(ValueError):
        plan_segments(np.zeros(SR), SR, max_segment_s=2, search_s=3)
