"""Semantic codec (RepCodec, inference half): normalised w2v-BERT features -> semantic token ids.

File ``semantic_codec/model.safetensors`` holds ``encoder.*``, ``quantizer.quantizers.0.*`` and a
``decoder.*`` (feature reconstruction, training only). The decoder is not built; its keys are tolerated
by name (:func:`is_unused_semantic_key`), every other tensor must match exactly.

The encoder is symmetric (13 convolutions of 7 taps): each token depends on +-39 feature frames.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from metis_rt.config import SemanticCodecConfig
from metis_rt.models.checkpoints import load_module
from metis_rt.models.quantize import ResidualFVQ
from metis_rt.models.vocos import VocosBackbone

SEMANTIC_QUANTIZER_STAGES = 1  # fixed by the reference code, not in the config
UNUSED_SEMANTIC_KEY_PREFIXES = ("decoder.",)  # feature-reconstruction decoder: training only


def is_unused_semantic_key(key: str) -> bool:
    """True for file tensors of the semantic codec that inference does not use (the ``decoder.*`` half)."""
    return key.startswith(UNUSED_SEMANTIC_KEY_PREFIXES)


class SemanticCodec(nn.Module):
    """Features [B, T, D] -> ids [B, T] in [0, codebook_size), D = ``cfg.hidden_size`` (1024 officially)."""

    def __init__(self, cfg: SemanticCodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Sequential(
            VocosBackbone(cfg.hidden_size, cfg.vocos_dim, cfg.vocos_intermediate_dim, cfg.vocos_num_layers),
            nn.Linear(cfg.vocos_dim, cfg.hidden_size),
        )
        self.quantizer = ResidualFVQ(SEMANTIC_QUANTIZER_STAGES, cfg.hidden_size, cfg.codebook_size, cfg.codebook_dim)

    def quantize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, T, D] -> (ids [B, T] int64, quantized [B, T, D] = out_project(codebook[ids]))."""
        if features.dim() != 3 or features.shape[-1] != self.cfg.hidden_size:
            raise ValueError(
                f"semantic codec expects features [B, T, {self.cfg.hidden_size}], got {list(features.shape)}"
            )
        latent = self.encoder(features.transpose(1, 2)).transpose(1, 2)  # [B, D, T]
        ids = self.quantizer.encode(latent)  # [B, T, 1]
        quantized = self.quantizer.decode(ids).transpose(1, 2)  # [B, T, D]
        return ids[..., 0], quantized

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, T, D] -> ids [B, T]."""
        return self.quantize(features)[0]

    @classmethod
    def load(
        cls,
        path: str | Path,
        cfg: SemanticCodecConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> SemanticCodec:
        """Build on meta, fill strictly from ``semantic_codec/model.safetensors``, return in eval mode."""
        return load_module(
            lambda: cls(cfg), path, "semantic codec", ignore=is_unused_semantic_key, dtype=dtype, device=device
        )
