"""Frozen, already pre-trained components that later trainers tokenise their audio with.

The semantic codec learns on SSL features; Metis base on semantic ids; S2A on semantic + acoustic ids. Each
upstream component is loaded from its export directory through the normal loaders (so a trainer always sees what
inference will see), kept in eval mode and run without gradients. Batches of equal-length crops only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metis_rt.config import ModelConfig
from metis_rt.models.acoustic_codec import AcousticCodec
from metis_rt.models.semantic_codec import SemanticCodec
from metis_rt.models.ssl import SSL_SAMPLE_RATE, ExtractorOutput, SslFeatures
from metis_rt.pipeline.components import CODEC_DECODER_FILE, CODEC_ENCODER_FILE, SEMANTIC_CODEC_FILE
from metis_rt.train.pretrain.config_json import pretrained_model_config


def load_ssl(model_dir: str | Path, device: torch.device) -> tuple[SslFeatures, ModelConfig]:
    cfg = pretrained_model_config(model_dir)
    ssl = SslFeatures.load(model_dir, hidden_state_index=cfg.ssl.hidden_state_index, device=device)
    return ssl.requires_grad_(False), cfg


def load_semantic_codec(model_dir: str | Path, device: torch.device) -> tuple[SemanticCodec, ModelConfig]:
    cfg = pretrained_model_config(model_dir)
    codec = SemanticCodec.load(Path(model_dir) / SEMANTIC_CODEC_FILE, cfg.semantic_codec, device=device)
    return codec.requires_grad_(False), cfg


def load_acoustic_codec(model_dir: str | Path, device: torch.device) -> tuple[AcousticCodec, ModelConfig]:
    cfg = pretrained_model_config(model_dir)
    root = Path(model_dir)
    codec = AcousticCodec.load(
        root / CODEC_ENCODER_FILE, root / CODEC_DECODER_FILE, cfg.codec_encoder, cfg.codec_decoder, device=device
    )
    return codec.requires_grad_(False), cfg


@torch.no_grad()
def ssl_features(ssl: SslFeatures, wavs_16k: np.ndarray) -> torch.Tensor:
    """Equal-length 16 kHz crops [B, N] -> normalised SSL features [B, T, D] (one extractor + encoder pass)."""
    out = ssl.extractor(list(wavs_16k), sampling_rate=SSL_SAMPLE_RATE, return_tensors="pt")
    feats = ExtractorOutput(out["input_features"], out["attention_mask"].long())
    return ssl.normalise(ssl.hidden(feats))


@dataclass
class FrozenTokenizer:
    """SSL + semantic codec (+ acoustic codec): audio crops -> the ids a generative model learns."""

    ssl: SslFeatures
    semantic_codec: SemanticCodec
    acoustic_codec: AcousticCodec | None = None

    @classmethod
    def load(
        cls,
        ssl_dir: str | Path,
        semantic_codec_dir: str | Path,
        acoustic_codec_dir: str | Path | None,
        device: torch.device,
    ) -> FrozenTokenizer:
        ssl, _ = load_ssl(ssl_dir, device)
        semantic, _ = load_semantic_codec(semantic_codec_dir, device)
        acoustic = None if acoustic_codec_dir is None else load_acoustic_codec(acoustic_codec_dir, device)[0]
        if semantic.cfg.hidden_size != ssl.dim:
            raise ValueError(
                f"semantic codec in {semantic_codec_dir} expects {semantic.cfg.hidden_size}-d features but the SSL "
                f"model in {ssl_dir} gives {ssl.dim}-d; train the codec on that SSL model"
            )
        return cls(ssl, semantic, acoustic)

    @torch.no_grad()
    def semantic_ids(self, wavs_16k: np.ndarray) -> torch.Tensor:
        """[B, N] at 16 kHz -> ids [B, T] (T = N / 320 - 1 for frame-aligned crops)."""
        return self.semantic_codec(ssl_features(self.ssl, wavs_16k))

    @torch.no_grad()
    def acoustic_ids(self, wavs_24k: torch.Tensor) -> torch.Tensor:
        """[B, N] at 24 kHz -> ids [B, N / 480, Q]."""
        if self.acoustic_codec is None:
            raise RuntimeError("this tokenizer was loaded without an acoustic codec")
        return self.acoustic_codec.encode(wavs_24k)
