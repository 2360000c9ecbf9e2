"""Issue 20: the hop's fast path gives the previous path's results bit for bit; compiled stacks match eager."""

import pytest
import torch

from metis_rt.config import S2AConfig, Stage1Config, Stage1Decoding
from metis_rt.models.decoding import GumbelNoise, SamplingParams, ZeroNoise, masked_decode
from metis_rt.models.hop_speed import BASELINE, HopSpeed, apply_hop_speed
from metis_rt.models.s2a import S2AModel
from metis_rt.models.stage1 import Stage1Inputs, Stage1Model
from metis_rt.models.transformer import DiffusionTransformer, guide
from metis_rt.pipeline.components import MetisComponents


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


def _s2a_case():
    """(generator, semantic ids, prompt ids, prompt mask, generate kwargs) of two rows, one left-padded."""
    g = torch.Generator().manual_seed(3)
    semantic = torch.randint(0, 64, (2, 12), generator=g)
    prompt = torch.randint(0, 32, (2, 4, 3), generator=g)
    mask = torch.tensor([[False, True, True, True], [True] * 4])
    kwargs = {"cfg": 2.5, "rescale_cfg": 0.75, "temperature": 1.5, "filter_thres": 0.9, "prompt_mask": mask}
    return g, semantic, prompt, mask, kwargs


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
    g, semantic, prompt, mask, kwargs = _s2a_case()
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
        assert "guided_rows" not in model.diff_estimator.__dict__  # compile off restores the eager method
    assert torch.equal(eager, compiled)


@pytest.fixture
def stand_in_components():
    """A stand-in for MetisComponents with only what apply_hop_speed touches (one S2A model in both slots)."""

    class Comps:
        generative_models = MetisComponents.generative_models  # the real enumeration of the stacks

        def __init__(self, s2a):
            self.stage1, self.s2a_1layer, self.s2a_full, self.device = {}, s2a, s2a, torch.device("cpu")
            self.ssl = type("Ssl", (), {"encoder": torch.nn.Identity()})()

    return Comps


# --- the stacked-projection path and the remembered step conditions -------------------------------------------------
def _stack_inputs(hidden=16, batch=2, length=12, drop=4, seed=11):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, hidden, generator=g, dtype=torch.float64)
    x_u = torch.randn(batch, length - drop, hidden, generator=g, dtype=torch.float64)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, :2] = False  # left padding of a shorter prompt
    return x, x_u, mask


