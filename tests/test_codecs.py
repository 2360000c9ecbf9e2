"""Semantic and acoustic codecs: official key layouts, weight-norm folding, shapes, precision, loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from metis_rt.config import CodecDecoderConfig, CodecEncoderConfig, SemanticCodecConfig
from metis_rt.errors import CheckpointError
from metis_rt.models.acoustic_codec import WINDOW_KEY, AcousticCodec, CodecDecoder, CodecEncoder
from metis_rt.models.checkpoints import WNConv1d, file_layout, load_checkpoint, on_meta, weight_norm_modules
from metis_rt.models.quantize import ResidualFVQ
from metis_rt.models.semantic_codec import SemanticCodec, is_unused_semantic_key

from .conftest import read_key_dump

TINY_ENCODER = CodecEncoderConfig(d_model=2, up_ratios=(2, 2, 4), out_channels=16)
TINY_DECODER = CodecDecoderConfig(
    in_channels=16,
    num_quantizers=3,
    codebook_size=32,
    codebook_dim=4,
    vocos_dim=16,
    vocos_intermediate_dim=32,
    vocos_num_layers=2,
    n_fft=64,
    hop_size=16,
)
TINY_SEMANTIC = SemanticCodecConfig(
    codebook_size=64,
    hidden_size=12,
    codebook_dim=4,
    vocos_dim=8,
    vocos_intermediate_dim=16,
    vocos_num_layers=2,
)


def official_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's tensors under official names: weight-normed convs as weight_g = ||w|| and v = 1.5 w."""
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    for name, conv in weight_norm_modules(module):
        weight = state.pop(f"{name}.weight")
        state[f"{name}.weight_g"] = weight.flatten(1).norm(dim=1).view(-1, 1, 1)
        state[f"{name}.weight_v"] = weight * 1.5
        del conv
    return state


@pytest.mark.parametrize(
    ("dump", "build", "ignore"),
    [
        (
            "semantic_codec__RepCodec.txt",
            lambda: SemanticCodec(SemanticCodecConfig()),
            is_unused_semantic_key,
        ),
        ("acoustic_codec_encoder__CodecEncoder.txt", lambda: CodecEncoder(CodecEncoderConfig()), None),
        ("acoustic_codec_decoder__CodecDecoder.txt", lambda: CodecDecoder(CodecDecoderConfig()), None),
    ],
)
def test_official_layout_matches_key_dump(dump, build, ignore):
    expected = read_key_dump(dump)
    if ignore is not None:
        ignored = {k for k in expected if ignore(k)}
        assert ignored and all(k.startswith("decoder.") for k in ignored)
        expected = {k: s for k, s in expected.items() if k not in ignored}
    with on_meta():
        model = build()
    assert file_layout(model) == expected


