"""Pre-training the semantic codec (RepCodec): normalised SSL features -> 1-stage FVQ ids -> features again.

Model: our :class:`SemanticCodec` (Vocos encoder + ``Linear`` + factorised VQ) plus the training-only ``decoder``
(the same Vocos + ``Linear`` shape, reading the quantised features), exactly the official file's three parts.
Loss: ``mse_weight * MSE + l1_weight * L1`` of the reconstruction, ``commitment_weight * commitment`` and
``codebook_weight * codebook`` (:mod:`vq`; RepCodec: 0.15 and 1.0). Weight norm on the VQ projections during
training; dead codes re-seeded every ``revive_every`` steps.

Input features come from a frozen SSL export (``ssl_dir``); the codec width is that model's hidden size.
Export: ``semantic_codec/model.safetensors`` + ``model.semantic_codec.*`` in ``config.json``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metis_rt.config import SemanticCodecConfig
from metis_rt.errors import ConfigError
from metis_rt.models.semantic_codec import SemanticCodec
from metis_rt.models.vocos import VocosBackbone
from metis_rt.pipeline.components import SEMANTIC_CODEC_FILE
from metis_rt.train.config import TrainConfig
from metis_rt.train.example import Example
from metis_rt.train.pretrain import common
from metis_rt.train.pretrain.config_json import semantic_codec_section, update_config_json
from metis_rt.train.pretrain.frozen import load_ssl, ssl_features
from metis_rt.train.pretrain.vq import CodeRevival, codebook_usage, residual_quantize

NAME = "pretrain-semantic-codec"


@dataclass(frozen=True)
class SemanticCodecPretrainConfig:
    ssl_dir: str  # an SSL export (w2v-bert-2.0/, wav2vec2bert_stats.pt, config.json)
    codebook_size: int = 1024
    codebook_dim: int = 8
    vocos_dim: int = 192
    vocos_intermediate_dim: int = 576
    vocos_num_layers: int = 3
    mse_weight: float = 1.0
    l1_weight: float = 0.0
    commitment_weight: float = 0.15
    codebook_weight: float = 1.0
    revive_every: int = 200  # steps between dead-code checks; 0 = never
    crop_frames: int = 100

    def __post_init__(self):
        if self.crop_frames < 2:
            raise ConfigError(f"crop_frames must be >= 2, got {self.crop_frames}")


@dataclass
class FeatureBatch:
    features: torch.Tensor  # [B, T, D] normalised SSL features


class RepCodecModel(nn.Module):
    """Encoder + quantiser (our inference module) and the feature decoder, under the official key names."""

    def __init__(self, cfg: SemanticCodecConfig):
        super().__init__()
        self.codec = SemanticCodec(cfg)
        self.decoder = nn.Sequential(
            VocosBackbone(cfg.hidden_size, cfg.vocos_dim, cfg.vocos_intermediate_dim, cfg.vocos_num_layers),
            nn.Linear(cfg.vocos_dim, cfg.hidden_size),
        )

    def forward(self, features: torch.Tensor):
        """features [B, T, D] -> (reconstruction [B, T, D], QuantizeOutput)."""
        latent = self.codec.encoder(features.transpose(1, 2)).transpose(1, 2)  # [B, D, T]
        quantized = residual_quantize(self.codec.quantizer, latent)
        return self.decoder(quantized.quantized), quantized

    def official_state(self) -> dict[str, torch.Tensor]:
        return {**common.official_state(self.codec), **common.prefixed("decoder.", self.decoder.state_dict())}


class SemanticCodecPretrainTask:
    def __init__(self, cfg: SemanticCodecPretrainConfig, device: torch.device | str = "cpu"):
        self.name = NAME
        self.cfg = cfg
        self.device = torch.device(device)
        self.ssl, _ = load_ssl(cfg.ssl_dir, self.device)
        self.codec_cfg = SemanticCodecConfig(
            codebook_size=cfg.codebook_size,
            hidden_size=self.ssl.dim,
            codebook_dim=cfg.codebook_dim,
            vocos_dim=cfg.vocos_dim,
            vocos_intermediate_dim=cfg.vocos_intermediate_dim,
            vocos_num_layers=cfg.vocos_num_layers,
        )
        self.model = RepCodecModel(self.codec_cfg)
        common.apply_weight_norm(self.model).to(self.device).train()
        self.revival = CodeRevival(1, cfg.codebook_size, cfg.revive_every).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "code_revival": self.revival}

    def trainable(self):
        return self.model.parameters()

    def batches(self, examples: Iterator[Example], batch_size: int) -> Iterator[FeatureBatch]:
        for group in common.grouped(common.crops(examples, self.cfg.crop_frames), batch_size):
            yield FeatureBatch(ssl_features(self.ssl, common.stack_16k(group)).to(self.device))

    def loss(self, batch: FeatureBatch) -> tuple[torch.Tensor, dict[str, float]]:
        revived = self.revival.revive(self.model.codec.quantizer)
        reconstruction, q = self.model(batch.features)
        mse = F.mse_loss(reconstruction, batch.features)
        l1 = F.l1_loss(reconstruction, batch.features)
        c = self.cfg
        loss = (
            c.mse_weight * mse + c.l1_weight * l1 + c.commitment_weight * q.commitment + c.codebook_weight * q.codebook
        )
        self.revival.observe(q.ids, q.latents)
        return loss, {
            "mse": mse.item(),
            "l1": l1.item(),
            "commitment": q.commitment.item(),
            "codebook": q.codebook.item(),
            "code_usage": codebook_usage(q.ids, c.codebook_size),
            "revived": float(revived),
        }

    def export(self, out_dir: Path) -> list[Path]:
        out = Path(out_dir)
        weights = common.save_tensors(self.model.official_state(), out / SEMANTIC_CODEC_FILE)
        return [weights, update_config_json(out, semantic_codec_section(self.codec_cfg))]


def build(options: Mapping[str, Any], run: TrainConfig | None = None) -> SemanticCodecPretrainTask:
    """Registry factory (``trainer: pretrain-semantic-codec``): ``options`` as the config dataclass."""
    cfg = common.parse_options(SemanticCodecPretrainConfig, options, NAME)
    return SemanticCodecPretrainTask(cfg, common.run_device(run))
