"""Training rows cut from examples: whole utterances (the offline regime) or the streaming engine's windows.

Utterance mode (as offline inference, ``pipeline/offline.py``):
  SE      condition = ssl(degraded crop); ids = tokens(clean crop)
  TSE/VC  condition = ssl(reference ++ degraded crop) (one pass, as offline); ids = tokens(reference) ++ tokens(clean)
  prompt  the reference (TSE/VC), plus with probability ``prefix_prob`` a random clean prefix of the target of
          ``randint(min(T // 4, 5), int(0.4 T))`` frames (the official random-prompt rule).

Streaming mode (as ``streaming/processor.py`` for hop k of ``streaming/geometry.py``):
  window  ``[left | chunk | lookahead]`` with ``left, start, end = geometry.window(k)``, k uniform over the hops
          whose window fits in the example (so short left contexts occur as often as at a stream's start)
  condition = ssl(degraded[ssl_window_samples(k)]) (CMVN and w2v-BERT over the window, as the engine);
          TSE/VC: the reference's own features in front (``prepare_reference``'s frame alignment)
  ids     tokens of the whole clean utterance over ``[start, end)``: the left part stands in for the emitted tokens
          the engine feeds as prompt (the model's own emissions would need a decoding pass per window); TSE/VC: the
          reference's tokens in front
  prompt  reference + left context; the target is chunk + lookahead (C + A frames).

In both modes, with probability ``prompt_drop_prob`` the prompt rows are removed altogether (ids and condition),
which is what classifier-free guidance's unconditional branch sees.

Rows are made in two steps so that a batch's audio shares w2v-BERT passes: :func:`plan_utterance` /
:func:`plan_window` draw every random choice (global torch generator, seeded and checkpointed by the loop) and name
the audio to featurise; :func:`build_rows` featurises all plans' audio together and assembles the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from metis_rt.streaming.geometry import (
    CODEC_FRAME_SAMPLES,
    FEATURE_FRAMING_SAMPLES,
    SSL_FRAME_SAMPLES,
    Geometry,
)
from metis_rt.train.example import Example
from metis_rt.train.objective import Segment

REFERENCE_TASKS = ("tse", "vc")
SPEECH_SAMPLES_KEY = "speech_samples_16k"  # data.py: unpadded length of a zero-padded crop (Example.meta)
REFERENCE_SAMPLES_KEY = "reference_samples_16k"
PREFIX_MIN_FRAMES = 5  # official rule: prefix ~ randint(min(T // 4, 5), int(0.4 T))
PREFIX_MAX_FRACTION = 0.4
FBANK_WINDOW, FBANK_HOP = 400, 160  # the w2v-BERT extractor's 25 ms / 10 ms frames; two frames per feature


class Featurizer(Protocol):
    """The frozen feature side, batched: 16 kHz audio [N_i] -> normalised SSL features [T_i, D] -> tokens [T_i]."""

    def features_many(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]: ...

    def quantize_many(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...


@dataclass(frozen=True)
class SegmentPolicy:
    max_frames: int = 500
    max_reference_frames: int = 250
    prompt_drop_prob: float = 0.15
    prefix_prob: float = 1.0


@dataclass(frozen=True)
class RowPlan:
    """What one row needs, all random choices made.

    ids       = tokens(reference_audio) (if any) ++ tokens(clean_audio)[token_span]
    condition = features(reference_audio) (if ``reference_features``) ++ features(condition_audio)[condition_skip:]
                (as many rows as ids need)
    prompt    = ``prompt`` frames of the clean part, plus the whole reference
    """

    condition_audio: np.ndarray
    clean_audio: np.ndarray
    token_span: tuple[int, int]
    prompt: int
    condition_skip: int = 0
    reference_audio: np.ndarray | None = None
    reference_features: bool = False


def _chance(p: float) -> bool:
    return p > 0 and float(torch.rand(())) < p


def _randint(low: int, high: int) -> int:
    """Uniform in [low, high)."""
    return int(torch.randint(low, high, ()))


def ssl_frames(samples: int) -> int:
    """Feature frames the extractor gives for ``samples`` of audio: ``ceil(n_fbank / 2)``."""
    fbank = 0 if samples < FBANK_WINDOW else 1 + (samples - FBANK_WINDOW) // FBANK_HOP
    return (fbank + 1) // 2


def frames_in(samples: int) -> int:
    """Whole 20 ms frames whose SSL features the audio covers (with the 15 ms feature framing)."""
    return max(0, (samples - FEATURE_FRAMING_SAMPLES) // SSL_FRAME_SAMPLES)


def crop_span(samples: int, max_frames: int) -> tuple[int, int]:
    """A random frame-aligned [first, end) sample span of at most ``max_frames`` frames (+ feature framing)."""
    frames = frames_in(samples)
    if frames <= max_frames:
        return 0, samples
    start = _randint(0, frames - max_frames + 1)
    return start * SSL_FRAME_SAMPLES, (start + max_frames) * SSL_FRAME_SAMPLES + FEATURE_FRAMING_SAMPLES


def prefix_length(target: int) -> int:
    """The official random prompt length for a target of ``target`` frames (0 when it is too short)."""
    low, high = min(target // 4, PREFIX_MIN_FRAMES), int(target * PREFIX_MAX_FRACTION)
    return _randint(low, high) if high > low else 0


def _f32(wav: np.ndarray) -> np.ndarray:
    return np.asarray(wav, dtype=np.float32)


def speech(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """(clean, degraded) 16 kHz without the zero padding a fixed-length crop may carry."""
    n = int(example.meta.get(SPEECH_SAMPLES_KEY, len(example.degraded_16k)))
    return _f32(example.clean_16k[:n]), _f32(example.degraded_16k[:n])


def reference(example: Example) -> tuple[np.ndarray, np.ndarray | None]:
    """(16 kHz, 24 kHz or None) reference without its zero padding."""
    if example.reference_16k is None:
        raise ValueError(f"a {example.task!r} example needs reference_16k (the target speaker's enrollment)")
    n = int(example.meta.get(REFERENCE_SAMPLES_KEY, len(example.reference_16k)))
    ref_24k = None if example.reference_24k is None else _f32(example.reference_24k[: n * 3 // 2])
    return _f32(example.reference_16k[:n]), ref_24k


# ----------------------------------------------------------------------------- planning (random choices)
def plan_utterance(example: Example, policy: SegmentPolicy) -> RowPlan | None:
    """A whole-utterance row (see the module docstring); None when nothing would be left to predict."""
    clean, degraded = speech(example)
    first, end = crop_span(len(degraded), policy.max_frames)
    clean, degraded = clean[first:end], degraded[first:end]
    if frames_in(len(degraded)) < 2:
        return None
    drop = _chance(policy.prompt_drop_prob)
    ref, cond_audio, ref_frames = None, degraded, 0
    if example.task in REFERENCE_TASKS:
        ref = reference(example)[0]
        ref_first, ref_end = crop_span(len(ref), policy.max_reference_frames)
        ref = ref[ref_first:ref_end]
        cond_audio, ref_frames = np.concatenate([ref, degraded]), ssl_frames(len(ref))
    target = min(ssl_frames(len(cond_audio)) - ref_frames, ssl_frames(len(clean)))
    if target < 1:
        return None
    if drop:  # no prompt: the reference rows leave the condition too (the CFG branch's view)
        return RowPlan(cond_audio, clean, (0, target), 0, condition_skip=ref_frames)
    prefix = prefix_length(target) if _chance(policy.prefix_prob) else 0
    return RowPlan(cond_audio, clean, (0, target), prefix, reference_audio=ref)


def streaming_hops(frames: int, geometry: Geometry) -> int:
    """Hops whose whole window ``[.. | chunk | lookahead]`` lies within ``frames`` frames."""
    return max(0, (frames - geometry.lookahead) // geometry.chunk)


def reference_window(ref_16k: np.ndarray, ref_24k: np.ndarray | None, max_frames: int) -> np.ndarray:
    """The reference cut to whole frames (+ framing) as ``MetisWindowProcessor.prepare_reference`` cuts it."""
    frames = frames_in(len(ref_16k))
    if ref_24k is not None:
        frames = min(frames, len(ref_24k) // CODEC_FRAME_SAMPLES)
    frames = min(frames, max_frames)
    if frames < 1:
        raise ValueError("the reference is shorter than one frame")
    return ref_16k[: frames * SSL_FRAME_SAMPLES + FEATURE_FRAMING_SAMPLES]


def plan_window(example: Example, geometry: Geometry, policy: SegmentPolicy, hop: int | None = None) -> RowPlan | None:
    """One engine-shaped window of hop ``hop`` (default: uniform over the hops that fit); see the module docstring.

    None when the example is shorter than one window.
    """
    clean, degraded = speech(example)
    hops = streaming_hops(frames_in(len(degraded)), geometry)
    if hops < 1:
        return None
    if hop is None:
        hop = _randint(0, hops)
    elif not 0 <= hop < hops:
        raise ValueError(f"hop {hop} does not fit in an example of {hops} hops")
    left, start, end = geometry.window(hop)
    first, last = geometry.ssl_window_samples(hop)
    window = degraded[first:last]
    if _chance(policy.prompt_drop_prob):
        return RowPlan(window, clean, (start + left, end), 0, condition_skip=left)
    ref = None
    if example.task in REFERENCE_TASKS:
        ref = reference_window(*reference(example), policy.max_reference_frames)
    return RowPlan(window, clean, (start, end), left, reference_audio=ref, reference_features=True)


# ----------------------------------------------------------------------------- featurising and assembling
def build_rows(plans: Sequence[RowPlan], feat: Featurizer) -> list[Segment]:
    """Featurise every plan's audio in shared passes and assemble the rows (same order as ``plans``)."""
    refs = [i for i, p in enumerate(plans) if p.reference_audio is not None]
    wavs = [p.condition_audio for p in plans] + [p.clean_audio for p in plans]
    features = feat.features_many(wavs + [plans[i].reference_audio for i in refs])
    tokens = feat.quantize_many(features[len(plans) :])
    clean_tokens, ref_tokens = tokens[: len(plans)], dict(zip(refs, tokens[len(plans) :], strict=True))
    ref_features = dict(zip(refs, features[2 * len(plans) :], strict=True))
    return [
        _assemble(p, features[i], clean_tokens[i], ref_tokens.get(i), ref_features.get(i)) for i, p in enumerate(plans)
    ]


