"""Bidirectional Llama stack with adaptive RMSNorm (the denoiser of Metis stage 1 and of MaskGCT S2A).

Per layer: ``h = h + Attn(AdaRMS_in(h, c)); h = h + MLP(AdaRMS_post(h, c))``; final ``AdaRMS(h, c)``, where
``c = diff_step_mlp(sinusoidal(t))`` is the timestep embedding and every adaptive RMSNorm scale is
``to_weight(c)`` (no shift, no per-token term). Attention is global (no causal mask), RoPE theta 10000 in the
``rotate_half`` convention, positions start at 0 at the first input row. SwiGLU MLP, no biases.

Module and attribute names reproduce the official checkpoint keys (``diff_estimator.*``).
Numerically delicate parts (RMS variance, softmax, RoPE tables, timestep frequencies) run in
:func:`compute_dtype` (float32 for half precisions, float64 stays float64 for parity).

:meth:`DiffusionTransformer.guided` is the hop's fast path (issue 20): the conditional and the unconditional CFG passes
share one step condition and one set of adaptive-norm scales (remembered per timestep tensor across hops), RoPE tables
are cached per length, and after :meth:`DiffusionTransformer.fuse` each layer runs as :func:`_fused_layer`: q/k/v in one
product, gate/up in one, RoPE on q and k at once (one roll), torch's fused RMS norm, no module calls; the CFG pair then
runs packed along the sequence axis (:meth:`DiffusionTransformer._packed_pair`): one set of products per layer for both
passes, two attention calls. :meth:`DiffusionTransformer.guided_rows` is what ``torch.compile`` captures
(:mod:`metis_rt.models.hop_speed`). Unfused, its eager results are bit-identical to two
:meth:`DiffusionTransformer.forward` calls followed by :func:`guide`; fused, equal up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metis_rt.models import packed_linear
from metis_rt.models.checkpoints import compute_dtype
from metis_rt.models.packed_linear import linear
from metis_rt.models.weight_stamp import stamp, still_unchanged

RMS_EPS = 1e-6
ROPE_THETA = 10000.0
TIMESTEP_MAX_PERIOD = 10000.0
FFN_MULT = 4
ROPE_CACHE_SIZE = 64  # distinct (length, device, dtype) tables kept per stack
CONDITION_CACHE_SIZE = 256  # step conditions kept per stack (one per decoding step x batch size x dtype)


def timestep_embedding(t: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal embedding ``[sin(t f_k), cos(t f_k)]``, ``f_k = exp(-k ln(10000) / (dim/2 - 1))``.

    t: [B] raw timesteps in (0, 1] -> [B, dim] in ``dtype``.
    """
    work = compute_dtype(dtype)
    half = dim // 2
    scale = math.log(TIMESTEP_MAX_PERIOD) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=work) * -scale)
    args = t.to(work)[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=-1).to(dtype)


