"""Model chains the hop benchmarks build without weights files: tiny (the parity models), compact and official
sizes with random weights. Timing does not depend on the weights, only on the architecture and the settings.

Each builder returns ``(components, official decoding settings, streaming settings)``; the compact and tiny ones carry
their own ``metis-rt.yaml`` settings (configs/models/compact.yaml; the parity models' defaults).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metis_rt.config import (  # noqa: E402
    CodecDecoderConfig,
    ModelConfig,
    S2AConfig,
    SemanticCodecConfig,
    SslConfig,
    Stage1Config,
    load_official_config,
)
from metis_rt.model_settings import check_codebooks, load_official_for, load_stream_config_for  # noqa: E402
from metis_rt.pipeline.components import load_components, random_components, resolve_config  # noqa: E402
from metis_rt.streaming.config import load_stream_config  # noqa: E402

PARITY = REPO / "tests" / "data" / "parity"
COMPACT_SETTINGS = REPO / "configs" / "models" / "compact.yaml"
MODEL_SIZES = ("tiny", "compact", "official")

# The compact sizes of bench/train_small_chain.sh SIZE=compact (bench/RESULTS.md "Compact CPU sizes").
COMPACT_SSL_DIM = 128
COMPACT_SEMANTIC_CODES = 256
COMPACT_W2V = {"hidden_size": COMPACT_SSL_DIM, "intermediate_size": 4 * COMPACT_SSL_DIM, "num_attention_heads": 8}


def compact_config() -> ModelConfig:
    base = ModelConfig()
    s2a = {"hidden_size": 192, "num_layers": 3, "num_heads": 12, "codebook_size": 512}
    return dataclasses.replace(
        base,
        ssl=SslConfig(hidden_state_index=4),
        semantic_codec=SemanticCodecConfig(
            codebook_size=COMPACT_SEMANTIC_CODES,
            hidden_size=COMPACT_SSL_DIM,
            vocos_dim=128,
            vocos_intermediate_dim=384,
            vocos_num_layers=2,
        ),
        stage1=Stage1Config(
            hidden_size=256, num_layers=4, cond_codebook_size=COMPACT_SEMANTIC_CODES, cond_dim=COMPACT_SSL_DIM
        ),
        s2a_1layer=S2AConfig(num_quantizer=1, cond_codebook_size=COMPACT_SEMANTIC_CODES, **s2a),
        s2a_full=S2AConfig(num_quantizer=4, cond_codebook_size=COMPACT_SEMANTIC_CODES, **s2a),
        codec_decoder=CodecDecoderConfig(
            num_quantizers=4, codebook_size=512, vocos_dim=192, vocos_intermediate_dim=576, vocos_num_layers=4
        ),
    )


def build_chain(size: str, task: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(components, official decoding settings, streaming settings) of ``size`` for ``task``."""
    if size == "tiny":
        model_dir = PARITY / task
        official, stream_cfg = load_official_for(model_dir), load_stream_config_for(model_dir)
        cfg, _ = resolve_config(model_dir, task, official)
        check_codebooks(model_dir, cfg, [task], official, stream_cfg)
        return load_components(model_dir, [task], cfg, dtype=dtype, device=device), official, stream_cfg
    if size == "compact":
        with tempfile.TemporaryDirectory() as tmp:  # the settings file as a model directory carries it
            shutil.copy(COMPACT_SETTINGS, Path(tmp) / "metis-rt.yaml")
            official, stream_cfg = load_official_for(tmp), load_stream_config_for(tmp)
        comps = random_components(compact_config(), [task], w2v_overrides=COMPACT_W2V, dtype=dtype, device=device)
        return comps, official, stream_cfg
    if size == "official":
        comps = random_components(ModelConfig(), [task], dtype=dtype, device=device)
        return comps, load_official_config(), load_stream_config()
    raise SystemExit(f"model size must be one of {', '.join(MODEL_SIZES)}, not {size!r}")
