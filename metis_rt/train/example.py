"""What the training data pipeline yields and every trainer consumes: one (clean, degraded) example.

All audio is mono float32 at 16 kHz (``*_16k``, the SSL feature rate) or 24 kHz (``*_24k``, the acoustic codec
rate). The 24 kHz target is the same speech as ``clean_16k`` (rendered or resampled from the same source), so
semantic and acoustic targets stay aligned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TASKS = ("se", "tse", "vc", "clean")  # "clean": no degradation (pre-training of codecs, SSL, base, S2A)


@dataclass(frozen=True)
class Example:
    task: str  # one of TASKS
    clean_16k: np.ndarray  # [N] the target speech
    clean_24k: np.ndarray  # [M] the same speech at 24 kHz (M = N * 3 / 2)
    degraded_16k: np.ndarray  # [N] the model input: noisy / mixture (se, tse), the source speech (vc), = clean (clean)
    reference_16k: np.ndarray | None = None  # tse: enrollment of the target speaker; vc: the target voice
    reference_24k: np.ndarray | None = None  # the same reference at 24 kHz
    speaker: str = ""  # the clean speech's speaker id (never an evaluation speaker)
    meta: dict = field(default_factory=dict)  # what was done to it (snr_db, rir, band limit, ...), for inspection
