"""MaskGCT semantic-to-acoustic model (``MaskGCT_S2A``): semantic ids -> multi-layer acoustic codec ids.

Layers are decoded in order; for layer L the target rows are
``sum_{l<L} token_emb[l](ids_l) + (mask_emb if masked else token_emb[L](id)) + mask_emb * (Q - 1 - L)``;
the acoustic prompt rows are ``sum_{l<Q} token_emb[l](prompt_l)``; the per-frame condition
``cond_mlp(cond_emb(semantic) + layer_emb[L])`` is added over ``[prompt ; target]``. CFG drops the acoustic
prompt but keeps the condition's target part.
"""

from __future__ import annotations

import torch
from torch import nn

from metis_rt.config import S2AConfig
from metis_rt.models.decoding import NoiseSource, SamplingParams, apply_cfg, masked_decode
from metis_rt.models.transformer import DiffusionTransformer

# The official S2A files carry `diff_estimator.embed_tokens.weight` of shape [0, 256], an unused artefact of the
# Hugging Face LlamaModel base class. It is the only tensor tolerated without a counterpart.
UNUSED_KEYS = frozenset({"diff_estimator.embed_tokens.weight"})


class S2AModel(nn.Module):
    def __init__(self, cfg: S2AConfig):
        super().__init__()
        self.cfg = cfg
        h, q = cfg.hidden_size, cfg.num_quantizer
        self.layer_emb = nn.Embedding(q, h)
        self.mask_emb = nn.Embedding(1, h)
        self.token_emb = nn.ModuleList(nn.Embedding(cfg.codebook_size, h) for _ in range(q))
        self.to_logits = nn.ModuleList(nn.Linear(h, cfg.codebook_size) for _ in range(q))
        self.cond_emb = nn.Embedding(cfg.cond_codebook_size, h)
        self.diff_estimator = DiffusionTransformer(h, cfg.num_layers, cfg.num_heads, with_cond_mlp=True)
        self.fast_path = True  # issue 20's eager fast path (bit-identical); False: the previous code path

    def prompt_rows(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """prompt_ids [B, Tp, >=Q] -> [B, Tp, H] (sum over the model's Q layers)."""
        rows = self.token_emb[0](prompt_ids[..., 0])
        for layer in range(1, self.cfg.num_quantizer):
            rows = rows + self.token_emb[layer](prompt_ids[..., layer])
        return rows

    def lower_rows(self, ids: torch.Tensor, layer: int) -> torch.Tensor:
        """Sum of the embeddings of layers < ``layer`` of ids [B, T, >=layer] -> [B, T, H]."""
        rows = torch.zeros(*ids.shape[:2], self.cfg.hidden_size, dtype=self.mask_emb.weight.dtype, device=ids.device)
        for lower in range(layer):
            rows = rows + self.token_emb[lower](ids[..., lower])
        return rows

    def condition(self, semantic_ids: torch.Tensor, layer: int, emb: torch.Tensor | None = None) -> torch.Tensor:
        """semantic_ids [B, Tp+Tt] -> cond_mlp input-bias [B, Tp+Tt, H] for quantizer ``layer``.

        ``emb``: ``cond_emb(semantic_ids)`` when already looked up (it is the same for every layer)."""
        cond = (self.cond_emb(semantic_ids) if emb is None else emb) + self.layer_emb.weight[layer]
        return self.diff_estimator.cond_mlp(cond)

    def target_rows(self, lower: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
        """lower [B, T, H] = sum of decoded lower layers; seq/mask [B, T] -> [B, T, H]."""
        mask_row = self.mask_emb.weight[0]
        tokens = self.token_emb[layer](seq)
        current = torch.where(mask[..., None], mask_row.to(tokens.dtype), tokens)
        return lower + current + mask_row * (self.cfg.num_quantizer - 1 - layer)

    def hidden(self, prompt, target, bias, t, cfg: float, rescale: float, prompt_mask=None):
        """Denoiser hidden states of the target rows: (conditional, guided-or-None), each [B, Tt, H].

        prompt [B, Tp, H], target [B, Tt, H], bias [B, Tp+Tt, H]; prompt_mask [B, Tp] bool marks real prompt rows
        when rows with different prompt lengths are batched (left padding).
        """
        tp = prompt.shape[1]
        x = torch.cat([prompt, target], dim=1) + bias
        key_mask = None
        if prompt_mask is not None:
            key_mask = torch.cat([prompt_mask, prompt_mask.new_ones(target.shape[:2])], dim=1)
        if self.fast_path:
            x_u = target + bias[:, tp:] if cfg > 0 else None
            return self.diff_estimator.guided(x, t, tp, key_mask=key_mask, uncond_x=x_u, cfg=cfg, rescale=rescale)
        cond = self.diff_estimator(x, t, key_mask=key_mask)[:, tp:]
        if cfg <= 0:
            return cond, None
        uncond = self.diff_estimator(target + bias[:, tp:], t)
        return cond, apply_cfg(cond, uncond, cfg, rescale)

    def generate(
        self,
        semantic_ids: torch.Tensor,
        prompt_ids: torch.Tensor,
        steps: tuple[int, ...],
        *,
        cfg: float,
        rescale_cfg: float,
        temperature: float,
        filter_thres: float,
        noise: NoiseSource,
        gt_code: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """semantic_ids [B, Tp+Tt], prompt_ids [B, Tp, Qp] -> ids [B, Tt, Q].

        ``gt_code`` [B, Tt, G] fixes the first G layers (Metis takes layer 0 from the 1-layer model).
        ``steps[L]`` is the number of decoding steps of layer L (entries for given layers are unused).
        ``prompt_mask`` [B, Tp] bool: False marks left padding of shorter prompts in a batch.
        """
        batch, tp = prompt_ids.shape[0], prompt_ids.shape[1]
        target_len = semantic_ids.shape[1] - tp
        if len(steps) < self.cfg.num_quantizer:
            raise ValueError(f"need steps for {self.cfg.num_quantizer} layers, got {list(steps)}")
        prompt = self.prompt_rows(prompt_ids)
        given = gt_code if gt_code is not None else semantic_ids.new_zeros(batch, target_len, 0)
        decoded = list(given.unbind(-1))
        lower = self.lower_rows(given, given.shape[-1])
        emb = self.cond_emb(semantic_ids) if self.fast_path else None
        for layer in range(len(decoded), self.cfg.num_quantizer):
            bias = self.condition(semantic_ids, layer, emb)

            def predict(seq, mask, t, layer=layer, bias=bias, lower=lower):
                target = self.target_rows(lower, seq, mask, layer)
                cond, guided = self.hidden(prompt, target, bias, t, cfg, rescale_cfg, prompt_mask)
                return self.to_logits[layer](cond if guided is None else guided)

            params = SamplingParams(steps[layer], temperature, filter_thres)
            ids = masked_decode(predict, batch, target_len, params, noise, semantic_ids.device, fast=self.fast_path)
            decoded.append(ids)
            lower = lower + self.token_emb[layer](ids)
        return torch.stack(decoded, dim=-1)
