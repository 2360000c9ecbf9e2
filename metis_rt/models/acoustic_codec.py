"""Acoustic codec (MaskGCT): 24 kHz waveform <-> 12 x 1024 residual-FVQ ids at 50 Hz.

* :class:`CodecEncoder` (``acoustic_codec/model.safetensors``): DAC-style strided convolutions with Snake
  activations, [B, 1, N] -> latent [B, 256, N / hop].
* :class:`CodecDecoder` (``acoustic_codec/model_1.safetensors``): the residual FVQ ``quantizer`` (also used to
  *encode* latents) and ``model`` = Vocos backbone + iSTFT head, ids [B, T, Q] -> [B, 1, T * hop].
* :class:`AcousticCodec`: both together, waveform [B, N] in, ids [B, T, Q] out, and back.

hop = prod(up_ratios) = 480 samples officially (20 ms at 24 kHz); the decoder's ``hop_size`` must agree.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from metis_rt.config import CodecDecoderConfig, CodecEncoderConfig
from metis_rt.errors import CheckpointError, ConfigError
from metis_rt.models.checkpoints import (
    WNConv1d,
    load_module,
)
from metis_rt.models.quantize import ResidualFVQ
from metis_rt.models.vocos import Vocos

SNAKE_EPS = 1e-9
RESIDUAL_DILATIONS = (1, 3, 9)
RESIDUAL_KERNEL = 7
STEM_KERNEL = 7
OUT_KERNEL = 3
WINDOW_KEY = "model.head.istft.window"  # iSTFT window buffer stored in the decoder file


class Snake1d(nn.Module):
    """Snake ``x + sin^2(alpha x) / (alpha + 1e-9)``, per-channel alpha [1, C, 1]. [B, C, T] -> [B, C, T]."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + SNAKE_EPS).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """Snake -> dilated conv (k7) -> Snake -> conv (k1), plus the input. Length-preserving. [B, C, T]."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        padding = (RESIDUAL_KERNEL - 1) * dilation // 2
        self.block = nn.Sequential(
            Snake1d(channels),
            WNConv1d(channels, channels, RESIDUAL_KERNEL, dilation=dilation, padding=padding),
            Snake1d(channels),
            WNConv1d(channels, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class EncoderBlock(nn.Module):
    """3 residual units at half width, Snake, strided conv (k = 2s, pad ceil(s/2)) doubling the channels.

    [B, C/2, N] -> [B, C, N / stride] (exactly, for N a multiple of the stride).
    """

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        half = out_channels // 2
        self.block = nn.Sequential(
            *(ResidualUnit(half, d) for d in RESIDUAL_DILATIONS),
            Snake1d(half),
            WNConv1d(half, out_channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class CodecEncoder(nn.Module):
    """wav [B, 1, N] at 24 kHz -> latent [B, out_channels, N / hop], hop = prod(up_ratios)."""

    def __init__(self, cfg: CodecEncoderConfig):
        super().__init__()
        self.cfg = cfg
        channels = cfg.d_model
        layers: list[nn.Module] = [WNConv1d(1, channels, STEM_KERNEL, padding=STEM_KERNEL // 2)]
        for stride in cfg.up_ratios:
            channels *= 2
            layers.append(EncoderBlock(channels, stride))
        layers += [
            Snake1d(channels),
            WNConv1d(channels, cfg.out_channels, OUT_KERNEL, padding=OUT_KERNEL // 2),
        ]
        if cfg.use_tanh:  # parameter-free; false in every released config
            layers.append(nn.Tanh())
        self.block = nn.Sequential(*layers)

    @property
    def hop_samples(self) -> int:
        return math.prod(self.cfg.up_ratios)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"codec encoder expects wav [B, 1, N], got {list(wav.shape)}")
        return self.block(wav)

    @classmethod
    def load(
        cls,
        path: str | Path,
        cfg: CodecEncoderConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> CodecEncoder:
        """Build on meta, fill strictly from ``acoustic_codec/model.safetensors``, return in eval mode."""
        return load_module(lambda: cls(cfg), path, "acoustic codec encoder", dtype=dtype, device=device)


class CodecDecoder(nn.Module):
    """ids [B, T, Q] -> wav [B, 1, T * hop]; also holds the residual quantiser used to encode latents."""

    def __init__(self, cfg: CodecDecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.quantizer = ResidualFVQ(cfg.num_quantizers, cfg.in_channels, cfg.codebook_size, cfg.codebook_dim)
        self.model = Vocos(
            cfg.in_channels,
            cfg.vocos_dim,
            cfg.vocos_intermediate_dim,
            cfg.vocos_num_layers,
            cfg.n_fft,
            cfg.hop_size,
        )

    @property
    def hop_samples(self) -> int:
        return self.cfg.hop_size

    def vq2emb(self, ids: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """ids [B, T, Q] -> sum of the first ``n_quantizers`` stage embeddings (default all), [B, D, T]."""
        return self.quantizer.decode(ids, n_quantizers)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb [B, D, T] -> wav [B, 1, T * hop] (float32 for bf16/fp16 weights, see ``ISTFTHead``)."""
        return self.model(emb)[:, None, :]

    def decode(self, ids: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """ids [B, T, Q] -> wav [B, 1, T * hop]."""
        return self(self.vq2emb(ids, n_quantizers))

    @classmethod
    def load(
        cls,
        path: str | Path,
        cfg: CodecDecoderConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> CodecDecoder:
        """Build on meta, fill strictly from ``acoustic_codec/model_1.safetensors``, return in eval mode.

        The iSTFT window is kept in ``compute_dtype(dtype)`` (float32 for a bf16 model): the iSTFT runs there.
        """
        model = load_module(
            lambda: cls(cfg),
            path,
            "acoustic codec decoder",
            dtype=dtype,
            device=device,
            high_precision=lambda k: k == WINDOW_KEY,
        )
        try:
            model.model.head.istft.check_window()
        except ValueError as exc:
            raise CheckpointError(f"{path}: {WINDOW_KEY} is unusable: {exc}") from exc
        return model.eval()


class AcousticCodec(nn.Module):
    """Encoder + decoder: wav [B, N] (24 kHz) -> ids [B, T, Q] -> wav [B, T * hop]."""

    def __init__(self, encoder: CodecEncoder, decoder: CodecDecoder):
        super().__init__()
        if encoder.cfg.out_channels != decoder.cfg.in_channels:
            raise ConfigError(
                f"acoustic codec: encoder latent has {encoder.cfg.out_channels} channels but the decoder "
                f"quantiser expects {decoder.cfg.in_channels}; the two configs must describe one codec"
            )
        if encoder.hop_samples != decoder.hop_samples:
            raise ConfigError(
                f"acoustic codec: encoder hop prod(up_ratios)={encoder.hop_samples} differs from decoder "
                f"hop_size={decoder.hop_samples}"
            )
        self.encoder = encoder
        self.decoder = decoder

    @property
    def hop_samples(self) -> int:
        return self.decoder.hop_samples

    def latent(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, N] -> encoder latent [B, D, T]; T = N / hop for N a multiple of hop."""
        return self.encoder(wav[:, None, :])

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B, N] -> ids [B, T, Q] (all quantiser stages)."""
        return self.quantize_latent(self.latent(wav))

    def quantize_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, D, T] -> ids [B, T, Q]."""
        return self.decoder.quantizer.encode(latent)

    def decode(self, ids: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """ids [B, T, Q] -> wav [B, T * hop]."""
        return self.decoder.decode(ids, n_quantizers)[:, 0, :]

    @classmethod
    def load(
        cls,
        encoder_path: str | Path,
        decoder_path: str | Path,
        encoder_cfg: CodecEncoderConfig,
        decoder_cfg: CodecDecoderConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> AcousticCodec:
        encoder = CodecEncoder.load(encoder_path, encoder_cfg, dtype=dtype, device=device)
        decoder = CodecDecoder.load(decoder_path, decoder_cfg, dtype=dtype, device=device)
        return cls(encoder, decoder).eval()
