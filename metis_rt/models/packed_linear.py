"""Weights packed once for oneDNN's matrix product, for the few rows of a streaming window on a CPU (issue 20).

torch's default CPU product (MKL's sgemm) rearranges the weight matrix into its blocked layout on every call. With
the 14-40 rows of a streaming window that rearranging, over a weight that is no longer in cache, costs about as much
as the arithmetic: a [38, 192] x [192, 1536] product took 415 us inside a compact hop against 262 us in a hot loop.
oneDNN (``torch.ops.mkldnn``, the kernels inductor uses for frozen CPU weights) takes the weight in its own layout
once, when the stack is fused, and multiplies from it directly: 1.5-1.8x on the compact stacks' wide products with
the weights out of cache (bench/RESULTS.md, "Fourth pass"), slower on products narrower than :data:`MIN_SIDE`.

Where: the stacked transformer layers (:meth:`~metis_rt.models.transformer.DiffusionTransformer.fuse`), whose
weights the fast path already watches for changes. When: float32 on a CPU, gradients off, both sides of the weight
at least :data:`MIN_SIDE`, the stack's projection weights at most :data:`MAX_STACK_BYTES` (the packed copy doubles
their memory; the official sizes keep one copy), and oneDNN present and agreeing with ``F.linear`` on a trial
product (:func:`supported`). Anything else runs ``F.linear`` on the original weight. Results equal ``F.linear``'s
within float32 rounding (another summation order), not bit for bit; float64 (the parity vectors) is never packed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIN_SIDE = 128  # narrower products (the tiny models' 32-48) run faster through F.linear (bench/RESULTS.md)
MAX_STACK_BYTES = 64 * 2**20  # pack a stack's projections only up to this much (the copy doubles them)
ROWS_HINT = 64  # the row count oneDNN lays the weight out for (any count runs)


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A weight [out, in] and oneDNN's layout of it (the original stays the module's parameter)."""

    weight: torch.Tensor
    packed: torch.Tensor


@functools.cache
def supported() -> bool:
    """oneDNN's packed product is present and gives ``F.linear``'s values on a trial (within float32 rounding)."""
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None:
        return False
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(MIN_SIDE, MIN_SIDE + 8, generator=g)
        x = torch.randn(2, 5, MIN_SIDE + 8, generator=g)
        b = torch.randn(MIN_SIDE, generator=g)
        with torch.inference_mode():
            got = _product(x, PackedWeight(w, torch.ops.mkldnn._reorder_linear_weight(w, ROWS_HINT)), b)
        return got.shape == (2, 5, MIN_SIDE) and torch.allclose(got, F.linear(x, w, b), rtol=1e-4, atol=1e-4)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def pack(weight: torch.Tensor) -> torch.Tensor | PackedWeight:
    """``weight`` in oneDNN's layout where that pays (a float32 CPU matrix at least :data:`MIN_SIDE` on both sides,
    oneDNN present), else ``weight`` itself."""
    wide_float32_cpu = (
        weight.dim() == 2
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and min(weight.shape) >= MIN_SIDE
    )
    if not (wide_float32_cpu and supported()):
        return weight
    with torch.inference_mode(False), torch.no_grad():
        return PackedWeight(weight, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT))


def linear(x: torch.Tensor, weight: torch.Tensor | PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` on a weight or a :class:`PackedWeight` (its packed layout for float32 CPU inputs without
    gradients; the original weight otherwise)."""
    if type(weight) is not PackedWeight:
        return F.linear(x, weight, bias)
    if x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_grad_enabled():
        return F.linear(x, weight.weight, bias)
    return _product(x, weight, bias)


def _product(x: torch.Tensor, weight: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.packed, bias, "none", [None], "")
