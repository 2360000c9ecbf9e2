"""Pre-training a small w2v-BERT (``Wav2Vec2BertModel``) HuBERT-style: masked prediction of cluster ids.

Recipe:
1. ``batches()`` fits the targets first: k-means (:mod:`kmeans`) on MFCCs of the first ``targets.fit_examples``
   crops (iteration 1), or on the features of an earlier SSL export (iteration 2, ``targets.source: ssl``).
2. Per batch: the SeamlessM4T extractor (as at inference) -> 160-d frames at 50 Hz; HuBERT span masking (each
   frame starts a span of ``span_frames`` with probability ``start_prob``) replaces masked frames after the
   feature projection by the learned ``masked_spec_embed``.
3. Loss: cross-entropy of a linear head on ``hidden_states[loss_layer]`` against the frame's cluster id, on masked
   frames only.

Export (``out_dir``): ``w2v-bert-2.0/{config.json, model.safetensors, preprocessor_config.json}``,
``wav2vec2bert_stats.pt`` (mean/var of ``hidden_states[hidden_state_index]`` over the first ``stats_examples``
crops) and ``model.ssl.hidden_state_index`` in ``config.json``. The loader computes only the first
``hidden_state_index`` layers.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

from metis_rt.errors import ConfigError
from metis_rt.models.ssl import SSL_SAMPLE_RATE, STATS_FILE, W2V_DIR, W2V_WEIGHTS, ExtractorOutput
from metis_rt.train.config import TrainConfig
from metis_rt.train.example import Example
from metis_rt.train.pretrain import common
from metis_rt.train.pretrain.config_json import ssl_section, update_config_json
from metis_rt.train.pretrain.frozen import load_ssl
from metis_rt.train.pretrain.kmeans import MFCC_TARGET_DIM, ClusterTargets, mfcc_features

log = logging.getLogger(__name__)

NAME = "pretrain-ssl"
EXTRACTOR_SETTINGS = {  # facebook/w2v-bert-2.0's preprocessor_config.json
    "feature_size": 80,
    "num_mel_bins": 80,
    "padding_value": 1.0,
    "stride": 2,
    "sampling_rate": SSL_SAMPLE_RATE,
}
TARGET_SOURCES = ("mfcc", "ssl")
EXTRACT_CHUNK = 16  # crops per extractor / encoder call outside training steps
MIN_VAR = 1e-6


@dataclass(frozen=True)
class W2vSize:
    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 768
    conv_depthwise_kernel_size: int = 31
    left_max_position_embeddings: int = 64
    right_max_position_embeddings: int = 8
    dropout: float = 0.0


@dataclass(frozen=True)
class HubertTargets:
    n_clusters: int = 100
    source: str = "mfcc"  # "mfcc" (iteration 1) or "ssl" (iteration 2: cluster the features of `ssl_dir`)
    ssl_dir: str | None = None
    fit_examples: int = 256  # crops whose frames the k-means is fitted on
    iters: int = 20


@dataclass(frozen=True)
class SpanMasking:
    start_prob: float = 0.08  # HuBERT: p = 8 %, l = 10 frames (about half the frames end up masked)
    span_frames: int = 10


@dataclass(frozen=True)
class SslPretrainConfig:
    model: W2vSize = field(default_factory=W2vSize)
    hidden_state_index: int = 6  # exported feature layer: hidden_states[i], 1 <= i <= num_layers
    loss_layer: int = 0  # layer the prediction head reads; 0 = the last one
    targets: HubertTargets = field(default_factory=HubertTargets)
    masking: SpanMasking = field(default_factory=SpanMasking)
    crop_frames: int = 100  # 20 ms frames per crop (2 s), giving crop_frames - 1 SSL frames
    stats_examples: int = 64  # crops kept for the feature statistics of the export
    # WavLM-style denoising pre-training: the encoder reads the degraded input (data.task se), the cluster targets
    # come from the clean speech, so the features learn to ignore the noise (what SE/TSE conditioning needs).
    denoising: bool = False

    def __post_init__(self):
        n = self.model.num_layers
        if not 1 <= self.hidden_state_index <= n:
            raise ConfigError(f"hidden_state_index must be in 1..{n} (model.num_layers), got {self.hidden_state_index}")
        if not 0 <= self.loss_layer <= n:
            raise ConfigError(f"loss_layer must be in 0..{n} (0 = last layer), got {self.loss_layer}")
        if self.targets.source not in TARGET_SOURCES:
            raise ConfigError(f"targets.source must be one of {TARGET_SOURCES}, got {self.targets.source!r}")
        if self.targets.source == "ssl" and not self.targets.ssl_dir:
            raise ConfigError("targets.source 'ssl' needs targets.ssl_dir (an earlier SSL export)")
        if self.crop_frames < 2:
            raise ConfigError(f"crop_frames must be >= 2, got {self.crop_frames}")


@dataclass
class SslBatch:
    input_features: torch.Tensor  # [B, T, 160]
    attention_mask: torch.Tensor  # [B, T] int64
    targets: torch.Tensor  # [B, T] cluster ids
    mask: torch.Tensor  # [B, T] bool, masked frames (the loss positions)


def w2v_config(size: W2vSize) -> Wav2Vec2BertConfig:
    p = size.dropout
    return Wav2Vec2BertConfig(
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        intermediate_size=size.intermediate_size,
        output_hidden_size=size.hidden_size,
        conv_depthwise_kernel_size=size.conv_depthwise_kernel_size,
        left_max_position_embeddings=size.left_max_position_embeddings,
        right_max_position_embeddings=size.right_max_position_embeddings,
        position_embeddings_type="relative_key",
        hidden_dropout=p,
        attention_dropout=p,
        activation_dropout=p,
        feat_proj_dropout=p,
        conformer_conv_dropout=p,
        layerdrop=0.0,
        mask_time_prob=0.05,  # > 0 builds `masked_spec_embed`; the spans themselves come from our batches
        add_adapter=False,
    )


def span_mask(batch: int, frames: int, masking: SpanMasking) -> torch.Tensor:
    """[B, T] bool: spans of ``span_frames`` starting at frames drawn with ``start_prob``; >= 1 span per row."""
    starts = torch.rand(batch, frames) < masking.start_prob
    empty = ~starts.any(dim=1)
    starts[empty, torch.randint(0, frames, (int(empty.sum()),))] = True
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for offset in range(masking.span_frames):
        mask[:, offset:] |= starts[:, : frames - offset]
    return mask


class StatsBank(nn.Module):
    """Extractor outputs of the first crops, kept to compute the export's feature statistics."""

    def __init__(self, n_items: int, frames: int, dim: int):
        super().__init__()
        self.register_buffer("features", torch.zeros(n_items, frames, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def full(self) -> bool:
        return int(self.count) >= self.features.shape[0]

    def add(self, features: torch.Tensor) -> None:
        start = int(self.count)
        take = features[: self.features.shape[0] - start]
        self.features[start : start + len(take)] = take.to(self.features)
        self.count += len(take)


class SslPretrainTask:
    def __init__(self, cfg: SslPretrainConfig, device: torch.device | str = "cpu"):
        self.name = NAME
        self.cfg = cfg
        self.device = torch.device(device)
        self.extractor = SeamlessM4TFeatureExtractor(**EXTRACTOR_SETTINGS)
        self.w2v_config = w2v_config(cfg.model)
        self.encoder = Wav2Vec2BertModel(self.w2v_config).to(self.device)
        n_clusters = cfg.targets.n_clusters
        self.head = nn.Linear(cfg.model.hidden_size, n_clusters).to(self.device)
        self.previous = None
        target_dim = MFCC_TARGET_DIM
        if cfg.targets.source == "ssl":
            self.previous, _ = load_ssl(cfg.targets.ssl_dir, self.device)
            target_dim = self.previous.dim
        self.targets = ClusterTargets(n_clusters, target_dim).to(self.device)
        self.bank = StatsBank(cfg.stats_examples, cfg.crop_frames - 1, 2 * EXTRACTOR_SETTINGS["feature_size"])
        self.bank.to(self.device)
        self.loss_layer = cfg.loss_layer or cfg.model.num_layers

    # ------------------------------------------------------------------ TrainTask
    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "head": self.head, "targets": self.targets, "stats_bank": self.bank}

    def trainable(self):
        return itertools.chain(self.encoder.parameters(), self.head.parameters())

    def batches(self, examples: Iterator[Example], batch_size: int) -> Iterator[SslBatch]:
        stream = common.crops(examples, self.cfg.crop_frames)
        needed = max(
            0 if bool(self.targets.fitted) else self.cfg.targets.fit_examples,
            0 if self.bank.full else self.cfg.stats_examples - int(self.bank.count),
        )
        if needed:
            warm = list(itertools.islice(stream, needed))
            self._prepare(warm)
            stream = itertools.chain(warm, stream)
        for group in common.grouped(stream, batch_size):
            clean = self._extract(common.stack_16k(group))
            feats = self._extract(common.stack_degraded_16k(group)) if self.cfg.denoising else clean
            yield SslBatch(
                feats.input_features,
                feats.attention_mask,
                self.targets.assign(self._target_features(clean)),
                span_mask(len(group), feats.input_features.shape[1], self.cfg.masking).to(self.device),
            )

    def loss(self, batch: SslBatch) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.encoder(
            input_features=batch.input_features,
            attention_mask=batch.attention_mask,
            mask_time_indices=batch.mask,
            output_hidden_states=True,
        )
        logits = self.head(out.hidden_states[self.loss_layer])[batch.mask]  # [M, K]
        targets = batch.targets[batch.mask]
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(-1) == targets).float().mean()
        return loss, {"ce": loss.item(), "acc_masked": float(accuracy), "masked_frac": float(batch.mask.float().mean())}

    def export(self, out_dir: Path) -> list[Path]:
        out = Path(out_dir)
        w2v_dir = out / W2V_DIR
        w2v_dir.mkdir(parents=True, exist_ok=True)
        self.w2v_config.save_pretrained(str(w2v_dir))
        self.extractor.save_pretrained(str(w2v_dir))
        weights = common.save_tensors(self.encoder.state_dict(), w2v_dir / W2V_WEIGHTS)
        mean, var = self.feature_stats()
        torch.save({"mean": mean.cpu(), "var": var.cpu()}, out / STATS_FILE)
        config = update_config_json(out, ssl_section(self.cfg.hidden_state_index))
        return [w2v_dir / "config.json", weights, w2v_dir / "preprocessor_config.json", out / STATS_FILE, config]

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def feature_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """mean/var [D] of ``hidden_states[hidden_state_index]`` over the stats bank (eval mode)."""
        count = int(self.bank.count)
        if count == 0:
            raise RuntimeError("no audio seen yet: run batches() before export() so the feature statistics exist")
        hidden = torch.cat([h.flatten(0, 1) for h in self._hidden(self.bank.features[:count])])
        return hidden.mean(0), hidden.var(0).clamp(min=MIN_VAR)

    @torch.no_grad()
    def features(self, wav_16k: np.ndarray) -> torch.Tensor:
        """What the export computes for one waveform [N]: normalised layer features [1, T, D] (eval mode)."""
        mean, var = self.feature_stats()
        feats = self._extract(np.asarray(wav_16k, dtype=np.float32)[None])
        return (self._hidden(feats.input_features)[0] - mean) / var.sqrt()

    def _hidden(self, input_features: torch.Tensor) -> list[torch.Tensor]:
        """``hidden_states[hidden_state_index]`` [b, T, D] per chunk of input features, in eval mode."""
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                chunks = input_features.split(EXTRACT_CHUNK)
                outputs = [self.encoder(input_features=c, output_hidden_states=True) for c in chunks]
        finally:
            self.encoder.train(was_training)
        return [out.hidden_states[self.cfg.hidden_state_index] for out in outputs]

    def _extract(self, wavs_16k: np.ndarray) -> ExtractorOutput:
        out = self.extractor(list(wavs_16k), sampling_rate=SSL_SAMPLE_RATE, return_tensors="pt")
        return ExtractorOutput(out["input_features"].to(self.device), out["attention_mask"].long().to(self.device))

    @torch.no_grad()
    def _target_features(self, feats: ExtractorOutput) -> torch.Tensor:
        if self.previous is None:
            return mfcc_features(feats.input_features)
        return self.previous.normalise(self.previous.hidden(feats))

    def _prepare(self, warm: list[common.Crop]) -> None:
        """Fit the cluster targets and fill the statistics bank from the first crops."""

        def extract(stack) -> list[ExtractorOutput]:
            return [self._extract(stack(warm[i : i + EXTRACT_CHUNK])) for i in range(0, len(warm), EXTRACT_CHUNK)]

        clean = None
        if not bool(self.targets.fitted):
            clean = extract(common.stack_16k)
            n_fit = self.cfg.targets.fit_examples
            target_feats = torch.cat([self._target_features(c) for c in clean])[:n_fit]
            self.targets.fit(target_feats.flatten(0, 1), self.cfg.targets.iters)
            log.info("fitted %d cluster targets on %d frames", self.targets.n_clusters, target_feats.shape[:2].numel())
        if self.bank.full:
            return
        # the statistics describe what the encoder reads: the degraded input when denoising
        inputs = extract(common.stack_degraded_16k) if self.cfg.denoising else clean or extract(common.stack_16k)
        for chunk in inputs:
            if not self.bank.full:
                self.bank.add(chunk.input_features)


def build(options: Mapping[str, Any], run: TrainConfig | None = None) -> SslPretrainTask:
    """Registry factory (``trainer: pretrain-ssl``): ``options`` as :class:`SslPretrainConfig`."""
    return SslPretrainTask(common.parse_options(SslPretrainConfig, options, NAME), common.run_device(run))
