"""The Amphion-format ``config.json`` of a pre-trained model directory (the sizes the loaders read back).

Each export merges its own section into ``<out_dir>/config.json``:

* SSL: ``model.ssl.hidden_state_index`` (our key; Amphion hard-codes 17 — the w2v network itself is described by
  ``w2v-bert-2.0/config.json``);
* semantic codec: ``model.semantic_codec.*``; acoustic codec: ``model.acoustic_codec.{encoder,decoder}.*``;
* Metis base: ``model.t2s_model.*``; S2A: ``model.s2a_model.{s2a_1layer,s2a_full}.*``.

So five exports into one directory give one complete config.json; exports in separate directories are merged by
:func:`assemble_model_dir`. :func:`pretrained_model_config` reads a directory's sizes back (``resolve_config``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metis_rt.config import (
    CodecDecoderConfig,
    CodecEncoderConfig,
    ModelConfig,
    S2AConfig,
    SemanticCodecConfig,
    Stage1Config,
    deep_merge,
)
from metis_rt.errors import ConfigError
from metis_rt.pipeline.components import AMPHION_CONFIG, resolve_config

SSL_SECTION = "ssl"


def update_config_json(model_dir: Path, section: Mapping[str, Any]) -> Path:
    """Merge ``{"model": {...}}`` into ``model_dir/config.json`` (created if absent); returns its path."""
    path = Path(model_dir) / AMPHION_CONFIG
    current: dict[str, Any] = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); delete it or fix it before exporting") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(deep_merge(current, section), indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------- sections
def ssl_section(hidden_state_index: int) -> dict[str, Any]:
    return {"model": {SSL_SECTION: {"hidden_state_index": hidden_state_index}}}


def semantic_codec_section(cfg: SemanticCodecConfig) -> dict[str, Any]:
    return {"model": {"semantic_codec": dataclasses.asdict(cfg)}}


def acoustic_codec_section(
    enc: CodecEncoderConfig, dec: CodecDecoderConfig, quantizer_dropout: float, commitment: float, codebook: float
) -> dict[str, Any]:
    decoder = {k: v for k, v in dataclasses.asdict(dec).items() if k != "in_channels"}
    decoder.update(
        # `in_channel` is what Amphion's configs spell (and its code ignores); `in_channels` is what both read.
        in_channel=dec.in_channels,
        in_channels=dec.in_channels,
        quantizer_type="fvq",
        quantizer_dropout=quantizer_dropout,
        commitment=commitment,
        codebook_loss_weight=codebook,
        use_l2_normlize=True,
        use_vocos=True,
        padding="same",
    )
    encoder = dataclasses.asdict(enc)
    encoder["up_ratios"] = list(enc.up_ratios)
    return {"model": {"acoustic_codec": {"encoder": encoder, "decoder": decoder}}}


def t2s_section(cfg: Stage1Config, no_prompt_prob: float) -> dict[str, Any]:
    keys = ("hidden_size", "num_layers", "num_heads", "cond_codebook_size", "cond_dim")
    section = {k: getattr(cfg, k) for k in keys}
    section.update(cfg_scale=no_prompt_prob, use_phone_cond=False, use_lora=False)
    return {"model": {"t2s_model": section}}


def s2a_section(
    one_layer: S2AConfig, full: S2AConfig, no_prompt_prob: float, schedule: str, full_predicts_layer0: bool
) -> dict[str, Any]:
    def one(cfg: S2AConfig, predict_layer_1: bool) -> dict[str, Any]:
        return {
            **dataclasses.asdict(cfg),
            "predict_layer_1": predict_layer_1,
            "cfg_scale": no_prompt_prob,
            "mask_layer_schedule": schedule,
        }

    return {"model": {"s2a_model": {"s2a_1layer": one(one_layer, True), "s2a_full": one(full, full_predicts_layer0)}}}


# ----------------------------------------------------------------------------- reading back
def pretrained_model_config(model_dir: str | Path, task: str | None = None) -> ModelConfig:
    """The sizes of a pre-trained model directory (``resolve_config``, which reads ``model.ssl`` too)."""
    return resolve_config(model_dir, task)[0]


def assemble_model_dir(parts: Sequence[str | Path], out_dir: str | Path, *, link: bool = True) -> Path:
    """One model directory from several export directories: files symlinked (or copied), config.json merged.

    A file present in two parts is an error (two exports of the same component).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {}
    seen: dict[str, Path] = {}
    for part in map(Path, parts):
        for item in sorted(p for p in part.rglob("*") if p.is_file()):
            rel = item.relative_to(part).as_posix()
            if rel == AMPHION_CONFIG:
                merged = deep_merge(merged, json.loads(item.read_text()))
                continue
            if rel in seen:
                raise ConfigError(f"{rel} is exported by both {seen[rel]} and {part}; keep one of them")
            seen[rel] = part
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if link:
                target.symlink_to(item.resolve())
            else:
                shutil.copy2(item, target)
    update_config_json(out, merged)
    return out