def test_weight_norm_folding_matches_torch(tmp_path):
    torch.manual_seed(0)
    reference = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 6, 3, padding=1).double())
    with torch.no_grad():
        reference.parametrizations.weight.original0.uniform_(0.5, 2.0)  # g [6, 1, 1]
        reference.parametrizations.weight.original1.normal_()  # v [6, 4, 3]
    params = reference.parametrizations.weight
    save_file(
        {
            "weight_g": params.original0.detach().float(),
            "weight_v": params.original1.detach().float(),
            "bias": reference.bias.detach().float(),
        },
        str(tmp_path / "conv.safetensors"),
    )
    with on_meta():
        conv = WNConv1d(4, 6, 3, padding=1)
    load_checkpoint(conv, tmp_path / "conv.safetensors", dtype=torch.float64)
    with torch.no_grad():
        params.original0.copy_(params.original0.float().double())  # compare at the stored precision
        params.original1.copy_(params.original1.float().double())
        torch.testing.assert_close(conv.weight, reference.weight, rtol=1e-12, atol=1e-12)
        x = torch.randn(2, 4, 10, dtype=torch.float64)
        torch.testing.assert_close(conv(x), reference(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_frames", [1, 2, 7, 25])
def test_decoder_output_length_is_frames_times_hop(n_frames):
    torch.manual_seed(1)
    decoder = CodecDecoder(TINY_DECODER).eval()
    ids = torch.randint(0, TINY_DECODER.codebook_size, (2, n_frames, TINY_DECODER.num_quantizers))
    with torch.no_grad():
        wav = decoder.decode(ids)
        emb = decoder.vq2emb(ids)
    assert wav.shape == (2, 1, n_frames * TINY_DECODER.hop_size)
    assert emb.shape == (2, TINY_DECODER.in_channels, n_frames)
    assert torch.isfinite(wav).all()


def test_decode_float32_matches_float64():
    torch.manual_seed(2)
    decoder64 = CodecDecoder(TINY_DECODER).double().eval()
    decoder32 = CodecDecoder(TINY_DECODER).eval()
    decoder32.load_state_dict(decoder64.state_dict())
    decoder32.float()
    ids = torch.randint(0, TINY_DECODER.codebook_size, (1, 20, TINY_DECODER.num_quantizers))
    with torch.no_grad():
        wav64 = decoder64.decode(ids)
        wav32 = decoder32.decode(ids)
    assert wav32.dtype == torch.float32 and wav64.dtype == torch.float64
    scale = wav64.abs().max().item()
    assert (wav32.double() - wav64).abs().max().item() <= 1e-5 * max(1.0, scale)


def test_residual_fvq_picks_cosine_nearest_codes():
    torch.manual_seed(3)
    rvq = ResidualFVQ(num_quantizers=2, input_dim=6, codebook_size=16, codebook_dim=3).double()
    z = torch.randn(2, 6, 9, dtype=torch.float64)
    with torch.no_grad():
        ids = rvq.encode(z)
        first = rvq.quantizers[0]
        latent = first.in_project(z).transpose(1, 2)  # [B, T, d]
        cosine = nn.functional.normalize(latent, dim=-1) @ nn.functional.normalize(first.codebook.weight, dim=-1).T
        residual = z - first.decode(ids[..., 0])
        assert torch.equal(ids[..., 0], cosine.argmax(-1))
        assert torch.equal(ids[..., 1], rvq.quantizers[1].encode(residual))
        torch.testing.assert_close(rvq.decode(ids), first.decode(ids[..., 0]) + rvq.quantizers[1].decode(ids[..., 1]))
        torch.testing.assert_close(rvq.decode(ids, n_quantizers=1), first.decode(ids[..., 0]))
    assert ids.shape == (2, 9, 2)


def test_acoustic_codec_round_trip_shapes():
    torch.manual_seed(4)
    codec = AcousticCodec(CodecEncoder(TINY_ENCODER), CodecDecoder(TINY_DECODER)).eval()
    n_frames = 6
    wav = torch.randn(2, n_frames * codec.hop_samples)
    with torch.no_grad():
        latent = codec.latent(wav)
        ids = codec.encode(wav)
        out = codec.decode(ids)
    assert latent.shape == (2, TINY_ENCODER.out_channels, n_frames)
    assert ids.shape == (2, n_frames, TINY_DECODER.num_quantizers) and ids.dtype == torch.int64
    assert out.shape == wav.shape


def test_semantic_codec_load_tolerates_only_the_decoder(tmp_path):
    torch.manual_seed(5)
    source = SemanticCodec(TINY_SEMANTIC).eval()
    state = official_state(source)
    extra = {"decoder.1.weight": torch.zeros(3, 3)}
    save_file({**state, **extra}, str(tmp_path / "ok.safetensors"))
    loaded = SemanticCodec.load(tmp_path / "ok.safetensors", TINY_SEMANTIC, dtype=torch.float64)
    features = torch.randn(1, 11, TINY_SEMANTIC.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        ids, quantized = loaded.quantize(features)
        ids_ref, _ = source.double().quantize(features)
    assert ids.shape == (1, 11) and quantized.shape == (1, 11, TINY_SEMANTIC.hidden_size)
    assert torch.equal(ids, ids_ref)

    save_file({**state, "encoder.2.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="encoder.2.weight"):
        SemanticCodec.load(tmp_path / "bad.safetensors", TINY_SEMANTIC)


def test_decoder_load_keeps_window_in_compute_precision(tmp_path):
    torch.manual_seed(6)
    save_file(official_state(CodecDecoder(TINY_DECODER)), str(tmp_path / "dec.safetensors"))
    decoder = CodecDecoder.load(tmp_path / "dec.safetensors", TINY_DECODER, dtype=torch.bfloat16)
    assert decoder.model.head.istft.window.dtype == torch.float32
    assert decoder.model.backbone.embed.weight.dtype == torch.bfloat16
    ids = torch.randint(0, TINY_DECODER.codebook_size, (1, 5, TINY_DECODER.num_quantizers))
    with torch.no_grad():
        wav = decoder.decode(ids)
    assert wav.dtype == torch.float32 and wav.shape == (1, 1, 5 * TINY_DECODER.hop_size)
    assert WINDOW_KEY in official_state(decoder)