def test_stacked_projections_give_the_module_path_results_and_leave_the_weights_alone():
    model = _s2a()
    stack = model.diff_estimator
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    x, x_u, mask = _stack_inputs()
    t = torch.full((2,), 0.6)
    with torch.inference_mode():
        want = stack.guided(x, t, 4, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
    assert stack.fuse() and stack._fused_plan() is not None
    with torch.inference_mode():
        got = stack.guided(x, t, 4, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    assert not torch.equal(got[0], got[1])  # guidance really changed the rows
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p is params[n] for n, p in model.named_parameters())  # same Parameter objects, now views
    q = stack.layers[0].self_attn.q_proj.weight
    assert q.data_ptr() == stack._fused_plan()[0][0].data_ptr()  # q's rows are the stacked tensor's first rows


@pytest.mark.parametrize("prefix_rows", [0, 3])
def test_cfg_pair_packed_in_one_sequence_equals_two_separate_passes(prefix_rows):
    stack = _s2a().diff_estimator
    assert stack.fuse()
    x, x_u, mask = _stack_inputs()
    prefix = torch.randn(2, prefix_rows, x.shape[-1], dtype=x.dtype) if prefix_rows else None
    if prefix is not None:
        mask = torch.cat([torch.ones(2, prefix_rows, dtype=torch.bool), mask], dim=1)
    t = torch.full((2,), 0.6)
    with torch.inference_mode():
        c, scales = stack.conditioning(t, x.dtype)
        got = stack.guided_rows(x, c, scales, 4, prefix=prefix, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
        h = x if prefix is None else torch.cat([prefix, x], dim=1)
        cond = stack._stack(h, c, scales, mask)[:, prefix_rows + 4 :]  # the pair as two calls
        uncond = stack._stack(x_u, c, scales, None)
    torch.testing.assert_close(got[0], cond, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], guide(cond, uncond, 2.5, 0.75), rtol=1e-12, atol=1e-12)
    assert x_u.shape[1] != h.shape[1]  # no padding: the halves keep their own lengths and positions


def test_s2a_decoding_on_stacked_projections_gives_the_module_path_ids():
    model = _s2a()
    g, semantic, prompt, mask, kwargs = _s2a_case()
    runs = []
    for fused in (False, True):
        model.diff_estimator.fuse(fused)
        with torch.inference_mode():
            runs.append(model.generate(semantic, prompt, (6, 3, 1), noise=GumbelNoise(5), **kwargs))
    assert torch.equal(runs[0], runs[1])


def test_stacked_path_steps_aside_when_a_weight_is_replaced_or_fusing_is_off():
    model = _s2a()
    stack = model.diff_estimator
    stack.fuse()
    x, x_u, mask = _stack_inputs()
    t = torch.full((2,), 0.3)
    attn = stack.layers[1].self_attn
    attn.k_proj.weight = torch.nn.Parameter(attn.k_proj.weight.detach().clone() * 2)  # the view is gone
    assert stack._fused_plan() is None
    with torch.inference_mode():
        got = stack.guided(x, t, 4, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
    stack.fuse(False)  # the module path, one projection per call, with the new weight
    with torch.inference_mode():
        want = stack.guided(x, t, 4, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
    assert torch.equal(got[1], want[1])
    assert stack.fuse() and stack._fused_plan() is not None  # fusing again takes the new weight in
    with torch.inference_mode():
        again = stack.guided(x, t, 4, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
    torch.testing.assert_close(again[1], want[1], rtol=1e-12, atol=1e-12)


def test_lora_wrapped_projections_are_not_stacked():
    from metis_rt.models.lora import inject_lora

    model = _stage1()
    inject_lora(model, r=2, alpha=4)
    assert not model.diff_estimator.fuse() and model.diff_estimator._fused_plan() is None


def test_step_conditions_are_remembered_per_timestep_tensor_until_a_weight_changes():
    stack = _s2a().diff_estimator
    t = torch.full((2,), 0.5)
    with torch.inference_mode():
        c1, scales1 = stack.conditioning(t, torch.float64)
        c2, scales2 = stack.conditioning(t, torch.float64)
        other, _ = stack.conditioning(torch.full((2,), 0.5), torch.float64)  # equal values, another tensor
    assert c2 is c1 and scales2 is scales1 and other is not c1
    with torch.no_grad():
        stack.norm.to_weight.weight.add_(1.0)  # an in-place update (training, load_state_dict)
    with torch.inference_mode():
        _, scales3 = stack.conditioning(t, torch.float64)
        assert not torch.equal(scales3[-1], scales1[-1])
        torch.testing.assert_close(scales3[-1], stack.norm.scale(c1, torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rolled_rope_is_bit_for_bit_the_rotate_half_form(dtype):
    from metis_rt.models.transformer import apply_rolled_rope, apply_rope, rope_tables, signed_rope

    g = torch.Generator().manual_seed(5)
    for shape in [(2, 3, 2, 7, 16), (1, 1, 4, 33, 8)]:
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) * 3
        cos, sin = rope_tables(shape[-2], shape[-1], x.device, dtype)
        assert torch.equal(apply_rolled_rope(x, *signed_rope(cos, sin)), apply_rope(x, cos, sin))


def test_weight_checks_run_once_per_steady_block_and_see_changes_after_it():
    from metis_rt.models.weight_stamp import stamp, steady, still_unchanged

    weights = [torch.zeros(3), torch.ones(2)]
    before = stamp(weights)
    reads = []

    def watched():
        reads.append(1)
        return weights

    assert still_unchanged(before, watched) and still_unchanged(before, watched) and len(reads) == 2
    with steady():
        assert all(still_unchanged(before, watched) for _ in range(5))
        assert len(reads) == 3  # checked once in the block
        with steady():  # a nested block checks afresh
            assert still_unchanged(before, watched) and len(reads) == 4
    weights[0].add_(1.0)  # between blocks: an in-place update is seen
    assert not still_unchanged(before, watched)
    with steady():
        assert not still_unchanged(before, watched) and not still_unchanged(before, watched)
        assert still_unchanged(stamp(weights), watched)  # another stamp: its own check
    assert len(reads) == 7


def test_a_weight_replaced_between_engine_steps_reaches_the_next_step():
    """The steady block spans one step only: a stack whose weight changed since the last step steps aside."""
    from metis_rt.models.weight_stamp import steady

    stack = _s2a().diff_estimator
    stack.fuse()
    x, x_u, mask = _stack_inputs()
    t = torch.full((2,), 0.3)
    with steady(), torch.inference_mode():
        stack.guided(x, t, 4, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
        assert stack._fused_plan() is not None
    attn = stack.layers[0].self_attn
    attn.q_proj.weight = torch.nn.Parameter(attn.q_proj.weight.detach().clone() * 2)
    with torch.no_grad():
        stack.layers[0].input_layernorm.to_weight.bias.add_(1.0)
    with steady(), torch.inference_mode():
        assert stack._fused_plan() is None
        got = stack.guided(x, t, 4, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
    stack.fuse(False)
    with torch.inference_mode():
        want = stack.guided(x, t, 4, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_decoding_passes_the_same_step_tensors_every_hop():
    from metis_rt.models.decoding import step_times

    first = step_times(4, 2, torch.device("cpu"))
    assert step_times(4, 2, torch.device("cpu")) is first
    assert [round(float(t[0]), 6) for t in first] == [1.0, 0.75, 0.5, 0.25] and first[0].shape == (2,)
    with torch.inference_mode():
        made_inside = step_times(3, 1, torch.device("cpu"))
    assert not made_inside[0].is_inference()  # usable where autograd records, whoever asked first


def test_parity_vectors_run_on_the_stacked_fast_path(parity_dir):
    from metis_rt.parity import EAGER, VectorDir

    vd = VectorDir(parity_dir / "se")
    assert vd.speed is EAGER
    stacks = [m.diff_estimator for m in (*vd.comps.stage1.values(), vd.comps.s2a_1layer, vd.comps.s2a_full)]
    assert all(s._fused_plan() is not None for s in stacks)


# --- the w2v-BERT encoder's fast pass ---------------------------------------------------------------------------------
def _ssl(parity_dir):
    from metis_rt.models.ssl import SslFeatures

    ssl = SslFeatures.load(parity_dir / "se", dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # spread the weights (and the distance embeddings) so that every term matters
        for p in ssl.encoder.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return ssl


def test_w2v_fast_pass_gives_the_module_hidden_states(parity_dir):
    ssl = _ssl(parity_dir)
    g = torch.Generator().manual_seed(5)
    for frames, batch in ((37, 1), (99, 3)):
        wav = torch.randn(batch, frames * 320 + 240, generator=g).numpy() * 0.1
        feats = [ssl.extract(w) for w in wav]
        from metis_rt.models.ssl import ExtractorOutput

        stacked = ExtractorOutput(
            torch.cat([f.input_features for f in feats]), torch.cat([f.attention_mask for f in feats])
        )
        with torch.inference_mode():
            assert ssl._fast.supports(stacked.attention_mask)
            ssl.fast_path = False
            want = ssl.hidden(stacked)
            ssl.fast_path = True
            got = ssl.hidden(stacked)
        assert got.shape == want.shape == (batch, frames, ssl.dim)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert want.std() > 0.1  # not a degenerate output


def test_w2v_fast_pass_steps_aside_for_padding_and_gradients_and_follows_weight_changes(parity_dir):
    ssl = _ssl(parity_dir)
    feats = ssl.extract(torch.randn(40 * 320 + 240, generator=torch.Generator().manual_seed(6)).numpy() * 0.1)
    padded = feats.attention_mask.clone()
    padded[0, -3:] = 0
    assert not ssl._fast.supports(padded)
    with torch.enable_grad():
        assert not ssl._fast.supports(feats.attention_mask)
    with torch.inference_mode():
        before = ssl.hidden(feats)
    layer = ssl.encoder.encoder.layers[0].self_attn
    g = torch.Generator().manual_seed(7)
    table = layer.distance_embedding.weight  # (a constant shift of every entry would cancel in the softmax)
    updates = (
        lambda: table.add_(torch.randn(table.shape, generator=g, dtype=table.dtype)),
        lambda: layer.linear_k.weight.mul_(1.5),
    )
    for update in updates:
        with torch.no_grad():
            update()  # in place, as training or load_state_dict would
        with torch.inference_mode():
            ssl.fast_path = True
            after = ssl.hidden(feats)
            ssl.fast_path = False
            want = ssl.hidden(feats)
        assert not torch.allclose(after, before)
        torch.testing.assert_close(after, want, rtol=1e-12, atol=1e-12)
        before = after
