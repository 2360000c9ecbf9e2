"""Metis stage 1: masked generative model of SSL (semantic) tokens (``MetisStage1`` / ``MaskGCT_T2S``).

Input rows ``[cond_emb(prompt ids) ; target rows] (+ cond_adapter(condition) over the whole length)``, target
rows are ``mask_emb`` where masked else ``cond_emb(id)``. TTS/Omni prepend a phone prefix
``cond_mlp(phone_emb(phones))`` inside the denoiser. CFG (cfg > 0) uses an unconditional branch over the target
rows only (no prompt, no phones; the condition's target part is kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metis_rt.config import Stage1Config, Stage1Decoding
from metis_rt.models.decoding import NoiseSource, SamplingParams, apply_cfg, masked_decode
from metis_rt.models.transformer import FFN_MULT, DiffusionTransformer

PHONE_PADDING_IDX = 1023


class GatedAdapter(nn.Module):
    """``SimpleAdapter``: ``out_linear(silu(in_linear(x))) * gate_scale``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_linear = nn.Linear(in_dim, FFN_MULT * out_dim)
        self.act = nn.SiLU()
        self.out_linear = nn.Linear(FFN_MULT * out_dim, out_dim)
        self.gate_scale = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_linear(self.act(self.in_linear(x))) * self.gate_scale


def build_adapter(kind: str, in_dim: int, out_dim: int) -> nn.Module | None:
    if kind == "none":
        return None
    if kind == "gated":
        return GatedAdapter(in_dim, out_dim)
    if kind == "mlp":  # Metis-L2S: a plain Sequential, no gate
        return nn.Sequential(nn.Linear(in_dim, FFN_MULT * out_dim), nn.SiLU(), nn.Linear(FFN_MULT * out_dim, out_dim))
    raise ValueError(f"unknown adapter kind {kind!r}; expected 'none', 'gated' or 'mlp'")


@dataclass
class Stage1Inputs:
    """Per-call tensors that stay fixed during decoding.

    prompt_ids [B, Tp]; condition [B, Tp+Tt, cond_dim] or None; phone_ids [B, P] or None;
    prompt_mask [B, Tp] bool (False = left padding, when rows with different prompt lengths are batched).
    """

    prompt_ids: torch.Tensor
    condition: torch.Tensor | None = None
    phone_ids: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None


@dataclass
class _Prepared:
    prompt_emb: torch.Tensor  # [B, Tp, H]
    adapter_out: torch.Tensor | None  # [B, Tp+Tt, H]
    phone_prefix: torch.Tensor | None  # [B, P, H]
    prompt_mask: torch.Tensor | None = None  # [B, Tp] bool


class Stage1Model(nn.Module):
    def __init__(self, cfg: Stage1Config):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.mask_emb = nn.Embedding(1, h)
        self.to_logit = nn.Linear(h, cfg.cond_codebook_size)
        self.cond_emb = nn.Embedding(cfg.cond_codebook_size, h)
        if cfg.use_phone_cond:
            self.phone_emb = nn.Embedding(cfg.phone_vocab_size, h, padding_idx=PHONE_PADDING_IDX)
        self.diff_estimator = DiffusionTransformer(h, cfg.num_layers, cfg.num_heads, cfg.use_phone_cond)
        self.fast_path = True  # issue 20's eager fast path (bit-identical); False: the previous code path
        adapter = build_adapter(cfg.adapter, cfg.cond_dim, h)
        if adapter is not None:
            self.cond_adapter = adapter

    @property
    def has_adapter(self) -> bool:
        return hasattr(self, "cond_adapter")

    def prepare(self, inputs: Stage1Inputs, target_len: int) -> _Prepared:
        prompt_emb = self.cond_emb(inputs.prompt_ids)
        adapter_out = None
        if inputs.condition is not None:
            if not self.has_adapter:
                raise ValueError("this stage-1 model has no condition adapter; pass condition=None")
            expected = inputs.prompt_ids.shape[1] + target_len
            if inputs.condition.shape[1] != expected:
                raise ValueError(
                    f"condition covers {inputs.condition.shape[1]} frames, expected prompt+target = {expected}"
                )
            adapter_out = self.cond_adapter(inputs.condition.to(prompt_emb.dtype))
        phone_prefix = None
        if inputs.phone_ids is not None:
            if not self.cfg.use_phone_cond:
                raise ValueError("this stage-1 model has no phone conditioning; pass phone_ids=None")
            phone_prefix = self.diff_estimator.cond_mlp(self.phone_emb(inputs.phone_ids))
        if inputs.prompt_mask is not None and phone_prefix is not None:
            raise ValueError("padded prompts cannot be combined with a phone prefix")
        return _Prepared(prompt_emb, adapter_out, phone_prefix, inputs.prompt_mask)

    def target_rows(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """seq [B, T] ids, mask [B, T] bool -> [B, T, H]."""
        tokens = self.cond_emb(seq)
        return torch.where(mask[..., None], self.mask_emb.weight[0].to(tokens.dtype), tokens)

    def hidden(self, prep: _Prepared, target: torch.Tensor, t: torch.Tensor, cfg: float, rescale: float):
        """Denoiser hidden states for the target rows: (conditional, guided-or-None), each [B, Tt, H]."""
        tp = prep.prompt_emb.shape[1]
        x = torch.cat([prep.prompt_emb, target], dim=1)
        if prep.adapter_out is not None:
            x = x + prep.adapter_out
        key_mask = None
        if prep.prompt_mask is not None:
            key_mask = torch.cat([prep.prompt_mask, prep.prompt_mask.new_ones(target.shape[:2])], dim=1)
        if self.fast_path:
            x_u = None
            if cfg > 0:
                x_u = target if prep.adapter_out is None else target + prep.adapter_out[:, tp:]
            return self.diff_estimator.guided(
                x, t, tp, prefix=prep.phone_prefix, key_mask=key_mask, uncond_x=x_u, cfg=cfg, rescale=rescale
            )
        cond = self.diff_estimator(x, t, prefix=prep.phone_prefix, key_mask=key_mask)[:, tp:]
        if cfg <= 0:
            return cond, None
        x_u = target if prep.adapter_out is None else target + prep.adapter_out[:, tp:]
        uncond = self.diff_estimator(x_u, t)
        return cond, apply_cfg(cond, uncond, cfg, rescale)

    def generate(
        self,
        inputs: Stage1Inputs,
        target_len: int,
        settings: Stage1Decoding,
        noise: NoiseSource,
    ) -> torch.Tensor:
        """Decode ``target_len`` semantic tokens after the prompt: returns ids [B, target_len]."""
        prep = self.prepare(inputs, target_len)

        def predict(seq: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            cond, guided = self.hidden(prep, self.target_rows(seq, mask), t, settings.cfg, settings.rescale_cfg)
            return self.to_logit(cond if guided is None else guided)

        params = SamplingParams(settings.steps, settings.temperature, settings.filter_thres)
        batch = inputs.prompt_ids.shape[0]
        return masked_decode(predict, batch, target_len, params, noise, inputs.prompt_ids.device, fast=self.fast_path)
