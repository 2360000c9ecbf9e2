"""Loading every model a task needs from a model directory (the official hub layout, merged).

The model configuration is ours (``configs/metis.yaml``, the official numbers); an Amphion-format
``config.json`` inside the model directory, when present, overrides the sizes (parity vectors, other sizes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from metis_rt.config import ModelConfig, OfficialConfig, from_amphion, load_official_config
from metis_rt.errors import ConfigError
from metis_rt.models.acoustic_codec import AcousticCodec, CodecDecoder, CodecEncoder
from metis_rt.models.checkpoints import load_module
from metis_rt.models.s2a import UNUSED_KEYS, S2AModel
from metis_rt.models.semantic_codec import SemanticCodec
from metis_rt.models.ssl import SslFeatures
from metis_rt.models.stage1 import Stage1Model
from metis_rt.models.stage1_loading import load_stage1

log = logging.getLogger(__name__)

AMPHION_CONFIG = "config.json"
SEMANTIC_CODEC_FILE = "semantic_codec/model.safetensors"
CODEC_ENCODER_FILE = "acoustic_codec/model.safetensors"
CODEC_DECODER_FILE = "acoustic_codec/model_1.safetensors"
S2A_FILES = {
    "s2a_1layer": "s2a_model/s2a_model_1layer/model.safetensors",
    "s2a_full": "s2a_model/s2a_model_full/model.safetensors",
}
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def resolve_config(model_dir: str | Path, task: str | None = None, official: OfficialConfig | None = None):
    """(ModelConfig, OfficialConfig): our official config, overridden by ``model_dir/config.json`` if present."""
    official = official or load_official_config()
    path = Path(model_dir) / AMPHION_CONFIG
    if not path.is_file():
        return official.model, official
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    return from_amphion(data, official.model, task), official


def resolve_config_for_tasks(model_dir: str | Path, tasks, official: OfficialConfig | None = None):
    """Like :func:`resolve_config`, with each task's LoRA rank/alpha (an Amphion config.json names one task's)."""
    cfg, official = resolve_config(model_dir, tasks[0], official)
    lora = {task: resolve_config(model_dir, task, official)[0].lora_for(task) for task in tasks}
    return dataclasses.replace(cfg, lora={**cfg.lora, **lora}), official


def load_s2a(model_dir: str | Path, which: str, cfg: ModelConfig, *, dtype, device) -> S2AModel:
    path = Path(model_dir) / S2A_FILES[which]
    build = lambda: S2AModel(getattr(cfg, which))  # noqa: E731
    return load_module(build, path, "S2A model", ignore=lambda k: k in UNUSED_KEYS, dtype=dtype, device=device)


def random_components(
    cfg: ModelConfig,
    variants: Sequence[str],
    *,
    w2v_overrides: dict | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> MetisComponents:
    """Every component at the sizes of ``cfg`` with random weights (benchmarks of architectures we cannot
    download here). w2v-BERT uses the transformers defaults (= facebook/w2v-bert-2.0) unless overridden."""
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    from metis_rt.models.stage1_loading import stage1_config

    torch.manual_seed(seed)
    w2v_cfg = Wav2Vec2BertConfig(**(w2v_overrides or {}))
    w2v_cfg.num_hidden_layers, w2v_cfg.mask_time_prob = cfg.ssl.hidden_state_index, 0.0
    dim = w2v_cfg.hidden_size
    ssl = SslFeatures(SeamlessM4TFeatureExtractor(), Wav2Vec2BertModel(w2v_cfg), torch.zeros(dim), torch.ones(dim))
    comps = MetisComponents(
        cfg=cfg,
        ssl=ssl,
        semantic_codec=SemanticCodec(cfg.semantic_codec),
        acoustic_codec=AcousticCodec(CodecEncoder(cfg.codec_encoder), CodecDecoder(cfg.codec_decoder)),
        s2a_1layer=S2AModel(cfg.s2a_1layer),
        s2a_full=S2AModel(cfg.s2a_full),
        stage1={v: Stage1Model(stage1_config(v, cfg.stage1)) for v in variants},
        dtype=dtype,
        device=torch.device(device),
    )
    for module in (
        comps.ssl,
        comps.semantic_codec,
        comps.acoustic_codec,
        comps.s2a_1layer,
        comps.s2a_full,
        *comps.stage1.values(),
    ):
        module.to(device=device, dtype=dtype).eval()
    return comps


@dataclass
class MetisComponents:
    """Everything the offline and streaming pipelines run, on one device and dtype."""

    cfg: ModelConfig
    ssl: SslFeatures
    semantic_codec: SemanticCodec
    acoustic_codec: AcousticCodec
    s2a_1layer: S2AModel
    s2a_full: S2AModel
    stage1: dict[str, Stage1Model] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")

    def generative_models(self) -> dict[str, Stage1Model | S2AModel]:
        """The masked generative models (each runs a ``diff_estimator`` transformer stack), by name:
        ``s2a_1layer``, ``s2a_full``, then ``stage1.<variant>`` per loaded variant."""
        stage1 = {f"stage1.{name}": model for name, model in self.stage1.items()}
        return {"s2a_1layer": self.s2a_1layer, "s2a_full": self.s2a_full, **stage1}


def load_components(
    model_dir: str | Path,
    variants: Sequence[str],
    cfg: ModelConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> MetisComponents:
    """Load the shared models plus the stage-1 ``variants`` (e.g. ``["se"]``, ``["base", "tse"]``)."""
    root = Path(model_dir)
    opts = {"dtype": dtype, "device": device}
    log.info("loading models from %s (%s, %s)", root, dtype, device)
    comps = MetisComponents(
        cfg=cfg,
        ssl=SslFeatures.load(root, hidden_state_index=cfg.ssl.hidden_state_index, **opts),
        semantic_codec=SemanticCodec.load(root / SEMANTIC_CODEC_FILE, cfg.semantic_codec, **opts),
        acoustic_codec=AcousticCodec.load(
            root / CODEC_ENCODER_FILE, root / CODEC_DECODER_FILE, cfg.codec_encoder, cfg.codec_decoder, **opts
        ),
        s2a_1layer=load_s2a(root, "s2a_1layer", cfg, **opts),
        s2a_full=load_s2a(root, "s2a_full", cfg, **opts),
        dtype=dtype,
        device=torch.device(device),
    )
    for variant in variants:
        comps.stage1[variant] = load_stage1(root, variant, cfg, **opts)
    return comps
