"""What a session hands the engine for one hop, and what comes back. Plain data, no model code."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metis_rt.config import TaskDecoding
from metis_rt.models.decoding import NoiseSource


@dataclass(frozen=True)
class ReferenceTokens:
    """A target speaker's prompt, computed once per session (TSE/VC), all covering the same R frames, kept on the
    model device so no hop converts it again.

    semantic [R] int64, acoustic [R, Q] int64, features [R, D] float (normalised w2v-BERT features).
    """

    semantic: torch.Tensor
    acoustic: torch.Tensor
    features: torch.Tensor

    @property
    def frames(self) -> int:
        return len(self.semantic)


@dataclass(frozen=True)
class WindowJob:
    """One hop of one session. Frame counts: ``left`` (stage-1 prefix) + ``target`` (chunk + lookahead).

    audio_16k     [(left + target) * 320 + 240]  the SSL window (float32)
    dry_24k       [(decoder_left + target) * 480] the unprocessed input over the decoded span (float32)
    left_semantic [left]                          committed semantic tokens before the chunk (stage-1 prompt)
    s2a_semantic  [s2a_left]                      the last s2a_left of them (S2A condition prefix)
    s2a_acoustic  [s2a_left, Q]                   committed acoustic tokens (S2A prompt)
    decoder_acoustic [decoder_left, Q]            committed acoustic tokens decoded before the chunk
    """

    session_id: int
    hop: int
    task: str
    target: int
    audio_16k: np.ndarray
    dry_24k: np.ndarray
    left_semantic: np.ndarray
    s2a_semantic: np.ndarray
    s2a_acoustic: np.ndarray
    decoder_acoustic: np.ndarray
    reference: ReferenceTokens | None
    settings: TaskDecoding
    noise: NoiseSource
    generation: int = 0  # the session's stream generation when the job was taken (see StreamSession.restart)
    variant: str | None = None  # the stage-1 model (None: the task's own; "omni": Metis-Omni)

    @property
    def stage1_model(self) -> str:
        return self.variant or self.task

    @property
    def left(self) -> int:
        return len(self.left_semantic)

    @property
    def decoder_left(self) -> int:
        return len(self.decoder_acoustic)


@dataclass(frozen=True)
class WindowResult:
    """semantic [target], acoustic [target, Q] (new tokens), wav_24k [(decoder_left + target) * 480]."""

    semantic: np.ndarray
    acoustic: np.ndarray
    wav_24k: np.ndarray
