"""Vocos building blocks shared by both codecs: the ConvNeXt backbone and the iSTFT head.

Attribute names reproduce the official checkpoint keys (``embed``, ``norm``, ``convnext.{i}.*``,
``final_layer_norm``; ``head.out``, ``head.istft.window``). The backbone is fully symmetric (no causal
padding): every output frame sees ``3 * (num_layers + 1)`` frames on each side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metis_rt.models.checkpoints import compute_dtype

LAYER_NORM_EPS = 1e-6
CONV_KERNEL = 7
CONV_PADDING = CONV_KERNEL // 2
MAX_MAGNITUDE = 100.0  # the head clips exp(log-magnitude) here
MIN_WINDOW_ENVELOPE = 1e-11  # below this the overlap-added window cannot be divided out


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, LayerNorm, Linear, GELU, Linear, layer scale; residual. [B, D, T] -> [B, D, T]."""

    def __init__(self, dim: int, intermediate_dim: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, CONV_KERNEL, padding=CONV_PADDING, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)  # [B, T, D]
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class VocosBackbone(nn.Module):
    """Conv embedding + ConvNeXt stack. Input [B, C_in, T] -> output [B, T, dim]."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, CONV_KERNEL, padding=CONV_PADDING)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.convnext = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim) for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)  # [B, dim, T]
        for block in self.convnext:
            h = block(h)
        return self.final_layer_norm(h.transpose(1, 2))


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding: T frames -> T * hop samples (for even ``n_fft - hop``).

    The synthesis window is the persistent buffer ``window`` [n_fft] loaded from the checkpoint (a periodic
    Hann window in the official files); it is used as stored, never recomputed. Its initial value (before
    loading) is a periodic Hann window, so that randomly initialised models work too.
    """

    def __init__(self, n_fft: int, hop_samples: int):
        super().__init__()
        if not 0 < hop_samples <= n_fft:
            raise ValueError(f"ISTFT needs 0 < hop <= n_fft, got hop={hop_samples}, n_fft={n_fft}")
        self.n_fft = n_fft
        self.hop_samples = hop_samples
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """spec: complex [B, n_fft/2 + 1, T] -> wav [B, T * hop], real, in the precision of ``spec``."""
        n_frames = spec.shape[-1]
        window = self.window.to(spec.real.dtype)
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * window[None, :, None]  # [B, n_fft, T]
        wav = self._overlap_add(frames)  # [B, (T-1)*hop + n_fft]
        envelope = self._overlap_add(window.square()[None, :, None].expand(1, -1, n_frames))[0]
        trim = (self.n_fft - self.hop_samples) // 2
        stop = wav.shape[-1] - trim
        return wav[:, trim:stop] / envelope[trim:stop]

    def check_window(self) -> None:
        """Raise ValueError if the overlap-added squared window vanishes anywhere inside an output.

        Checked once (e.g. after loading) for every frame count up to where edges and steady state repeat, so
        that ``forward`` needs no device synchronisation.
        """
        window = self.window.to(compute_dtype(self.window.dtype))
        trim = (self.n_fft - self.hop_samples) // 2
        for n_frames in range(1, 2 * (-(-self.n_fft // self.hop_samples)) + 3):
            envelope = self._overlap_add(window.square()[None, :, None].expand(1, -1, n_frames))[0]
            inner = envelope[trim : envelope.shape[-1] - trim]
            if bool((inner <= MIN_WINDOW_ENVELOPE).any()):
                raise ValueError(
                    f"ISTFT window (n_fft={self.n_fft}, hop={self.hop_samples}): the overlap-added squared "
                    f"window vanishes inside a {n_frames}-frame output, so it cannot be divided out"
                )

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, n_fft, T] -> summed signal [B, (T-1)*hop + n_fft]."""
        n_samples = (frames.shape[-1] - 1) * self.hop_samples + self.n_fft
        out = F.fold(
            frames,
            output_size=(1, n_samples),
            kernel_size=(1, self.n_fft),
            stride=(1, self.hop_samples),
        )
        return out[:, 0, 0, :]


class ISTFTHead(nn.Module):
    """Linear -> (log-magnitude | phase) -> iSTFT. Input [B, T, dim] -> wav [B, T * hop].

    The spectrum and the iSTFT are evaluated in ``compute_dtype`` (float32 for bf16/fp16 models, float64 stays
    float64); the returned waveform keeps that precision.
    """

    def __init__(self, dim: int, n_fft: int, hop_samples: int):
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.out(x).transpose(1, 2)  # [B, n_fft + 2, T]
        h = h.to(compute_dtype(h.dtype))
        log_mag, phase = h.chunk(2, dim=1)  # [B, n_fft/2 + 1, T] each
        mag = torch.exp(log_mag).clamp(max=MAX_MAGNITUDE)
        spec = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))
        return self.istft(spec)


class Vocos(nn.Module):
    """Backbone + iSTFT head. Input [B, C_in, T] -> wav [B, T * hop]."""

    def __init__(
        self,
        input_channels: int,
        dim: int,
        intermediate_dim: int,
        num_layers: int,
        n_fft: int,
        hop_samples: int,
    ):
        super().__init__()
        self.backbone = VocosBackbone(input_channels, dim, intermediate_dim, num_layers)
        self.head = ISTFTHead(dim, n_fft, hop_samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
