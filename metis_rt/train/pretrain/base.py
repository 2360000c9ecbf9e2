"""Pre-training Metis base: masked generative modelling of semantic tokens, no condition, no phones.

Tokens come from frozen SSL + semantic-codec exports (``ssl_dir``, ``semantic_codec_dir``). The model is our
:class:`Stage1Model` in the ``base`` variant (no adapter); its input is built exactly as at inference:
``cond_emb(id)`` for prompt and unmasked rows, ``mask_emb`` for masked rows, the whole row sequence at once.
Recipe: :mod:`masking` (MaskGCT T2S: mask ratio ``max(sin(pi t / 2), 0.2)``, random clean prefix prompt of up to
40 % of the crop, no prompt in 15 % of the rows). There is nothing to drop for CFG: the prompt-free rows are
the unconditional mode.

Export: ``metis_base/model.safetensors`` + ``model.t2s_model.*`` in ``config.json``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metis_rt.config import Stage1Config
from metis_rt.errors import ConfigError
from metis_rt.models.stage1 import Stage1Model
from metis_rt.models.stage1_loading import FULL_VARIANT_FILES, stage1_config
from metis_rt.train.config import TrainConfig
from metis_rt.train.example import Example
from metis_rt.train.pretrain import common
from metis_rt.train.pretrain.config_json import t2s_section, update_config_json
from metis_rt.train.pretrain.frozen import FrozenTokenizer
from metis_rt.train.pretrain.masking import (
    MaskingRecipe,
    TransformerSize,
    init_masked_transformer,
    masked_cross_entropy,
    sample_masking,
)

NAME = "pretrain-base"


@dataclass(frozen=True)
class BasePretrainConfig:
    ssl_dir: str
    semantic_codec_dir: str
    model: TransformerSize = field(default_factory=TransformerSize)
    masking: MaskingRecipe = field(default_factory=MaskingRecipe)
    crop_frames: int = 151  # 20 ms frames per crop (3 s): crop_frames - 1 semantic tokens

    def __post_init__(self):
        if self.crop_frames < 3:
            raise ConfigError(f"crop_frames must be >= 3, got {self.crop_frames}")


@dataclass
class TokenBatch:
    ids: torch.Tensor  # [B, T] semantic ids
    t: torch.Tensor  # [B] timesteps
    is_prompt: torch.Tensor  # [B, T] bool
    mask: torch.Tensor  # [B, T] bool


class BasePretrainTask:
    def __init__(self, cfg: BasePretrainConfig, device: torch.device | str = "cpu"):
        self.name = NAME
        self.cfg = cfg
        self.device = torch.device(device)
        self.tokenizer = FrozenTokenizer.load(cfg.ssl_dir, cfg.semantic_codec_dir, None, self.device)
        size = cfg.model
        shared = Stage1Config(
            hidden_size=size.hidden_size,
            num_layers=size.num_layers,
            num_heads=size.num_heads,
            cond_codebook_size=self.tokenizer.semantic_codec.cfg.codebook_size,
            cond_dim=self.tokenizer.ssl.dim,
        )
        self.stage1_cfg = stage1_config("base", shared)
        self.model = init_masked_transformer(Stage1Model(self.stage1_cfg))
        self.model.to(self.device).train()

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def trainable(self):
        return self.model.parameters()

    def batches(self, examples: Iterator[Example], batch_size: int) -> Iterator[TokenBatch]:
        for group in common.grouped(common.crops(examples, self.cfg.crop_frames), batch_size):
            ids = self.tokenizer.semantic_ids(common.stack_16k(group))
            draw = sample_masking(ids.shape[0], ids.shape[1], self.cfg.masking)
            yield TokenBatch(ids.to(self.device), *(x.to(self.device) for x in (draw.t, draw.is_prompt, draw.mask)))

    def logits(self, ids: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ids/mask [B, T], t [B] -> logits [B, T, V] (prompt rows are simply unmasked rows)."""
        hidden = self.model.diff_estimator(self.model.target_rows(ids, mask), t)
        return self.model.to_logit(hidden)

    def loss(self, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, accuracy = masked_cross_entropy(self.logits(batch.ids, batch.mask, batch.t), batch.ids, batch.mask)
        return loss, {"ce": loss.item(), "acc_masked": accuracy.item()}

    def export(self, out_dir: Path) -> list[Path]:
        out = Path(out_dir)
        weights = common.save_tensors(self.model.state_dict(), out / FULL_VARIANT_FILES["base"])
        return [weights, update_config_json(out, t2s_section(self.stage1_cfg, self.cfg.masking.no_prompt_prob))]


def build(options: Mapping[str, Any], run: TrainConfig | None = None) -> BasePretrainTask:
    """Registry factory (``trainer: pretrain-base``): ``options`` as :class:`BasePretrainConfig`."""
    return BasePretrainTask(common.parse_options(BasePretrainConfig, options, NAME), common.run_device(run))
