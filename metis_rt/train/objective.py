"""The masked-token objective of Metis stage 1, shared by every fine-tuning mode (whole utterances, stream windows).

As MaskGCT / Metis train stage 1 (``forward_diffusion`` + ``loss_t``): per row ``t ~ U(0, 1)`` (clamped to 1e-5),
mask ratio ``max(sin(pi t / 2), 0.2)``, every non-prompt frame is masked independently with that probability (at
least one per row), the input is ``[cond_emb(prompt) ; mask_emb or cond_emb(token)] + cond_adapter(condition)``
over the whole row, and the loss is the cross-entropy of ``to_logit`` on the masked frames only (token-weighted
mean over the batch). The prompt frames are given and never scored.

Rows of a batch are right-padded; padded frames are masked out as attention keys and never scored (RoPE positions
of the real frames still start at 0, as in inference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metis_rt.models.stage1 import Stage1Model

MIN_TIMESTEP = 1e-5  # t is clamped to [MIN_TIMESTEP, 1] as in the official training
DEFAULT_MIN_MASK_RATIO = 0.2


@dataclass(frozen=True)
class Segment:
    """One training row: ``ids`` [L] int64 (prompt ++ target semantic tokens of the clean speech), ``condition``
    [L, D] (normalised SSL features over the same frames), ``prompt`` = how many leading frames are given."""

    ids: torch.Tensor
    condition: torch.Tensor
    prompt: int

    def __post_init__(self):
        if self.ids.dim() != 1 or self.condition.dim() != 2 or len(self.ids) != len(self.condition):
            raise ValueError(
                f"segment needs ids [L] and condition [L, D]; got {list(self.ids.shape)}, {list(self.condition.shape)}"
            )
        if not 0 <= self.prompt < len(self.ids):
            raise ValueError(f"prompt of {self.prompt} frames leaves no target in a segment of {len(self.ids)}")

    @property
    def target(self) -> int:
        return len(self.ids) - self.prompt


@dataclass
class MaskedBatch:
    """ids [B, L] int64; masked [B, L] bool (mask_emb in, scored); valid [B, L] bool (False = padding);
    condition [B, L, D]; t [B] float32; prompt [B] int64 (given frames per row)."""

    ids: torch.Tensor
    masked: torch.Tensor
    valid: torch.Tensor
    condition: torch.Tensor
    t: torch.Tensor
    prompt: torch.Tensor


def mask_ratio(t: torch.Tensor, min_ratio: float = DEFAULT_MIN_MASK_RATIO) -> torch.Tensor:
    """Cosine schedule: ``max(sin(pi t / 2), min_ratio)`` for t [B]."""
    return torch.clamp(torch.sin(t * math.pi / 2), min=min_ratio)


def sample_mask(length: int, prompt: int, ratio: float) -> torch.Tensor:
    """[length] bool: each target frame masked with probability ``ratio``; at least the first target frame."""
    mask = torch.rand(length) < ratio
    mask[:prompt] = False
    if not bool(mask.any()):
        mask[prompt] = True
    return mask


def collate(
    segments: Sequence[Segment],
    min_ratio: float = DEFAULT_MIN_MASK_RATIO,
    device: torch.device | str = "cpu",
) -> MaskedBatch:
    """Sample t and masks (global torch CPU generator, so a seed fixes them on any device) and right-pad."""
    if not segments:
        raise ValueError("cannot collate an empty list of segments")
    t = torch.rand(len(segments)).clamp(MIN_TIMESTEP, 1.0)
    ratios = mask_ratio(t, min_ratio)
    longest = max(len(s.ids) for s in segments)
    dim = segments[0].condition.shape[1]
    ids = torch.zeros(len(segments), longest, dtype=torch.long)
    masked = torch.zeros(len(segments), longest, dtype=torch.bool)
    valid = torch.zeros(len(segments), longest, dtype=torch.bool)
    condition = torch.zeros(len(segments), longest, dim, dtype=segments[0].condition.dtype, device=device)
    for row, seg in enumerate(segments):
        n = len(seg.ids)
        ids[row, :n] = seg.ids.cpu()
        masked[row, :n] = sample_mask(n, seg.prompt, float(ratios[row]))
        valid[row, :n] = True
        condition[row, :n] = seg.condition.to(device)
    prompt = torch.tensor([s.prompt for s in segments], dtype=torch.long)
    return MaskedBatch(ids.to(device), masked.to(device), valid.to(device), condition, t.to(device), prompt.to(device))


def masked_logits(model: Stage1Model, batch: MaskedBatch) -> torch.Tensor:
    """``to_logit`` of the masked frames only, [N_masked, V] (in the order of ``batch.masked.nonzero()``)."""
    if not model.has_adapter:
        raise ValueError("fine-tuning needs a stage-1 model with a condition adapter")
    x = model.target_rows(batch.ids, batch.masked)
    x = x + model.cond_adapter(batch.condition.to(x.dtype))
    key_mask = None if bool(batch.valid.all()) else batch.valid
    hidden = model.diff_estimator(x, batch.t, key_mask=key_mask)
    return model.to_logit(hidden[batch.masked])


def masked_token_loss(model: Stage1Model, batch: MaskedBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """(mean cross-entropy over masked frames, {"acc": token accuracy on them, "mask_frac": masked / target})."""
    logits = masked_logits(model, batch)
    targets = batch.ids[batch.masked]
    loss = F.cross_entropy(logits.float(), targets)
    with torch.no_grad():
        acc = (logits.argmax(dim=-1) == targets).float().mean()
        target_frames = (batch.valid.sum() - batch.prompt.sum()).clamp(min=1)
        frac = batch.masked.sum() / target_frames
    return loss, {"acc": float(acc), "mask_frac": float(frac)}