def rope_tables(length: int, head_dim: int, device: torch.device, dtype: torch.dtype):
    """cos/sin tables [length, head_dim] for positions 0..length-1 (computed in compute_dtype)."""
    work = compute_dtype(dtype)
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, device=device, dtype=work) / head_dim))
    pos = torch.arange(length, device=device, dtype=work)
    angles = torch.outer(pos, inv_freq)
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, L, head_dim]."""
    return x * cos + _rotate_half(x) * sin


def signed_rope(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin with its first half negated): the tables of :func:`apply_rolled_rope`."""
    half = sin.shape[-1] // 2
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def apply_rolled_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` with :func:`signed_rope`'s tables, bit for bit: ``rotate_half(x) * sin`` is
    ``[-x2 * s1, x1 * s2]`` and ``roll(x) * signed_sin`` is ``[x2 * -s1, x1 * s2]`` (the same products: IEEE
    multiplication is sign-symmetric), in one roll instead of a split, a negation and a concatenation."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def guide(cond: torch.Tensor, uncond: torch.Tensor, cfg: float, rescale: float) -> torch.Tensor:
    """Classifier-free guidance on hidden states with std rescaling.

    ``g = e + cfg (e - u)``; ``out = rescale * g * std(e)/std(g) + (1 - rescale) * g``. The reference takes one
    unbiased std over the whole tensor (B = 1 there); we take it per batch row (dims 1..), which is identical
    for B = 1 and keeps rows independent when several streams are batched.
    """
    dims = tuple(range(1, cond.dim()))
    guided = cond + cfg * (cond - uncond)
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return rescale * guided * ratio + (1 - rescale) * guided


QKV = ("q_proj", "k_proj", "v_proj")
GATE_UP = ("gate_proj", "up_proj")


def fuse_projections(module: nn.Module, names: tuple[str, ...]) -> torch.Tensor | None:
    """Give ``module``'s bias-free Linears ``names`` one shared weight (their rows stacked), in place.

    Each Linear's weight becomes a view into the stacked tensor, so the module's parameters, state dict and any
    in-place update stay what they were and no memory is added. Returns the stacked weight, or None (nothing
    changed) for LoRA-wrapped or biased layers. Run outside inference mode (the parameters stay trainable tensors).
    """
    linears = [getattr(module, n) for n in names]
    if not all(type(lin) is nn.Linear and lin.bias is None for lin in linears):
        return None
    with torch.no_grad():
        stacked = torch.cat([lin.weight.detach() for lin in linears])
        start = 0
        for lin in linears:
            rows = lin.weight.shape[0]
            lin.weight.data = stacked[start : start + rows]
            start += rows
    return stacked


def _norm(h: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Adaptive RMS norm with a precomputed scale (:class:`AdaptiveRMSNorm`'s arithmetic, torch's fused kernel)."""
    work = compute_dtype(h.dtype)
    y = scale * F.rms_norm(h if h.dtype == work else h.to(work), (h.shape[-1],), eps=eps)
    return y if y.dtype == h.dtype else y.to(h.dtype)


def _attend(q, k, v, key_mask, split: int | None) -> torch.Tensor:
    """Global attention over [B, heads, L, head_dim]; ``split``: rows ``[:split]`` and ``[split:]`` are two
    sequences packed along L (the CFG pair), each attending only to itself; ``key_mask`` belongs to the first."""
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]
    if split is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    first = F.scaled_dot_product_attention(q[:, :, :split], k[:, :, :split], v[:, :, :split], attn_mask=attn_mask)
    second = F.scaled_dot_product_attention(q[:, :, split:], k[:, :, split:], v[:, :, split:])
    return torch.cat([first, second], dim=2)


def _fused_layer(h, weights, scales, rope, key_mask, heads: int, eps: float, split: int | None = None):
    """One :class:`DecoderLayer` on stacked weights (qkv, o, gate_up, down; each a tensor or a
    :class:`~metis_rt.models.packed_linear.PackedWeight`): the fast path's few, larger calls. ``rope``:
    :func:`signed_rope` tables.

    ``split``: ``h`` holds two sequences packed along L (:func:`_attend`); everything but attention is per row,
    so both run through one set of products."""
    qkv_w, o_w, gate_up_w, down_w = weights
    b, n, _ = h.shape
    qkv = linear(_norm(h, scales[0], eps), qkv_w).view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = apply_rolled_rope(qkv[:2], *rope).unbind(0)  # RoPE on q and k at once
    out = _attend(q, k, qkv[2], key_mask, split)
    h = h + linear(out.transpose(1, 2).reshape(b, n, -1), o_w)
    gate, up = linear(_norm(h, scales[1], eps), gate_up_w).chunk(2, dim=-1)
    return h + linear(F.silu(gate) * up, down_w)


@dataclass(frozen=True)
class StackPlan:
    """What :meth:`DiffusionTransformer.fuse` made: per layer (qkv, o, gate_up, down), each a tensor or a
    :class:`~metis_rt.models.packed_linear.PackedWeight`, and the stamp of the module weights they came from."""

    layers: tuple[tuple, ...]
    stamp: tuple
    packed: bool  # some weights are packed copies (the stamp then watches versions too)
    pack_asked: bool  # fuse()'s ``pack``: fusing again with the same ask is a no-op


class AdaptiveRMSNorm(nn.Module):
    """RMSNorm whose scale is a linear function of the condition vector ``c`` [B, dim_cond]."""

    def __init__(self, hidden_size: int, dim_cond: int, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps
        self.to_weight = nn.Linear(dim_cond, hidden_size)

    def scale(self, c: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """c [B, dim_cond] -> the per-row scale [B, 1, H] in compute_dtype(dtype)."""
        return self.to_weight(c).to(compute_dtype(dtype))[:, None, :]

    def forward(self, x: torch.Tensor, c: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, H]; ``scale`` (from :meth:`scale`) replaces ``to_weight(c)`` when already computed."""
        work = compute_dtype(x.dtype)
        xw = x.to(work)
        y = xw * torch.rsqrt(xw.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.scale(c, x.dtype) if scale is None else scale
        return (w * y).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor | None):
        """x: [B, L, H]; key_mask: [B, L] bool (True = valid key) or None (all valid)."""
        cos, sin = rope
        q = apply_rope(self._heads(self.q_proj(x)), cos, sin)
        k = apply_rope(self._heads(self.k_proj(x)), cos, sin)
        v = self._heads(self.v_proj(x))
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        b, _, n, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.self_attn = Attention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, FFN_MULT * hidden_size)
        self.input_layernorm = AdaptiveRMSNorm(hidden_size, hidden_size)
        self.post_attention_layernorm = AdaptiveRMSNorm(hidden_size, hidden_size)

    def forward(self, h, c, rope, key_mask, scales: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``scales``: the two norms' precomputed scales (shared by the CFG pair), or None."""
        s_in, s_post = (None, None) if scales is None else scales
        h = h + self.self_attn(self.input_layernorm(h, c, s_in), rope, key_mask)
        return h + self.mlp(self.post_attention_layernorm(h, c, s_post))


def mlp_block(hidden_size: int) -> nn.Sequential:
    """Linear(H, 4H) -> SiLU -> Linear(4H, H) with biases (keys ``.0`` and ``.2``)."""
    return nn.Sequential(
        nn.Linear(hidden_size, FFN_MULT * hidden_size),
        nn.SiLU(),
        nn.Linear(FFN_MULT * hidden_size, hidden_size),
    )


class DiffusionTransformer(nn.Module):
    """The ``diff_estimator`` of both stages (``DiffLlamaPrefix`` / ``DiffLlama`` of the reference).

    ``cond_mlp`` exists when the owner conditions through it (S2A: per-frame semantic condition added to the
    input; TTS/Omni stage 1: phone prefix); the owner applies it and passes the result here.
    """

    def __init__(self, hidden_size: int, num_layers: int, num_heads: int, with_cond_mlp: bool):
        super().__init__()
        self.hidden_size = hidden_size
        self.head_dim = hidden_size // num_heads
        self.layers = nn.ModuleList(DecoderLayer(hidden_size, num_heads) for _ in range(num_layers))
        self.norm = AdaptiveRMSNorm(hidden_size, hidden_size)
        self.diff_step_mlp = mlp_block(hidden_size)
        self.cond_mlp = mlp_block(hidden_size) if with_cond_mlp else None
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._condition_cache: dict[tuple, tuple] = {}
        self._plan: StackPlan | None = None  # set by fuse()

    def step_condition(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t: [B] -> c [B, H]."""
        return self.diff_step_mlp(timestep_embedding(t, self.hidden_size, dtype))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        prefix: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, L, H] input rows; t: [B]; prefix: [B, P, H] rows prepended and dropped from the output.

        Returns [B, L, H]. Positions run 0..P+L-1 over ``[prefix ; x]``; ``key_mask`` [B, P+L] marks valid keys.
        """
        h = x if prefix is None else torch.cat([prefix, x], dim=1)
        c = self.step_condition(t, x.dtype)
        rope = rope_tables(h.shape[1], self.head_dim, h.device, h.dtype)
        for layer in self.layers:
            h = layer(h, c, rope, key_mask)
        h = self.norm(h, c)
        return h if prefix is None else h[:, prefix.shape[1] :]

    def rope(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`rope_tables`, cached per (length, device, dtype) outside ``torch.compile`` (same values)."""
        return self._cached_rope((length, device, dtype), lambda: rope_tables(length, self.head_dim, device, dtype))

    def pair_rope(self, first: int, second: int, device: torch.device, dtype: torch.dtype):
        """:func:`signed_rope` tables of two sequences packed along L, each with positions from 0 (cached like
        :meth:`rope`)."""

        def make():
            tables = (self.rope(first, device, dtype), self.rope(second, device, dtype))
            return signed_rope(*(torch.cat(pair) for pair in zip(*tables, strict=True)))

        return self._cached_rope(("pair", first, second, device, dtype), make)

    def fused_rope(self, length: int, device: torch.device, dtype: torch.dtype):
        """:func:`signed_rope` of :meth:`rope`'s tables (the stacked-weight layers' form; cached like it)."""
        return self._cached_rope(
            ("signed", length, device, dtype), lambda: signed_rope(*self.rope(length, device, dtype))
        )

    def _cached_rope(self, key: tuple, make) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():  # traced once per graph: no cache lookups inside it
            return make()
        if key not in self._rope_cache:
            if len(self._rope_cache) >= ROPE_CACHE_SIZE:
                self._rope_cache.clear()
            self._rope_cache[key] = make()
        return self._rope_cache[key]

    def fuse(self, on: bool = True, pack: bool = False) -> bool:
        """The fast path's stacked weights per layer (q/k/v and gate/up in one product each) on or off.

        On: every layer's projections share stacked weights (:func:`fuse_projections`) and :meth:`_stack` runs
        :func:`_fused_layer` instead of the modules. Off (or LoRA-wrapped layers): the modules, one projection per
        call, as before issue 20. ``pack``: the layers' weights are also kept in oneDNN's layout where that pays
        (:mod:`metis_rt.models.packed_linear`; float32 on a CPU, small enough stacks). Returns whether the stacked
        path is in use. Fusing fused weights again with the same ``pack`` is a no-op.
        """
        if on and self._plan is not None and self._plan.pack_asked == pack and self._fused_plan() is not None:
            return True
        self._plan = None
        if not on:
            return False
        plan = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, gate_up = fuse_projections(attn, QKV), fuse_projections(mlp, GATE_UP)
            if qkv is None or gate_up is None:
                return False
            plan.append((qkv, attn.o_proj.weight, gate_up, mlp.down_proj.weight))
        weights = self._projection_weights()
        if pack and sum(w.numel() * w.element_size() for w in weights) <= packed_linear.MAX_STACK_BYTES:
            plan = [tuple(packed_linear.pack(w) for w in layer) for layer in plan]
        # a packed copy does not follow in-place updates of the weights: watch their versions too
        copies = any(type(w) is packed_linear.PackedWeight for layer in plan for w in layer)
        self._plan = StackPlan(tuple(plan), stamp(weights, versions=copies), copies, pack)
        return True

    def packed(self) -> bool:
        """Whether the stacked layers multiply from oneDNN-packed weights (:meth:`fuse` with ``pack``)."""
        return self._plan is not None and self._plan.packed

    def _projection_weights(self) -> list[torch.Tensor]:
        weights = [getattr(lay.self_attn, n).weight for lay in self.layers for n in (*QKV, "o_proj")]
        return weights + [getattr(lay.mlp, n).weight for lay in self.layers for n in (*GATE_UP, "down_proj")]

    def _fused_plan(self):
        """The stacked (or packed) weights while every projection is unchanged: the same tensors, still viewing the
        stacked ones (not after a move or a replaced weight; an in-place update changes the views and the stacked
        tensor alike) and, where packed copies are kept, not updated in place since they were made."""
        plan = self._plan
        if plan is None:
            return None
        if torch.compiler.is_compiling():  # traced once per graph (data_ptr would break it); fuse() again after a move
            return plan.layers
        return plan.layers if still_unchanged(plan.stamp, self._projection_weights, versions=plan.packed) else None

    def _stack(self, h, c, scales, key_mask):
        plan = self._fused_plan()
        if plan is None:
            rope = self.rope(h.shape[1], h.device, h.dtype)
            for layer, layer_scales in zip(self.layers, scales[:-1], strict=True):
                h = layer(h, c, rope, key_mask, layer_scales)
            return self.norm(h, c, scales[-1])
        return self._fused_stack(plan, h, scales, self.fused_rope(h.shape[1], h.device, h.dtype), key_mask, None)

    def _fused_stack(self, plan, h, scales, rope, key_mask, split: int | None) -> torch.Tensor:
        heads, eps = self.layers[0].self_attn.num_heads, self.norm.eps
        for weights, layer_scales in zip(plan, scales[:-1], strict=True):
            h = _fused_layer(h, weights, layer_scales, rope, key_mask, heads, eps, split)
        return _norm(h, scales[-1], eps)

    def _packed_pair(self, plan, h, uncond_x, scales, key_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The CFG pair as one sequence per row: ``[h ; uncond_x]`` along L through one set of products per layer,
        each half attending to itself with its own positions (0.. for both). Row for row the arithmetic of two
        :meth:`_stack` calls, with half the calls (no padding: the unconditional input is usually much shorter)."""
        split = h.shape[1]
        rope = self.pair_rope(split, uncond_x.shape[1], h.device, h.dtype)
        out = self._fused_stack(plan, torch.cat([h, uncond_x], dim=1), scales, rope, key_mask, split)
        return out[:, :split], out[:, split:]

    def guided(
        self, x: torch.Tensor, t: torch.Tensor, drop: int, **options
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states of the target rows: (conditional, guided-or-None), each [B, L - drop, H].

        x [B, L, H]; t [B]; the first ``drop`` output rows (the prompt) are dropped. ``options`` are
        :meth:`guided_rows`'s: ``prefix``/``key_mask`` as in :meth:`forward`; ``uncond_x`` [B, L - drop, H], the
        unconditional input, run with the same step condition and norm scales, then combined by :func:`guide` with
        ``cfg``/``rescale``.
        """
        c, scales = self.conditioning(t, x.dtype)
        return self.guided_rows(x, c, scales, drop, **options)

    def conditioning(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, list]:
        """(step condition c [B, H], every adaptive norm's scale) for timesteps ``t`` [B].

        Remembered per ``t`` tensor (the decoding loop passes the same tensors every hop:
        :func:`~metis_rt.models.decoding.step_times`) while the weights they come from are unchanged.
        """
        key = (id(t), dtype)
        hit = self._condition_cache.get(key)
        if hit is not None and hit[0] is t and still_unchanged(hit[1], self._condition_params):
            return hit[2], hit[3]
        c = self.step_condition(t, dtype)
        scales = [
            (lay.input_layernorm.scale(c, dtype), lay.post_attention_layernorm.scale(c, dtype)) for lay in self.layers
        ]
        scales.append(self.norm.scale(c, dtype))
        if not torch.compiler.is_compiling() and not torch.is_grad_enabled():
            if len(self._condition_cache) >= CONDITION_CACHE_SIZE:
                self._condition_cache.clear()
            self._condition_cache[key] = (t, stamp(self._condition_params()), c, scales)
        return c, scales

    def _condition_params(self) -> list[torch.Tensor]:
        """The weights the step condition and the norm scales come from: the step MLP's and every adaptive norm's
        (direct attribute reads: called per decoding step)."""
        linears = [self.diff_step_mlp[0], self.diff_step_mlp[2], self.norm.to_weight]
        for lay in self.layers:
            linears += (lay.input_layernorm.to_weight, lay.post_attention_layernorm.to_weight)
        return [t for lin in linears for t in (lin.weight, lin.bias) if t is not None]

    def guided_rows(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        scales: list,
        drop: int,
        *,
        prefix: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        uncond_x: torch.Tensor | None = None,
        cfg: float = 0.0,
        rescale: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`guided` after the conditioning: what ``torch.compile`` captures (:mod:`metis_rt.models.hop_speed`)."""
        h = x if prefix is None else torch.cat([prefix, x], dim=1)
        first = (0 if prefix is None else prefix.shape[1]) + drop
        if uncond_x is None:
            return self._stack(h, c, scales, key_mask)[:, first:], None
        plan = self._fused_plan()
        if plan is None:
            cond, uncond = self._stack(h, c, scales, key_mask), self._stack(uncond_x, c, scales, None)
        else:
            cond, uncond = self._packed_pair(plan, h, uncond_x, scales, key_mask)
        cond = cond[:, first:]
        return cond, guide(cond, uncond, cfg, rescale)
