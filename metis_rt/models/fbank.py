"""w2v-BERT 2.0's input features in torch, for a batch of equal-length waveforms at once (issue 20).

The same features as the ``transformers`` ``SeamlessM4TFeatureExtractor`` (Kaldi-style 80-bin log-mel fbank,
25 ms frames every 10 ms, per-utterance mean/variance normalisation per bin, frame pairs stacked to 160-d at 50 Hz,
an odd last frame padded and masked), which computes them in numpy one waveform and one frame at a time. Its
constants (the povey window, the mel filters, the stride) are read from the loaded extractor, not restated.

Precision follows the extractor: frames in float64, the spectrum rounded to complex64 as it stores it, power, mel
and log in float64, then float32 (torch, the whole batch at once); the per-utterance normalisation in numpy float32
per row, as the extractor does it, because its float32 sums are what the parity vectors hold. On the
parity inputs and random noise the features are the extractor's bit for bit (tests/test_fbank.py); float64 work
done in another order could in principle move a value by one float32 step.
"""

from __future__ import annotations

import numpy as np
import torch

FRAME = 400  # samples (25 ms at 16 kHz)
HOP = 160  # samples (10 ms)
FFT = 512
PREEMPHASIS = 0.97
MEL_FLOOR = 1.192092955078125e-07
INT16_SCALE = 2**15  # Kaldi compliance: the waveform as 16-bit sample values
NORM_EPS = 1e-7


def normalise(logmel: np.ndarray) -> np.ndarray:
    """Per-bin mean/variance normalisation of one utterance's [frames, bins] float32 log-mel, in numpy float32 as
    the extractor does it: on a bins-major array (its spectrogram transposed), so that numpy sums each bin's frames
    in the same (pairwise) order; the unbiased variance."""
    logmel = np.ascontiguousarray(logmel.T).T
    mean = logmel.mean(axis=0, keepdims=True)
    var = logmel.var(axis=0, ddof=1, keepdims=True)
    return (logmel - mean) / np.sqrt(var + NORM_EPS)


class Fbank:
    """Batched features of :class:`SeamlessM4TFeatureExtractor` (its constants, our arithmetic)."""

    def __init__(self, extractor):
        self.window = torch.as_tensor(np.asarray(extractor.window, dtype=np.float64))
        self.mel = torch.as_tensor(np.asarray(extractor.mel_filters, dtype=np.float64))  # [FFT/2 + 1, bins]
        self.stride = int(extractor.stride)
        self.padding_value = float(extractor.padding_value)  # what fills an odd last frame's pair (1.0 in w2v-BERT)
        if self.window.shape != (FRAME,) or self.mel.shape[0] != FFT // 2 + 1:
            raise ValueError(
                f"unexpected extractor constants: window {tuple(self.window.shape)}, mel {tuple(self.mel.shape)}"
            )

    def __call__(self, wavs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, N] float32 at 16 kHz (N >= 400) -> (input_features [B, F/2, 160] float32, mask [B, F/2] int64)."""
        wav = torch.as_tensor(wavs, dtype=torch.float32)
        if wav.dim() != 2 or wav.shape[1] < FRAME:
            raise ValueError(f"need [batch, samples >= {FRAME}] waveforms, got {tuple(wav.shape)}")
        scaled = (wav * INT16_SCALE).to(torch.float64)  # the float32 product, as the extractor computes it
        frames = scaled.unfold(1, FRAME, HOP).contiguous()  # [B, F, FRAME]
        frames -= frames.mean(-1, keepdim=True)  # DC offset per frame
        buffer = frames.new_zeros(*frames.shape[:2], FFT)  # the frame, pre-emphasised and windowed, zero-padded
        buffer[..., 1:FRAME] = frames[..., 1:] - PREEMPHASIS * frames[..., :-1]
        buffer[..., 0] = frames[..., 0] * (1 - PREEMPHASIS)
        buffer[..., :FRAME] *= self.window
        spectrum = torch.view_as_real(torch.fft.rfft(buffer).to(torch.complex64)).to(torch.float64)  # as stored
        power = spectrum[..., 0] ** 2 + spectrum[..., 1] ** 2  # |X|^2 of the complex64 values
        logmel = torch.log(torch.clamp(power @ self.mel, min=MEL_FLOOR)).to(torch.float32).numpy()  # [B, F, bins]
        feats = torch.from_numpy(np.stack([normalise(rows) for rows in logmel]))
        batch, count, bins = feats.shape
        mask = torch.ones(batch, count, dtype=torch.long)
        if count % self.stride:  # padded to a multiple of the stride, the padding masked
            pad = self.stride - count % self.stride
            feats = torch.cat([feats, feats.new_full((batch, pad, bins), self.padding_value)], dim=1)
            mask = torch.cat([mask, mask.new_zeros(batch, pad)], dim=1)
        stacked = feats.reshape(batch, -1, bins * self.stride)
        return stacked, mask[:, self.stride - 1 :: self.stride].contiguous()
