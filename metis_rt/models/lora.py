"""LoRA on the stage-1 denoiser, in the layout of the official Metis files.

The official files are parameter dumps of a peft ``LoraModel`` whose target modules are every
``q/k/v/o_proj`` and ``gate/up/down_proj`` of ``diff_estimator.layers.*``; names are
``model.<module path>.lora_{A,B}.default.weight`` with A [r, in] and B [out, r]; scaling = alpha / r (peft default:
no rslora, no DoRA). :class:`LoraLinear` reproduces that layout (``base_layer``, ``lora_A.default``,
``lora_B.default``) so the strict loader maps the file one to one; :func:`merge_lora` folds
``W += scaling * B @ A`` for inference. Training (unmerged) and inference (merged) use this one implementation.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from metis_rt.models.checkpoints import compute_dtype

ADAPTER_NAME = "default"
LORA_FILE_PREFIX = "model."
TARGET_PATTERN = re.compile(r"^diff_estimator\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)$")


class LoraLinear(nn.Module):
    """``base_layer(x) + scaling * lora_B(lora_A(x))``."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        self.base_layer = base_layer
        self.scaling = alpha / r
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.ModuleDict({ADAPTER_NAME: nn.Linear(base_layer.in_features, r, bias=False, **factory)})
        self.lora_B = nn.ModuleDict({ADAPTER_NAME: nn.Linear(r, base_layer.out_features, bias=False, **factory)})
        if not base_layer.weight.is_meta:
            nn.init.zeros_(self.lora_B[ADAPTER_NAME].weight)  # an untrained adapter is the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_A[ADAPTER_NAME], self.lora_B[ADAPTER_NAME]
        return self.base_layer(x) + self.scaling * b(a(x))

    def merged(self) -> nn.Linear:
        """A plain Linear with ``W + scaling * B @ A`` (computed in at least float32)."""
        base = self.base_layer
        work = compute_dtype(base.weight.dtype)
        delta = self.lora_B[ADAPTER_NAME].weight.to(work) @ self.lora_A[ADAPTER_NAME].weight.to(work)
        weight = (base.weight.to(work) + self.scaling * delta).to(base.weight.dtype)
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        out.weight = nn.Parameter(weight, requires_grad=base.weight.requires_grad)
        if base.bias is not None:
            out.bias = base.bias
        return out


def target_names(model: nn.Module) -> list[str]:
    return [name for name, sub in model.named_modules() if TARGET_PATTERN.match(name) and isinstance(sub, nn.Linear)]


def inject_lora(model: nn.Module, r: int, alpha: float) -> list[str]:
    """Wrap every target Linear of ``model`` in a :class:`LoraLinear`; returns the wrapped module names."""
    names = target_names(model)
    if not names:
        raise ValueError("no LoRA target modules (diff_estimator.layers.*.{q,k,v,o,gate,up,down}_proj) found")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, LoraLinear(getattr(parent, attr), r, alpha))
    return names


def merge_lora(model: nn.Module) -> int:
    """Replace every LoraLinear by its merged Linear; returns how many were merged."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]
    for name, module in wrapped:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, module.merged())
    return len(wrapped)


def is_lora_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable LoRA tensors under their official file names."""
    return {LORA_FILE_PREFIX + k: p for k, p in model.named_parameters() if is_lora_key(k)}
