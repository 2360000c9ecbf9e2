"""w2v-BERT 2.0 SSL features: the condition of SE/TSE/VC and the input of the semantic codec.

``SeamlessM4TFeatureExtractor`` (80 log-mel, 25 ms / 10 ms, per-utterance CMVN, frame pairs stacked -> 160-d at
50 Hz) -> ``Wav2Vec2BertModel`` ``hidden_states[17]`` -> ``(h - mean) / sqrt(var)`` with ``wav2vec2bert_stats.pt``.
Both come from the ``transformers`` library; only the first 17 encoder layers are built and loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

from metis_rt.errors import CheckpointError
from metis_rt.models.checkpoints import load_module
from metis_rt.models.fbank import FRAME, Fbank
from metis_rt.models.ssl_fast import FastEncoder

SSL_SAMPLE_RATE = 16000
W2V_DIR = "w2v-bert-2.0"
W2V_WEIGHTS = "model.safetensors"
STATS_FILE = "wav2vec2bert_stats.pt"
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")


def unused_w2v_key(n_layers: int):
    """File tensors we knowingly skip: layers >= ``n_layers``, the SpecAugment embedding, adapter heads."""

    def ignore(key: str) -> bool:
        m = _LAYER_KEY.match(key)
        if m:
            return int(m.group(1)) >= n_layers
        return key == "masked_spec_embed" or key.startswith(("adapter.", "intermediate_ffn."))

    return ignore


@dataclass(frozen=True)
class ExtractorOutput:
    input_features: torch.Tensor  # [B, T, 160]
    attention_mask: torch.Tensor  # [B, T] int64


class SslFeatures(nn.Module):
    """Normalised w2v-BERT ``hidden_states[hidden_state_index]`` features."""

    def __init__(self, extractor, encoder: Wav2Vec2BertModel, mean: torch.Tensor, var: torch.Tensor):
        super().__init__()
        self.extractor = extractor
        self.encoder = encoder
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", torch.sqrt(var), persistent=False)
        self.fast_path = True  # issue 20: batched torch fbank + the encoder's fast pass; False: transformers' own
        self._fast = FastEncoder(encoder)
        self._fbank = Fbank(extractor) if isinstance(extractor, SeamlessM4TFeatureExtractor) else None

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def extract(self, wav_16k: np.ndarray | torch.Tensor) -> ExtractorOutput:
        """16 kHz mono waveform [N] -> extractor output (float32, as the reference)."""
        return self.extract_batch([wav_16k])

    def extract_batch(self, wavs_16k: list[np.ndarray | torch.Tensor]) -> ExtractorOutput:
        """Equal-length 16 kHz mono waveforms -> one extractor output of len(wavs) rows.

        The fast path computes them together (:mod:`metis_rt.models.fbank`: the extractor's values, bit for bit
        wherever tested); otherwise, or for waveforms shorter than one frame, the ``transformers`` extractor one by
        one."""
        wavs = [w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w) for w in wavs_16k]
        if len({len(w) for w in wavs}) != 1:
            raise ValueError(f"extract_batch needs equal lengths, got {sorted({len(w) for w in wavs})}")
        if self.fast_path and self._fbank is not None and len(wavs[0]) >= FRAME:
            return ExtractorOutput(*self._fbank(np.stack(wavs).astype(np.float32, copy=False)))
        outs = [self.extractor(w.astype(np.float32), sampling_rate=SSL_SAMPLE_RATE, return_tensors="pt") for w in wavs]
        return ExtractorOutput(
            torch.cat([o["input_features"] for o in outs]), torch.cat([o["attention_mask"].long() for o in outs])
        )

    def hidden(self, feats: ExtractorOutput) -> torch.Tensor:
        """Raw hidden states of the last built layer [B, T, D] (= ``hidden_states[17]``).

        Windows (eval, no gradient, no padding) take the fast pass of :mod:`metis_rt.models.ssl_fast`; anything
        else, and ``fast_path = False``, the ``transformers`` module."""
        device, dtype = self.mean.device, self.mean.dtype
        if self.fast_path and self._fast.supports(feats.attention_mask):
            return self._fast(feats.input_features.to(device=device, dtype=dtype))
        out = self.encoder(
            input_features=feats.input_features.to(device=device, dtype=dtype),
            attention_mask=feats.attention_mask.to(device),
            output_hidden_states=True,
        )
        return out.hidden_states[-1]

    def normalise(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden - self.mean) / self.std

    def forward(self, wav_16k: np.ndarray | torch.Tensor) -> torch.Tensor:
        """16 kHz waveform [N] -> normalised features [1, T, D], T = ceil(n_fbank / 2)."""
        return self.normalise(self.hidden(self.extract(wav_16k)))

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        hidden_state_index: int = 17,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> SslFeatures:
        root = Path(model_dir)
        w2v_dir = root / W2V_DIR
        extractor = SeamlessM4TFeatureExtractor.from_pretrained(str(w2v_dir), local_files_only=True)
        config = Wav2Vec2BertConfig.from_pretrained(str(w2v_dir), local_files_only=True)
        if config.num_hidden_layers < hidden_state_index:
            raise CheckpointError(
                f"{w2v_dir}/config.json has {config.num_hidden_layers} layers; hidden_states[{hidden_state_index}]"
                " needs at least that many"
            )
        config.num_hidden_layers = hidden_state_index  # compute only what hidden_states[17] needs
        config.mask_time_prob = 0.0  # no SpecAugment parameters at inference
        config.mask_feature_prob = 0.0
        config.add_adapter = False
        encoder = load_module(
            lambda: Wav2Vec2BertModel(config),
            w2v_dir / W2V_WEIGHTS,
            "w2v-BERT",
            ignore=unused_w2v_key(hidden_state_index),
            dtype=dtype,
            device=device,
        )
        mean, var = load_stats(root / STATS_FILE, config.hidden_size)
        model = cls(extractor, encoder, mean.to(device, dtype), var.to(device, dtype))
        return model.eval()


def load_stats(path: Path, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``{'mean': [D], 'var': [D]}`` from the torch-saved stats file, checked."""
    if not path.is_file():
        raise CheckpointError(f"feature statistics file not found: {path}")
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path} is not a readable torch file: {exc}") from exc
    if not isinstance(stats, dict) or set(stats) != {"mean", "var"}:
        keys = sorted(stats) if isinstance(stats, dict) else type(stats).__name__
        raise CheckpointError(f"{path}: expected a dict with keys ['mean', 'var'], got {keys}")
    for k in ("mean", "var"):
        if tuple(stats[k].shape) != (dim,):
            raise CheckpointError(f"{path}: {k} has shape {list(stats[k].shape)}, w2v-BERT hidden size is {dim}")
    if bool((stats["var"] <= 0).any()):
        raise CheckpointError(f"{path}: var has non-positive entries")
    return stats["mean"], stats["var"]
