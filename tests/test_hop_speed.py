"""Issue 20: the hop's fast path gives the previous path's results bit for bit; compiled stacks match eager."""

import pytest
import torch

from metis_rt.config import S2AConfig, Stage1Config, Stage1Decoding
from metis_rt.models.decoding import GumbelNoise, SamplingParams, ZeroNoise, masked_decode
from metis_rt.models.hop_speed import BASELINE, HopSpeed, apply_hop_speed
from metis_rt.models.s2a import S2AModel
from metis_rt.models.stage1 import Stage1Inputs, Stage1Model
from metis_rt.models.transformer import DiffusionTransformer


def _spread(model: torch.nn.Module, dtype=torch.float64) -> torch.nn.Module:
    model = model.to(dtype).eval()
    with torch.no_grad():  # spread-out random weights so that different inputs give different ids
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def _stage1():
    torch.manual_seed(0)
    return _spread(
        Stage1Model(Stage1Config(hidden_size=16, num_layers=2, num_heads=2, cond_codebook_size=64, cond_dim=6))
    )


def _s2a(dtype=torch.float64, num_layers=2):
    torch.manual_seed(0)
    cfg = S2AConfig(
        num_quantizer=3, hidden_size=16, num_layers=num_layers, num_heads=2, codebook_size=32, cond_codebook_size=64
    )
    return _spread(S2AModel(cfg), dtype)


def _both_paths(model, run):
    model.fast_path = False
    before = run()
    model.fast_path = True
    return before, run()


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
def test_stage1_fast_path_gives_the_previous_ids_bit_for_bit(cfg_scale):
    model = _stage1()
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 64, (3, 5), generator=g)
    cond = torch.randn(3, 5 + 9, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5, [False, True, True, True, True]])
    settings = Stage1Decoding(steps=5, cfg=cfg_scale, temperature=3.0)
    with torch.inference_mode():
        before, after = _both_paths(
            model, lambda: model.generate(Stage1Inputs(prompt, cond, prompt_mask=mask), 9, settings, GumbelNoise(4))
        )
    assert torch.equal(before, after)
    assert len({tuple(r.tolist()) for r in after}) > 1  # rows really differ


def test_s2a_fast_path_gives_the_previous_ids_and_hidden_states_bit_for_bit():
    model = _s2a()
    g = torch.Generator().manual_seed(3)
    semantic = torch.randint(0, 64, (2, 12), generator=g)
    prompt = torch.randint(0, 32, (2, 4, 3), generator=g)
    mask = torch.tensor([[False, True, True, True], [True] * 4])
    kwargs = {"cfg": 2.5, "rescale_cfg": 0.75, "temperature": 1.5, "filter_thres": 0.9, "prompt_mask": mask}
    with torch.inference_mode():
        before, after = _both_paths(
            model, lambda: model.generate(semantic, prompt, (6, 3, 1), noise=GumbelNoise(5), **kwargs)
        )
        assert torch.equal(before, after)
        rows = model.prompt_rows(prompt)
        target, bias = torch.randn(2, 8, 16, generator=g, dtype=torch.float64), model.condition(semantic, 1)
        t = torch.tensor([0.7, 0.7], dtype=torch.float32)
        old, new = _both_paths(model, lambda: model.hidden(rows, target, bias, t, 2.5, 0.75, mask))
    assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])


def test_masked_decode_fast_loop_matches_the_reference_loop_with_noise():
    g = torch.Generator().manual_seed(6)
    table = torch.randn(40, 50, generator=g)

    def predict(seq, mask, t):  # depends on the ids, the mask and t, like a real denoiser
        return table[seq] * (1 + t[:, None, None]) + mask[..., None] * 0.3

    params = SamplingParams(steps=7, temperature=1.5, filter_thres=0.9)
    runs = [masked_decode(predict, 3, 40, params, GumbelNoise(9), "cpu", fast=f) for f in (False, True)]
    assert torch.equal(runs[0], runs[1])


def test_hop_speed_rejects_an_unknown_compile_choice_and_compiles_on_cuda_only_by_default():
    with pytest.raises(ValueError, match="auto, always, never"):
        HopSpeed(compile="yes")
    assert HopSpeed().compiles(torch.device("cuda")) and not HopSpeed().compiles(torch.device("cpu"))
    assert HopSpeed(compile="always").compiles(torch.device("cpu")) and not BASELINE.compiles(torch.device("cuda"))


@pytest.mark.compile_long
def test_compiled_stack_matches_eager_across_lengths_and_batches():
    """One dynamic-shape graph per variant; float32 results within float tolerance of eager."""
    torch.manual_seed(0)
    stack = DiffusionTransformer(32, 2, 2, with_cond_mlp=False).eval()
    compiled = torch.compile(stack.guided, dynamic=True)
    g = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        for batch, length, drop in ((1, 30, 10), (1, 41, 17), (3, 30, 10), (3, 52, 20)):
            x = torch.randn(batch, length, 32, generator=g)
            x_u = torch.randn(batch, length - drop, 32, generator=g)
            t = torch.full((batch,), 0.6)
            mask = torch.rand(batch, length, generator=g) > 0.2
            mask[:, drop:] = True
            want = stack.guided(x, t, drop, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
            got = compiled(x, t, drop, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
            for w, c in zip(want, got, strict=True):
                assert c.shape == w.shape
                torch.testing.assert_close(c, w, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_chain_decodes_the_eager_ids(stand_in_components):
    """apply_hop_speed(compile='always') on the tiny S2A: float64 compiled decoding gives the eager ids."""
    model = _s2a(num_layers=1)
    g = torch.Generator().manual_seed(8)
    semantic = torch.randint(0, 64, (1, 14), generator=g)
    prompt = torch.randint(0, 32, (1, 5, 3), generator=g)
    kwargs = {"cfg": 2.5, "rescale_cfg": 0.75, "temperature": 1.5, "filter_thres": 0.9, "noise": ZeroNoise()}
    with torch.inference_mode():
        eager = model.generate(semantic, prompt, (2, 1, 1), **kwargs)
        comps = stand_in_components(model)
        assert apply_hop_speed(comps, HopSpeed(compile="always", compile_ssl=False)) == ["s2a_1layer", "s2a_full"]
        compiled = model.generate(semantic, prompt, (2, 1, 1), **kwargs)
        apply_hop_speed(comps, HopSpeed(compile="never"))
        assert "guided" not in model.diff_estimator.__dict__  # compile off restores the eager method
    assert torch.equal(eager, compiled)


@pytest.fixture
def stand_in_components():
    """A stand-in for MetisComponents with only what apply_hop_speed touches (one S2A model in both slots)."""

    class Comps:
        def __init__(self, s2a):
            self.stage1, self.s2a_1layer, self.s2a_full, self.device = {}, s2a, s2a, torch.device("cpu")
            self.ssl = type("Ssl", (), {"encoder": torch.nn.Identity()})()

    return Comps
