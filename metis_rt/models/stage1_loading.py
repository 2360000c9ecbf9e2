"""Which files make each released stage-1 variant, and how they are loaded (strictly) into :class:`Stage1Model`.

| variant        | files (model-dir relative)                                              | adapter | phones |
|----------------|-------------------------------------------------------------------------|---------|--------|
| base           | metis_base/model.safetensors                                            | none    | no     |
| se / tse / vc  | metis_base + metis_<t>/metis_<t>_lora_<r>.safetensors (+ ``_adapter``)  | gated   | no     |
| omni           | metis_omni/metis_omni.safetensors                                       | gated   | yes    |
| l2s            | metis_l2s/metis_l2s.safetensors (condition = visual features)           | mlp     | no     |
| tts            | t2s_model/model.safetensors (MaskGCT T2S)                               | none    | yes    |

Task variants follow the official LoRA recipe: base weights, then the 5 ``model.cond_adapter.*`` tensors, then the
LoRA pairs merged with scaling ``alpha / r`` from the config. Every tensor of each file must be consumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from metis_rt.config import ModelConfig, Stage1Config
from metis_rt.models.checkpoints import assert_materialised, file_layout, load_checkpoint, on_meta
from metis_rt.models.lora import LORA_FILE_PREFIX, inject_lora, is_lora_key, merge_lora
from metis_rt.models.stage1 import Stage1Model

LORA_VARIANTS = ("se", "tse", "vc")
FULL_VARIANT_FILES = {
    "base": "metis_base/model.safetensors",
    "omni": "metis_omni/metis_omni.safetensors",
    "l2s": "metis_l2s/metis_l2s.safetensors",
    "tts": "t2s_model/model.safetensors",
}
STAGE1_VARIANTS = ("base", *LORA_VARIANTS, "omni", "l2s", "tts")
ADAPTER_PREFIX = "cond_adapter."


@dataclass(frozen=True)
class Stage1Files:
    """Model-dir-relative files of one variant: ``main`` always, ``adapter``/``lora`` for task variants."""

    main: str
    adapter: str | None = None
    lora: str | None = None

    def all(self) -> list[str]:
        return [f for f in (self.main, self.adapter, self.lora) if f is not None]


def stage1_files(variant: str, cfg: ModelConfig) -> Stage1Files:
    if variant in LORA_VARIANTS:
        r = cfg.lora_for(variant).r
        stem = f"metis_{variant}/metis_{variant}_lora_{r}"
        return Stage1Files(FULL_VARIANT_FILES["base"], f"{stem}_adapter.safetensors", f"{stem}.safetensors")
    if variant in FULL_VARIANT_FILES:
        return Stage1Files(FULL_VARIANT_FILES[variant])
    raise ValueError(f"unknown stage-1 variant {variant!r}; expected one of {STAGE1_VARIANTS}")


def stage1_config(variant: str, cfg: Stage1Config) -> Stage1Config:
    """Architecture of ``variant`` derived from the shared stage-1 sizes."""
    if variant == "base":
        return dataclasses.replace(cfg, adapter="none", use_phone_cond=False)
    if variant in LORA_VARIANTS:
        return dataclasses.replace(cfg, adapter="gated", use_phone_cond=False)
    if variant == "omni":
        return dataclasses.replace(cfg, adapter="gated", use_phone_cond=True)
    if variant == "l2s":
        return dataclasses.replace(cfg, adapter="mlp", use_phone_cond=False, cond_dim=cfg.visual_dim)
    if variant == "tts":
        return dataclasses.replace(cfg, adapter="none", use_phone_cond=True)
    raise ValueError(f"unknown stage-1 variant {variant!r}; expected one of {STAGE1_VARIANTS}")


def build_stage1(variant: str, cfg: ModelConfig, *, with_lora: bool = False) -> Stage1Model:
    """The variant's module on the meta device (unmerged LoRA wrappers when ``with_lora``)."""
    with on_meta():
        model = Stage1Model(stage1_config(variant, cfg.stage1))
        if with_lora:
            lora = cfg.lora_for(variant)
            inject_lora(model, lora.r, lora.alpha)
    return model


def expected_file_layouts(variant: str, cfg: ModelConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """For each file of ``variant``: the tensor names and shapes it must hold."""
    files = stage1_files(variant, cfg)
    if variant not in LORA_VARIANTS:
        return {files.main: file_layout(build_stage1(variant, cfg))}
    layout = file_layout(build_stage1(variant, cfg, with_lora=True))
    base = {k.replace(".base_layer.", "."): s for k, s in layout.items()}
    return {
        files.main: {k: s for k, s in base.items() if not (k.startswith(ADAPTER_PREFIX) or is_lora_key(k))},
        files.adapter: {LORA_FILE_PREFIX + k: s for k, s in layout.items() if k.startswith(ADAPTER_PREFIX)},
        files.lora: {LORA_FILE_PREFIX + k: s for k, s in layout.items() if is_lora_key(k)},
    }


def load_stage1(
    model_dir: str | Path,
    variant: str,
    cfg: ModelConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Stage1Model:
    """Load a released stage-1 variant strictly from a model directory (LoRA merged for task variants)."""
    root = Path(model_dir)
    files = stage1_files(variant, cfg)
    model = build_stage1(variant, cfg)
    opts = {"dtype": dtype, "device": device}
    if variant not in LORA_VARIANTS:
        load_checkpoint(model, root / files.main, **opts)
    else:
        load_checkpoint(model, root / files.main, only=lambda k: not k.startswith(ADAPTER_PREFIX), **opts)
        load_checkpoint(
            model,
            root / files.adapter,
            prefix=LORA_FILE_PREFIX,
            only=lambda k: k.startswith(ADAPTER_PREFIX),
            **opts,
        )
        lora = cfg.lora_for(variant)
        with torch.device(device):
            inject_lora(model, lora.r, lora.alpha)
        load_checkpoint(model, root / files.lora, prefix=LORA_FILE_PREFIX, only=is_lora_key, **opts)
        merge_lora(model)
    assert_materialised(model, f"stage-1 variant {variant!r} from {root}")
    return model.eval()