def _assemble(plan: RowPlan, condition, clean_tokens, ref_tokens, ref_features) -> Segment:
    a, b = plan.token_span
    ids = clean_tokens[a:b]
    rows = condition[plan.condition_skip : plan.condition_skip + (b - a)]
    prompt = plan.prompt
    if ref_tokens is not None:
        ids = torch.cat([ref_tokens, ids])
        prompt += len(ref_tokens)
        # separate reference features (stream), or one pass over reference ++ source whose rows lead (utterance)
        rows = torch.cat([ref_features, rows]) if plan.reference_features else condition[: len(ids)]
    if len(ids) != len(rows) or b > len(clean_tokens):
        raise ValueError(
            f"row assembly: {len(ids)} token frames (span {a}:{b} of {len(clean_tokens)}) but {len(rows)} condition "
            "frames; the audio lengths do not follow the 20 ms frame grid"
        )
    return Segment(ids, rows, prompt)


def utterance_segment(example: Example, feat: Featurizer, policy: SegmentPolicy) -> Segment | None:
    """One whole-utterance row (:func:`plan_utterance` + :func:`build_rows`)."""
    plan = plan_utterance(example, policy)
    return None if plan is None else build_rows([plan], feat)[0]


def streaming_segment(
    example: Example, feat: Featurizer, geometry: Geometry, policy: SegmentPolicy, hop: int | None = None
) -> Segment | None:
    """One engine-shaped window row (:func:`plan_window` + :func:`build_rows`)."""
    plan = plan_window(example, geometry, policy, hop)
    return None if plan is None else build_rows([plan], feat)[0]
