"""Issue 20: w2v-BERT's input features computed in torch for a batch of windows are the transformers extractor's
features bit for bit, and the SSL front end uses them only where it should."""

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import SeamlessM4TFeatureExtractor

from metis_rt.models.fbank import Fbank
from metis_rt.models.ssl import SslFeatures

from .conftest import EXAMPLES_DIR, PARITY_DIR


@pytest.fixture(scope="module")
def extractor():
    return SeamlessM4TFeatureExtractor.from_pretrained(str(PARITY_DIR / "se" / "w2v-bert-2.0"), local_files_only=True)


def _reference(extractor, wavs):
    outs = [extractor(w, sampling_rate=16000, return_tensors="pt") for w in wavs]
    return torch.cat([o["input_features"] for o in outs]), torch.cat([o["attention_mask"].long() for o in outs])


def _clips(n: int) -> np.ndarray:
    """Three rows of ``n`` samples: speech, quiet noise and loud noise (different levels change every stage)."""
    speech, rate = sf.read(EXAMPLES_DIR / "speech_noisy.wav", dtype="float32")
    assert rate == 16000
    rng = np.random.default_rng(n)
    start = int(rng.integers(0, len(speech) - n))
    rows = [speech[start : start + n], rng.standard_normal(n) * 1e-3, rng.standard_normal(n) * 0.8]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("samples", [32000, 32160, 12000, 560])  # 199 (odd: padded), 200, 74, 2 frames
def test_batched_features_are_the_extractors_bit_for_bit(extractor, samples):
    wavs = _clips(samples)
    want_feats, want_mask = _reference(extractor, wavs)
    feats, mask = Fbank(extractor)(wavs)
    assert feats.dtype == torch.float32 and feats.shape == want_feats.shape
    assert torch.equal(feats, want_feats)
    assert torch.equal(mask, want_mask)
    assert bool(mask.all()) == (((samples - 400) // 160 + 1) % 2 == 0)  # an odd frame count masks the last pair
    assert feats.abs().sum() > 0 and not torch.equal(feats[0], feats[2])


def test_a_batch_row_is_the_row_alone(extractor):
    wavs = _clips(16000)
    together, _ = Fbank(extractor)(wavs)
    for i, w in enumerate(wavs):
        assert torch.equal(Fbank(extractor)(w[None])[0][0], together[i])


def test_ssl_front_end_takes_the_batched_features_on_the_fast_path_only(extractor, monkeypatch):
    ssl = SslFeatures(extractor, torch.nn.Identity(), torch.zeros(4), torch.ones(4))
    wavs = list(_clips(8000))
    fast = ssl.extract_batch(wavs)
    calls = []
    monkeypatch.setattr(ssl, "extractor", lambda *a, **k: calls.append(1) or extractor(*a, **k))
    ssl.fast_path = False
    slow = ssl.extract_batch(wavs)
    assert len(calls) == 3  # the transformers extractor, once per waveform
    assert torch.equal(fast.input_features, slow.input_features)
    assert torch.equal(fast.attention_mask, slow.attention_mask)
    ssl.fast_path = True
    calls.clear()
    short = ssl.extract_batch([np.zeros(399, np.float32)])  # shorter than one frame: left to the extractor
    assert len(calls) == 1 and short.input_features.shape[1] == 0
    with pytest.raises(ValueError, match="equal lengths"):
        ssl.extract_batch([np.zeros(800, np.float32), np.zeros(960, np.float32)])


def test_bad_waveform_shapes_are_refused(extractor):
    with pytest.raises(ValueError, match="samples >= 400"):
        Fbank(extractor)(np.zeros((1, 399), np.float32))
    with pytest.raises(ValueError, match="samples >= 400"):
        Fbank(extractor)(np.zeros(800, np.float32))
