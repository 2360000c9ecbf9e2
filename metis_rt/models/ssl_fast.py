"""The hop's fast pass through the w2v-BERT 2.0 encoder (issue 20): the same arithmetic as the ``transformers``
module it reads its weights from, in fewer, larger calls.

w2v-BERT is a Conformer: feature projection (LayerNorm, Linear), then per layer a half-step feed-forward,
self-attention with a learned *relative key* bias (``q . emb[clamp(j - i, -left, right)]`` added to ``q . k``),
a convolution module (LayerNorm, pointwise conv + GLU, causal depthwise conv, LayerNorm, SiLU, pointwise conv), a
second half-step feed-forward and a final LayerNorm. The module path spends most of a small window's time around
the arithmetic (module calls, dropout no-ops, mask building, the relative-position table rebuilt in every layer).
This pass calls the functional operators directly on the modules' own parameters, computes q/k/v in one product
(their weights and biases stacked once and kept while the parameters stay the same), and keeps each layer's
relative-position table per window length.

It serves what the streaming windows are: eval mode, no gradient, every frame valid (windows of one length are
batched unpadded), ``relative_key`` positions, no adapter. Anything else goes through the module
(:meth:`FastEncoder.supports`). Tested against the module (and by the parity vectors, which run on it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metis_rt.models.weight_stamp import stamp, unchanged

TABLE_CACHE_SIZE = 16  # window lengths whose relative-position tables are kept per layer


class FastEncoder:
    """Runs ``encoder`` (a ``Wav2Vec2BertModel``) to its last built layer's hidden states."""

    def __init__(self, encoder: nn.Module):
        self.encoder = encoder
        self._stacked: tuple | None = None  # (parameter identities, per-layer (weight, bias) of q/k/v)
        self._tables: dict[tuple, list[torch.Tensor]] = {}

    def supports(self, attention_mask: torch.Tensor | None) -> bool:
        enc, cfg = self.encoder, self.encoder.config
        return (
            not enc.training
            and not torch.is_grad_enabled()
            and cfg.position_embeddings_type == "relative_key"
            and enc.adapter is None
            and enc.intermediate_ffn is None
            and cfg.hidden_act in ("swish", "silu")
            and (attention_mask is None or bool(attention_mask.all()))
        )

    def __call__(self, input_features: torch.Tensor) -> torch.Tensor:
        """input_features [B, T, 160] -> the last layer's hidden states [B, T, D]."""
        enc = self.encoder
        proj = enc.feature_projection
        h = F.linear(_ln(input_features, proj.layer_norm), proj.projection.weight, proj.projection.bias)
        stacked = self._qkv()
        tables = self._relative_tables(h.shape[1], h.dtype, h.device)
        for layer, qkv, table in zip(enc.encoder.layers, stacked, tables, strict=True):
            h = _layer(h, layer, qkv, table)
        return h

    def _qkv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers = self.encoder.encoder.layers
        params = [getattr(layer.self_attn, n) for layer in layers for n in ("linear_q", "linear_k", "linear_v")]
        watched = [t for lin in params for t in (lin.weight, lin.bias)]
        watched += [layer.self_attn.distance_embedding.weight for layer in layers]
        if self._stacked is None or not unchanged(self._stacked[0], watched):
            stacked = []
            for i in range(len(layers)):
                q, k, v = params[3 * i : 3 * i + 3]
                stacked.append(
                    (torch.cat([q.weight, k.weight, v.weight]).detach(), torch.cat([q.bias, k.bias, v.bias]).detach())
                )
            self._stacked = (stamp(watched), stacked)
            self._tables.clear()  # the distance embeddings may have changed too
        return self._stacked[1]

    def _relative_tables(self, length: int, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        """Per layer, the distance embedding of every (query, key) pair [L, L, head_dim]."""
        key = (length, dtype, device)
        if key not in self._tables:
            if len(self._tables) >= TABLE_CACHE_SIZE:
                self._tables.clear()
            pos = torch.arange(length, device=device)
            tables = []
            for layer in self.encoder.encoder.layers:
                attn = layer.self_attn
                left, right = attn.left_max_position_embeddings, attn.right_max_position_embeddings
                distance = torch.clamp(pos[None, :] - pos[:, None], -left, right) + left
                tables.append(attn.distance_embedding(distance).to(dtype).detach())
            self._tables[key] = tables
        return self._tables[key]


def _ln(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _ffn(x: torch.Tensor, ffn: nn.Module) -> torch.Tensor:
    x = F.silu(F.linear(x, ffn.intermediate_dense.weight, ffn.intermediate_dense.bias))
    return F.linear(x, ffn.output_dense.weight, ffn.output_dense.bias)


def _layer(h: torch.Tensor, layer: nn.Module, qkv: tuple[torch.Tensor, torch.Tensor], table: torch.Tensor):
    h = 0.5 * _ffn(_ln(h, layer.ffn1_layer_norm), layer.ffn1) + h
    h = _attention(_ln(h, layer.self_attn_layer_norm), layer.self_attn, qkv, table) + h
    h = _convolution(h, layer.conv_module) + h
    h = 0.5 * _ffn(_ln(h, layer.ffn2_layer_norm), layer.ffn2) + h
    return _ln(h, layer.final_layer_norm)


def _attention(x: torch.Tensor, attn: nn.Module, qkv: tuple[torch.Tensor, torch.Tensor], table: torch.Tensor):
    """Scaled dot-product attention with the relative-key bias ``q . table[i, j]`` added to ``q . k``."""
    b, n, _ = x.shape
    heads, size = attn.num_heads, attn.head_size
    q, k, v = F.linear(x, *qkv).view(b, n, 3, heads, size).permute(2, 0, 3, 1, 4)  # each [B, H, L, d]
    # bias[b, h, i, j] = q[b, h, i] . table[i, j]: one batched product over the query positions
    bias = torch.matmul(q.permute(2, 0, 1, 3).reshape(n, b * heads, size), table.transpose(1, 2))
    bias = bias.view(n, b, heads, n).permute(1, 2, 0, 3) * attn.scaling
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scaling)
    return F.linear(out.transpose(1, 2).reshape(b, n, heads * size), attn.linear_out.weight, attn.linear_out.bias)


def _convolution(h: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    x = F.glu(F.linear(_ln(h, conv.layer_norm), conv.pointwise_conv1.weight[..., 0]), dim=-1)  # pointwise + GLU
    x = F.pad(x.transpose(1, 2), (conv.depthwise_conv.kernel_size[0] - 1, 0))  # [B, D, L]; causal: left padding
    x = F.conv1d(x, conv.depthwise_conv.weight, groups=conv.depthwise_conv.groups)
    x = F.silu(_ln(x.transpose(1, 2), conv.depthwise_layer_norm))  # [B, L, D]
    return F.linear(x, conv.pointwise_conv2.weight[..., 0])
