"""Masked decoding: schedule, top-k, noise sources, CFG statistics, batching several sequences."""

import json
import math

import pytest
import torch

from metis_rt.config import S2AConfig, Stage1Config, Stage1Decoding
from metis_rt.models.decoding import (
    GumbelNoise,
    RowNoise,
    ZeroNoise,
    apply_cfg,
    mask_schedule,
    timesteps,
    top_k_filter,
)
from metis_rt.models.s2a import S2AModel
from metis_rt.models.stage1 import Stage1Inputs, Stage1Model

from .conftest import PARITY_DIR


def _decode_params(task):
    manifest = json.loads((PARITY_DIR / task / "cases" / "manifest.json").read_text())
    return [c["params"] for c in manifest["checks"] if c["component"] in ("stage1_decode", "s2a_decode")]


@pytest.mark.parametrize("task", ["se", "tse", "vc"])
def test_mask_schedule_matches_reference_listing(task):
    for params in _decode_params(task):
        schedule, steps = params["mask_schedule_next_mask_num"], params["n_timesteps"]
        if isinstance(schedule, dict):  # full S2A model: layer 1 has its own steps
            schedule, steps = schedule["layer1"], steps[1]
        elif isinstance(steps, list):
            steps = steps[0]
        assert mask_schedule(steps, params["target_len"]) == schedule


def test_timesteps_are_one_minus_i_over_steps():
    assert timesteps(4) == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_top_k_keeps_ceil_of_two_percent():
    logits = torch.randn(2, 3, 512, generator=torch.Generator().manual_seed(0))
    kept = torch.isfinite(top_k_filter(logits, 0.98)).sum(-1)
    assert bool((kept == math.ceil(0.02 * 512)).all())
    assert math.ceil(0.02 * 512) == 11  # the parity manifests' top_k_kept


def test_gumbel_noise_is_seeded_and_zero_noise_is_zero():
    like = torch.zeros(1, dtype=torch.float64)
    a = GumbelNoise(7).gumbel(torch.Size([4, 5]), like)
    b = GumbelNoise(7).gumbel(torch.Size([4, 5]), like)
    c = GumbelNoise(8).gumbel(torch.Size([4, 5]), like)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float64
    assert not ZeroNoise().gumbel(torch.Size([3]), like).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_noise_gives_each_row_its_own_streams_draws_bit_for_bit(dtype):
    like, shape = torch.zeros(1, dtype=dtype), torch.Size([3, 4, 6])
    alone = [GumbelNoise(seed).gumbel(torch.Size([1, 4, 6]), like) for seed in (1, 2, 3)]
    rows = RowNoise([GumbelNoise(seed) for seed in (1, 2, 3)])  # seeded rows: one transform for the batch
    assert rows._uniform
    assert torch.equal(rows.gumbel(shape, like), torch.cat(alone))
    mixed = RowNoise([GumbelNoise(1), ZeroNoise(), GumbelNoise(3)])  # a noise-free stream batched with others
    assert not mixed._uniform
    got = mixed.gumbel(shape, like)
    assert torch.equal(got[0], alone[0][0]) and not got[1].any() and torch.equal(got[2], alone[2][0])
    with pytest.raises(ValueError, match="3 rows but 2 noise sources"):
        RowNoise([GumbelNoise(1), GumbelNoise(2)]).gumbel(shape, like)


def test_cfg_uses_per_row_statistics():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    u = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    both = apply_cfg(e, u, 2.5, 0.75)
    for row in range(2):
        alone = apply_cfg(e[row : row + 1], u[row : row + 1], 2.5, 0.75)
        assert torch.allclose(both[row : row + 1], alone, rtol=0, atol=1e-14)
    # B = 1: the reference's single global std over the whole tensor
    guided = e[:1] + 2.5 * (e[:1] - u[:1])
    reference = 0.75 * guided * e[:1].std() / guided.std() + 0.25 * guided
    assert torch.allclose(apply_cfg(e[:1], u[:1], 2.5, 0.75), reference, rtol=0, atol=1e-14)


def _tiny_stage1():
    torch.manual_seed(0)
    cfg = Stage1Config(hidden_size=16, num_layers=2, num_heads=2, cond_codebook_size=64, cond_dim=6)
    model = Stage1Model(cfg).double().eval()
    with torch.no_grad():  # spread-out random weights so that different inputs give different ids
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
def test_stage1_batch_equals_each_row_alone(cfg_scale):
    model = _tiny_stage1()
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 64, (3, 4), generator=g)
    cond = torch.randn(3, 4 + 9, 6, generator=g, dtype=torch.float64)
    settings = Stage1Decoding(steps=5, cfg=cfg_scale)
    with torch.inference_mode():
        batched = model.generate(Stage1Inputs(prompt, cond), 9, settings, ZeroNoise())
        for row in range(3):
            alone = model.generate(Stage1Inputs(prompt[row : row + 1], cond[row : row + 1]), 9, settings, ZeroNoise())
            assert torch.equal(batched[row : row + 1], alone)
    assert len({tuple(r.tolist()) for r in batched}) > 1  # rows really differ


def test_s2a_batch_equals_each_row_alone():
    torch.manual_seed(0)
    model = (
        S2AModel(
            S2AConfig(
                num_quantizer=3, hidden_size=16, num_layers=1, num_heads=2, codebook_size=32, cond_codebook_size=64
            )
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(3)
    semantic = torch.randint(0, 64, (2, 12), generator=g)
    prompt = torch.randint(0, 32, (2, 4, 3), generator=g)
    kwargs = {"cfg": 2.5, "rescale_cfg": 0.75, "temperature": 1.5, "filter_thres": 0.9, "noise": ZeroNoise()}
    with torch.inference_mode():
        batched = model.generate(semantic, prompt, (6, 3, 1), **kwargs)
        assert batched.shape == (2, 8, 3)
        for row in range(2):
            alone = model.generate(semantic[row : row + 1], prompt[row : row + 1], (6, 3, 1), **kwargs)
            assert torch.equal(batched[row : row + 1], alone)


def test_sampling_noise_changes_ids_and_seed_reproduces_them():
    model = _tiny_stage1()
    g = torch.Generator().manual_seed(4)
    inputs = Stage1Inputs(torch.zeros(1, 0, dtype=torch.long), torch.randn(1, 20, 6, generator=g, dtype=torch.float64))
    settings = Stage1Decoding(steps=4, temperature=5.0)
    with torch.inference_mode():
        a = model.generate(inputs, 20, settings, GumbelNoise(1))
        b = model.generate(inputs, 20, settings, GumbelNoise(1))
        greedy = model.generate(inputs, 20, settings, ZeroNoise())
        others = [model.generate(inputs, 20, settings, GumbelNoise(s)) for s in range(2, 6)]
    assert torch.equal(a, b)
    assert any(not torch.equal(o, greedy) for o in [a, *others])
