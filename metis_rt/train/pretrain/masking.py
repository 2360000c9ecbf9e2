"""Masked generative training shared by Metis stage 1 and MaskGCT S2A (MaskGCT ``forward_diffusion`` recipe).

Per row: ``t ~ U(1e-5, 1)``; mask ratio ``sin(pi t / 2)`` (at least ``min_mask_ratio``; stage 1: 0.2, S2A: 0) —
the inference schedule masks ``floor(sin(pi t / 2) T)`` tokens at step time ``t``, and ``t`` itself is the
denoiser's timestep input; with probability ``1 - no_prompt_prob`` a clean prefix of
``U{min(T // 4, 5) .. prompt_max_fraction * T - 1}`` frames is the prompt (never masked, no loss), otherwise no
prompt (the official ``cfg_scale`` 0.15: the unconditional branch of CFG); every other token is masked
independently with the row's ratio, at least one per row. Loss: cross-entropy on masked tokens only.

All draws happen here, on the data side (global torch RNG unless a generator is given), so that ``loss(batch)``
is a deterministic function of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metis_rt.models.transformer import AdaptiveRMSNorm

T_MIN = 1e-5
PROMPT_MIN_FRAMES = 5
INIT_STD = 0.02  # normal init of every Linear / Embedding (MaskGCT reset_parameters, HF Llama)
LAYER_SCHEDULES = ("linear", "cosine", "uniform")


@dataclass(frozen=True)
class TransformerSize:
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4


@dataclass(frozen=True)
class MaskingRecipe:
    no_prompt_prob: float = 0.15
    prompt_max_fraction: float = 0.4  # stage 1: 0.4, S2A: 0.5
    min_mask_ratio: float = 0.2  # stage 1: 0.2, S2A: 0.0


@dataclass
class MaskDraw:
    t: torch.Tensor  # [B] float32 timesteps
    is_prompt: torch.Tensor  # [B, T] bool
    mask: torch.Tensor  # [B, T] bool (loss positions)


def sample_masking(
    batch: int, frames: int, recipe: MaskingRecipe, generator: torch.Generator | None = None
) -> MaskDraw:
    t = torch.rand(batch, generator=generator).clamp(T_MIN, 1.0)
    ratio = torch.sin(t * math.pi / 2).clamp(min=recipe.min_mask_ratio)
    low = min(frames // 4, PROMPT_MIN_FRAMES)
    high = max(int(frames * recipe.prompt_max_fraction), low + 1)
    prompt_len = torch.randint(low, high, (batch,), generator=generator).clamp(max=frames - 1)
    no_prompt = torch.rand(batch, generator=generator) < recipe.no_prompt_prob
    prompt_len = torch.where(no_prompt, torch.zeros_like(prompt_len), prompt_len)
    is_prompt = torch.arange(frames)[None, :] < prompt_len[:, None]
    mask = (torch.rand(batch, frames, generator=generator) < ratio[:, None]) & ~is_prompt
    empty = ~mask.any(dim=1)
    mask[empty, prompt_len[empty]] = True
    return MaskDraw(t, is_prompt, mask)


def sample_layer(n_layers: int, schedule: str, include_first: bool, generator: torch.Generator | None = None) -> int:
    """The acoustic layer a batch trains (MaskGCT ``mask_layer``): weights decrease with depth.

    ``linear``: ``n - k``, ``cosine``: ``cos(k / n * pi / 2)``, ``uniform``: 1, for the k-th trainable layer;
    layer 0 is skipped unless ``include_first`` (the full S2A model: layer 0 comes from the 1-layer model).
    """
    first = 0 if include_first or n_layers == 1 else 1
    k = torch.arange(n_layers - first, dtype=torch.float64)
    if schedule == "linear":
        weights = n_layers - k
    elif schedule == "cosine":
        weights = torch.cos(k / n_layers * math.pi / 2)
    elif schedule == "uniform":
        weights = torch.ones_like(k)
    else:
        raise ValueError(f"unknown layer schedule {schedule!r}; expected one of {LAYER_SCHEDULES}")
    return first + int(torch.multinomial(weights, 1, generator=generator))


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """logits [B, T, V], targets/mask [B, T] -> (mean CE over masked tokens, their top-1 accuracy)."""
    picked, wanted = logits[mask], targets[mask]
    loss = F.cross_entropy(picked, wanted)
    accuracy = (picked.argmax(-1) == wanted).float().mean()
    return loss, accuracy


def init_masked_transformer(module: nn.Module) -> nn.Module:
    """Linear/Embedding ~ N(0, 0.02) with zero biases; adaptive RMSNorm scales start at 1 (weight 0, bias 1)."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=INIT_STD)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=INIT_STD)
    for sub in module.modules():
        if isinstance(sub, AdaptiveRMSNorm):
            nn.init.zeros_(sub.to_weight.weight)
            nn.init.ones_(sub.to_weight.bias)
    return module
