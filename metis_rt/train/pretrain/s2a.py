"""Pre-training MaskGCT S2A (both models): semantic ids -> acoustic codec ids, one layer at a time.

Tokens come from frozen exports: SSL + semantic codec (condition) and the acoustic codec (targets). A crop of k
frames gives k - 1 semantic and k acoustic frames; the last acoustic frame is dropped so frame i of both cover
the same 20 ms.

Per batch (MaskGCT ``forward_diffusion``): the 1-layer model always trains layer 0; the full model trains one
layer drawn with ``layer_schedule`` (``linear``: weight ``Q - k`` for the k-th trainable layer) among layers 1..Q-1
(layer 0 too when ``full_predicts_layer0``). Rows are built exactly as at inference: prompt rows = sum of all the
model's layer embeddings; target rows = lower layers' embeddings + ``mask_emb`` or the chosen layer's embedding +
``mask_emb`` x (Q - 1 - L); the per-frame condition ``cond_mlp(cond_emb(semantic) + layer_emb[L])`` is added
over the whole sequence. Masking, prompt and timestep draws: :mod:`masking` (ratio ``sin(pi t / 2)``, clean prefix
of up to half the crop, no prompt in 15 % of the rows). Loss = CE(1-layer) + CE(full) on masked tokens.

Export: ``s2a_model/s2a_model_{1layer,full}/model.safetensors`` + ``model.s2a_model.*`` in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metis_rt.config import S2AConfig
from metis_rt.errors import ConfigError
from metis_rt.models.s2a import S2AModel
from metis_rt.pipeline.components import S2A_FILES
from metis_rt.train.config import TrainConfig
from metis_rt.train.example import Example
from metis_rt.train.pretrain import common
from metis_rt.train.pretrain.config_json import s2a_section, update_config_json
from metis_rt.train.pretrain.frozen import FrozenTokenizer
from metis_rt.train.pretrain.masking import (
    LAYER_SCHEDULES,
    MaskDraw,
    MaskingRecipe,
    TransformerSize,
    init_masked_transformer,
    masked_cross_entropy,
    sample_layer,
    sample_masking,
)

NAME = "pretrain-s2a"
# The official files carry this empty tensor (an artefact of the HF LlamaModel base class, see models/s2a.py).
EMBED_TOKENS_ARTEFACT = "diff_estimator.embed_tokens.weight"
EMBED_TOKENS_SHAPE = (0, 256)


@dataclass(frozen=True)
class S2APretrainConfig:
    ssl_dir: str
    semantic_codec_dir: str
    acoustic_codec_dir: str
    model_1layer: TransformerSize = field(default_factory=lambda: TransformerSize(256, 4, 4))
    model_full: TransformerSize = field(default_factory=lambda: TransformerSize(256, 4, 4))
    masking: MaskingRecipe = field(default_factory=lambda: MaskingRecipe(prompt_max_fraction=0.5, min_mask_ratio=0.0))
    layer_schedule: str = "linear"
    full_predicts_layer0: bool = False  # official: false (Metis takes layer 0 from the 1-layer model)
    crop_frames: int = 151

    def __post_init__(self):
        if self.layer_schedule not in LAYER_SCHEDULES:
            raise ConfigError(f"layer_schedule must be one of {LAYER_SCHEDULES}, got {self.layer_schedule!r}")
        if self.crop_frames < 3:
            raise ConfigError(f"crop_frames must be >= 3, got {self.crop_frames}")


@dataclass
class S2ABatch:
    semantic: torch.Tensor  # [B, T] semantic ids
    acoustic: torch.Tensor  # [B, T, Q] acoustic ids
    draw_1layer: MaskDraw  # masking of layer 0 for the 1-layer model
    draw_full: MaskDraw  # masking of `full_layer` for the full model
    full_layer: int


def s2a_logits(model: S2AModel, semantic, acoustic, draw: MaskDraw, layer: int) -> torch.Tensor:
    """Logits [B, T, codebook] of ``layer`` for semantic [B, T], acoustic ids [B, T, >=Q] and a mask draw."""
    prompt = model.prompt_rows(acoustic)
    target = model.target_rows(model.lower_rows(acoustic, layer), acoustic[..., layer], draw.mask, layer)
    rows = torch.where(draw.is_prompt[..., None], prompt, target)
    hidden = model.diff_estimator(rows + model.condition(semantic, layer), draw.t)
    return model.to_logits[layer](hidden)


def official_s2a_state(model: S2AModel) -> dict[str, torch.Tensor]:
    return {**model.state_dict(), EMBED_TOKENS_ARTEFACT: torch.zeros(EMBED_TOKENS_SHAPE)}


class S2APretrainTask:
    def __init__(self, cfg: S2APretrainConfig, device: torch.device | str = "cpu"):
        self.name = NAME
        self.cfg = cfg
        self.device = torch.device(device)
        self.tokenizer = FrozenTokenizer.load(cfg.ssl_dir, cfg.semantic_codec_dir, cfg.acoustic_codec_dir, self.device)
        decoder_cfg = self.tokenizer.acoustic_codec.decoder.cfg
        base = S2AConfig(
            num_quantizer=decoder_cfg.num_quantizers,
            codebook_size=decoder_cfg.codebook_size,
            cond_codebook_size=self.tokenizer.semantic_codec.cfg.codebook_size,
        )
        self.cfg_1layer = dataclasses.replace(base, num_quantizer=1, **dataclasses.asdict(cfg.model_1layer))
        self.cfg_full = dataclasses.replace(base, **dataclasses.asdict(cfg.model_full))
        self.model_1layer = init_masked_transformer(S2AModel(self.cfg_1layer))
        self.model_full = init_masked_transformer(S2AModel(self.cfg_full))
        for model in (self.model_1layer, self.model_full):
            model.to(self.device).train()

    def modules(self) -> dict[str, nn.Module]:
        return {"s2a_1layer": self.model_1layer, "s2a_full": self.model_full}

    def trainable(self):
        return itertools.chain(self.model_1layer.parameters(), self.model_full.parameters())

    def batches(self, examples: Iterator[Example], batch_size: int) -> Iterator[S2ABatch]:
        c = self.cfg
        for group in common.grouped(common.crops(examples, c.crop_frames), batch_size):
            semantic = self.tokenizer.semantic_ids(common.stack_16k(group))
            frames = semantic.shape[1]
            acoustic = self.tokenizer.acoustic_ids(common.stack_24k(group, self.device))[:, :frames]
            draw_1layer = self._draw(len(group), frames)
            draw_full = self._draw(len(group), frames)
            layer = sample_layer(self.cfg_full.num_quantizer, c.layer_schedule, c.full_predicts_layer0)
            yield S2ABatch(semantic.to(self.device), acoustic.to(self.device), draw_1layer, draw_full, layer)

    def loss(self, batch: S2ABatch) -> tuple[torch.Tensor, dict[str, float]]:
        one = s2a_logits(self.model_1layer, batch.semantic, batch.acoustic, batch.draw_1layer, 0)
        ce_1, acc_1 = masked_cross_entropy(one, batch.acoustic[..., 0], batch.draw_1layer.mask)
        full = s2a_logits(self.model_full, batch.semantic, batch.acoustic, batch.draw_full, batch.full_layer)
        ce_f, acc_f = masked_cross_entropy(full, batch.acoustic[..., batch.full_layer], batch.draw_full.mask)
        return ce_1 + ce_f, {
            "ce_1layer": ce_1.item(),
            "acc_1layer": acc_1.item(),
            "ce_full": ce_f.item(),
            "acc_full": acc_f.item(),
            "full_layer": float(batch.full_layer),
        }

    def export(self, out_dir: Path) -> list[Path]:
        out = Path(out_dir)
        c = self.cfg
        section = s2a_section(
            self.cfg_1layer, self.cfg_full, c.masking.no_prompt_prob, c.layer_schedule, c.full_predicts_layer0
        )
        return [
            common.save_tensors(official_s2a_state(self.model_1layer), out / S2A_FILES["s2a_1layer"]),
            common.save_tensors(official_s2a_state(self.model_full), out / S2A_FILES["s2a_full"]),
            update_config_json(out, section),
        ]

    def _draw(self, batch: int, frames: int) -> MaskDraw:
        draw = sample_masking(batch, frames, self.cfg.masking)
        return MaskDraw(draw.t.to(self.device), draw.is_prompt.to(self.device), draw.mask.to(self.device))


def build(options: Mapping[str, Any], run: TrainConfig | None = None) -> S2APretrainTask:
    """Registry factory (``trainer: pretrain-s2a``): ``options`` as :class:`S2APretrainConfig`."""
    return S2APretrainTask(common.parse_options(S2APretrainConfig, options, NAME), common.run_device(run))
