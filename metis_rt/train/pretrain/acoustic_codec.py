"""Pre-training the acoustic codec: DAC-style encoder + 12-stage factorised RVQ + Vocos/iSTFT decoder, 24 kHz.

Our inference modules (:class:`CodecEncoder`, :class:`CodecDecoder`) are trained as they are, with weight norm
re-parametrised on every ``WNConv1d`` (the official files store ``weight_g``/``weight_v``).

Loss = ``mel_weight`` x multi-scale log-mel L1 + ``stft_weight`` x multi-resolution STFT (:mod:`spectral`)
+ ``commitment_weight`` x commitment + ``codebook_weight`` x codebook (:mod:`vq`). Quantiser dropout: a
``quantizer_dropout`` fraction of the rows decode from a random number of stages (the draw is part of the batch).
No adversarial loss: the TrainTask contract has one optimiser, a GAN needs a second one (see docs/training.md).

Export: ``acoustic_codec/model.safetensors`` (encoder), ``acoustic_codec/model_1.safetensors`` (quantiser + Vocos,
with the ``model.head.istft.window`` buffer) and ``model.acoustic_codec.{encoder,decoder}`` in ``config.json``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metis_rt.config import CodecDecoderConfig, CodecEncoderConfig
from metis_rt.errors import ConfigError
from metis_rt.models.acoustic_codec import AcousticCodec, CodecDecoder, CodecEncoder
from metis_rt.pipeline.components import CODEC_DECODER_FILE, CODEC_ENCODER_FILE
from metis_rt.train.config import TrainConfig
from metis_rt.train.example import Example
from metis_rt.train.pretrain import common
from metis_rt.train.pretrain.config_json import acoustic_codec_section, update_config_json
from metis_rt.train.pretrain.spectral import MultiResolutionStftLoss, MultiScaleMelLoss, min_samples
from metis_rt.train.pretrain.vq import CodeRevival, DataInit, codebook_usage, residual_quantize, sample_active_stages

NAME = "pretrain-acoustic-codec"
CODEC_SAMPLE_RATE = 24000


@dataclass(frozen=True)
class SpectralLosses:
    mel_window_lengths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)  # DAC's scales
    mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    stft_resolutions: tuple[tuple[int, int, int], ...] = ((512, 50, 240), (1024, 120, 600), (2048, 240, 1200))
    mel_weight: float = 15.0
    stft_weight: float = 1.0


@dataclass(frozen=True)
class AcousticCodecPretrainConfig:
    encoder: CodecEncoderConfig = field(default_factory=lambda: CodecEncoderConfig(d_model=16))
    decoder: CodecDecoderConfig = field(
        default_factory=lambda: CodecDecoderConfig(vocos_dim=256, vocos_intermediate_dim=768, vocos_num_layers=6)
    )
    losses: SpectralLosses = field(default_factory=SpectralLosses)
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    quantizer_dropout: float = 0.5
    revive_every: int = 200  # steps between dead-code checks; 0 = never
    data_init: bool = True  # vq.DataInit on the first batch; the offsets it sets are then not trained
    crop_frames: int = 25  # 20 ms frames per crop (0.5 s)

    def __post_init__(self):
        if self.encoder.out_channels != self.decoder.in_channels:
            raise ConfigError(
                f"encoder.out_channels ({self.encoder.out_channels}) must equal decoder.in_channels "
                f"({self.decoder.in_channels}): the quantiser reads the encoder latent"
            )
        if math.prod(self.encoder.up_ratios) != self.decoder.hop_size:
            raise ConfigError(
                f"prod(encoder.up_ratios) = {math.prod(self.encoder.up_ratios)} must equal decoder.hop_size "
                f"({self.decoder.hop_size})"
            )
        shortest = min_samples(self.losses.mel_window_lengths, self.losses.stft_resolutions)
        if self.crop_frames * self.decoder.hop_size < shortest:
            raise ConfigError(f"crop_frames too small: the spectral losses need crops of >= {shortest} samples")


@dataclass
class WavBatch:
    wav: torch.Tensor  # [B, N] at 24 kHz, N = crop_frames * hop
    n_active: torch.Tensor  # [B] quantiser stages each row decodes from


class AcousticCodecPretrainTask:
    def __init__(self, cfg: AcousticCodecPretrainConfig, device: torch.device | str = "cpu"):
        self.name = NAME
        self.cfg = cfg
        self.device = torch.device(device)
        self.encoder = CodecEncoder(cfg.encoder)
        self.decoder = CodecDecoder(cfg.decoder)
        for module in (self.encoder, self.decoder):
            common.apply_weight_norm(module).to(self.device).train()
        losses = cfg.losses
        self.mel_loss = MultiScaleMelLoss(CODEC_SAMPLE_RATE, losses.mel_window_lengths, losses.mel_bins)
        self.stft_loss = MultiResolutionStftLoss(losses.stft_resolutions)
        self.mel_loss.to(self.device)
        self.stft_loss.to(self.device)
        n_q, size = cfg.decoder.num_quantizers, cfg.decoder.codebook_size
        self.revival = CodeRevival(n_q, size, cfg.revive_every).to(self.device)
        self.data_init = DataInit().to(self.device)
        # The offsets DataInit sets from the data stay fixed: trained, they regrow the common direction.
        self._fixed_biases: list[nn.Parameter] = []
        if cfg.data_init:
            self._fixed_biases = [self.encoder_out_conv().bias]
            self._fixed_biases += [fvq.in_project.bias for fvq in self.decoder.quantizer.quantizers]
        for bias in self._fixed_biases:
            bias.requires_grad_(False)

    def encoder_out_conv(self) -> nn.Conv1d:
        """The encoder's last convolution (its bias carries the offset DataInit removes)."""
        return [m for m in self.encoder.block if isinstance(m, nn.Conv1d)][-1]

    @property
    def codec(self) -> AcousticCodec:
        """The trained encoder + decoder as the inference module (for checks; shares the parameters)."""
        return AcousticCodec(self.encoder, self.decoder)

    def modules(self) -> dict[str, nn.Module]:
        return {
            "encoder": self.encoder,
            "decoder": self.decoder,
            "code_revival": self.revival,
            "data_init": self.data_init,
        }

    def trainable(self):
        frozen = {id(p) for p in self._fixed_biases}
        params = itertools.chain(self.encoder.parameters(), self.decoder.parameters())
        return [p for p in params if id(p) not in frozen]

    def batches(self, examples: Iterator[Example], batch_size: int) -> Iterator[WavBatch]:
        n_q = self.cfg.decoder.num_quantizers
        for group in common.grouped(common.crops(examples, self.cfg.crop_frames), batch_size):
            n_active = sample_active_stages(len(group), n_q, self.cfg.quantizer_dropout)
            yield WavBatch(common.stack_24k(group, self.device), n_active.to(self.device))

    def loss(self, batch: WavBatch) -> tuple[torch.Tensor, dict[str, float]]:
        revived = self.revival.revive(self.decoder.quantizer)
        if self.cfg.data_init and not bool(self.data_init.done):
            with torch.no_grad():
                self.data_init.initialise(
                    self.encoder_out_conv(), self.decoder.quantizer, self.encoder(batch.wav[:, None, :])
                )
        latent = self.encoder(batch.wav[:, None, :])
        q = residual_quantize(self.decoder.quantizer, latent, batch.n_active)
        pred = self.decoder(q.quantized)[:, 0, :]
        mel = self.mel_loss(pred, batch.wav)
        stft = self.stft_loss(pred, batch.wav)
        c, w = self.cfg, self.cfg.losses
        loss = w.mel_weight * mel + w.stft_weight * stft + c.commitment_weight * q.commitment
        loss = loss + c.codebook_weight * q.codebook
        self.revival.observe(q.ids, q.latents)
        return loss, {
            "mel": mel.item(),
            "stft": stft.item(),
            "commitment": q.commitment.item(),
            "codebook": q.codebook.item(),
            "code_usage_0": codebook_usage(q.ids, c.decoder.codebook_size),
            "revived": float(revived),
        }

    def export(self, out_dir: Path) -> list[Path]:
        out = Path(out_dir)
        c = self.cfg
        section = acoustic_codec_section(
            c.encoder, c.decoder, c.quantizer_dropout, c.commitment_weight, c.codebook_weight
        )
        return [
            common.save_tensors(common.official_state(self.encoder), out / CODEC_ENCODER_FILE),
            common.save_tensors(common.official_state(self.decoder), out / CODEC_DECODER_FILE),
            update_config_json(out, section),
        ]


def build(options: Mapping[str, Any], run: TrainConfig | None = None) -> AcousticCodecPretrainTask:
    """Registry factory (``trainer: pretrain-acoustic-codec``): ``options`` as the config dataclass."""
    cfg = common.parse_options(AcousticCodecPretrainConfig, options, NAME)
    return AcousticCodecPretrainTask(cfg, common.run_device(run))
