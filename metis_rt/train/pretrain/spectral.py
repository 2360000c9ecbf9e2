"""Reconstruction losses of the acoustic codec: multi-scale log-mel L1 (DAC) and multi-resolution STFT (PWG).

* Multi-scale mel: for each window length w (n_fft = w, hop = w / 4, Hann), magnitude -> mel (HTK scale,
  triangular, ``n_mels`` bins) -> ``log10(max(mel, 1e-5))``; L1 between prediction and target, averaged over scales.
* Multi-resolution STFT: per (n_fft, hop, window) resolution, spectral convergence ``||Y| - |X||_F / ||Y||_F``
  plus L1 of ``log(max(|.|, 1e-7))``; averaged over resolutions.

Inputs are waveforms [B, N]; both losses are scalars, computed in float32 with autocast off (log magnitudes of
bf16 spectra would be too coarse).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MEL_LOG_FLOOR = 1e-5
STFT_LOG_FLOOR = 1e-7
MEL_HOP_DIVISOR = 4


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None):
    """Triangular HTK-mel filters [n_mels, n_fft // 2 + 1] (peak 1; a filter narrower than a bin may be all zero)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    bins_hz = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(hz_to_mel(torch.tensor(f_min)), hz_to_mel(torch.tensor(f_max)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins_hz - lower) / (centre - lower)
    falling = (upper - bins_hz) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def stft_magnitude(wav: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """wav [B, N] -> |STFT| [B, n_fft // 2 + 1, frames] (centred, reflect padding)."""
    spec = torch.stft(wav, n_fft, hop_length=hop, win_length=window.shape[0], window=window, return_complex=True)
    return spec.abs()


def full_precision(forward):
    """Run a loss's forward in float32 with autocast disabled."""

    def wrapped(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=pred.device.type, enabled=False):
            return forward(self, pred.float(), target.float())

    return wrapped


class MultiScaleMelLoss(nn.Module):
    def __init__(self, sample_rate: int, window_lengths: tuple[int, ...], n_mels: tuple[int, ...]):
        super().__init__()
        if len(window_lengths) != len(n_mels):
            raise ValueError(f"{len(window_lengths)} mel window lengths but {len(n_mels)} mel bin counts")
        self.window_lengths = window_lengths
        for i, (w, m) in enumerate(zip(window_lengths, n_mels, strict=True)):
            self.register_buffer(f"window_{i}", torch.hann_window(w), persistent=False)
            self.register_buffer(f"filters_{i}", mel_filterbank(sample_rate, w, m), persistent=False)

    @full_precision
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros(())
        for i, w in enumerate(self.window_lengths):
            window, filters = getattr(self, f"window_{i}"), getattr(self, f"filters_{i}")
            hop = max(w // MEL_HOP_DIVISOR, 1)
            mel_pred = filters @ stft_magnitude(pred, w, hop, window)
            mel_target = filters @ stft_magnitude(target, w, hop, window)
            log_pred = torch.log10(mel_pred.clamp(min=MEL_LOG_FLOOR))
            log_target = torch.log10(mel_target.clamp(min=MEL_LOG_FLOOR))
            total = total + (log_pred - log_target).abs().mean()
        return total / len(self.window_lengths)


class MultiResolutionStftLoss(nn.Module):
    def __init__(self, resolutions: tuple[tuple[int, int, int], ...]):
        super().__init__()
        self.resolutions = resolutions
        for i, (n_fft, _hop, win) in enumerate(resolutions):
            if win > n_fft:
                raise ValueError(f"STFT resolution {i}: window {win} longer than n_fft {n_fft}")
            self.register_buffer(f"window_{i}", torch.hann_window(win), persistent=False)

    @full_precision
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros(())
        for i, (n_fft, hop, _win) in enumerate(self.resolutions):
            window = getattr(self, f"window_{i}")
            mag_pred = stft_magnitude(pred, n_fft, hop, window)
            mag_target = stft_magnitude(target, n_fft, hop, window)
            convergence = torch.linalg.norm(mag_target - mag_pred) / torch.linalg.norm(mag_target).clamp(min=1e-7)
            log_l1 = (mag_pred.clamp(min=STFT_LOG_FLOOR).log() - mag_target.clamp(min=STFT_LOG_FLOOR).log()).abs()
            total = total + convergence + log_l1.mean()
        return total / len(self.resolutions)


def min_samples(window_lengths: tuple[int, ...], resolutions: tuple[tuple[int, int, int], ...]) -> int:
    """Shortest waveform the reflect-padded STFTs accept (padding n_fft / 2 must be shorter than the input)."""
    longest = max([*window_lengths, *(r[0] for r in resolutions)], default=0)
    return math.floor(longest / 2) + 1
