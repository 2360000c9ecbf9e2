"""Issue 20: the stacked layers' oneDNN-packed weights give the unpacked products within float32 rounding, are
used only where they pay, and follow every weight change."""

import pytest
import torch
import torch.nn.functional as F

from metis_rt.models import packed_linear
from metis_rt.models.hop_speed import BASELINE, HopSpeed
from metis_rt.models.packed_linear import PackedWeight, linear, pack, supported
from metis_rt.models.transformer import DiffusionTransformer

pytestmark = pytest.mark.skipif(not supported(), reason="this torch build has no oneDNN packed product")

WIDE = 128  # packed sides start here (packed_linear.MIN_SIDE)


def _weights(out_features, in_features, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, in_features, generator=g), torch.randn(out_features, generator=g)


def test_packed_product_equals_f_linear_within_float32_rounding_for_any_row_count():
    w, b = _weights(384, 192)
    packed = pack(w)
    assert type(packed) is PackedWeight and packed.weight is w
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for shape in [(1, 1, 192), (1, 38, 192), (8, 20, 192), (3, 192)]:
            x = torch.randn(shape, generator=g)
            for bias in (None, b):
                got, want = linear(x, packed, bias), F.linear(x, w, bias)
                assert got.shape == want.shape and got.dtype == torch.float32
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        strided = torch.randn(2, 192, 30, generator=g).transpose(1, 2)  # not contiguous
        torch.testing.assert_close(linear(strided, packed), F.linear(strided, w), rtol=1e-5, atol=1e-4)


def test_packing_only_where_it_pays_and_the_original_weight_elsewhere():
    narrow, _ = _weights(96, 32)
    assert pack(narrow) is narrow  # the tiny models' widths run faster unpacked
    wide64 = torch.randn(256, 256, dtype=torch.float64)
    assert pack(wide64) is wide64  # float64 (the parity vectors) is never packed
    w, b = _weights(256, 128)
    packed = pack(w)
    x = torch.randn(4, 128, requires_grad=True)
    out = linear(x, packed, b)  # gradients on: the original weight, so autograd records
    out.sum().backward()
    assert torch.equal(out, F.linear(x, w, b)) and x.grad is not None


def _wide_stack(seed=0):
    torch.manual_seed(seed)
    stack = DiffusionTransformer(WIDE, 2, 4, with_cond_mlp=False).eval()
    with torch.no_grad():
        for p in stack.parameters():
            p.normal_(0.0, 0.05)
    return stack


def _guided(stack, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 30, WIDE, generator=g)
    x_u = torch.randn(2, 20, WIDE, generator=g)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, :3] = False
    with torch.inference_mode():
        return stack.guided(x, torch.full((2,), 0.4), 10, key_mask=mask, uncond_x=x_u, cfg=2.5, rescale=0.75)


def test_a_packed_stack_gives_the_unpacked_stack_results_within_float32_rounding():
    stack = _wide_stack()
    assert stack.fuse() and not stack.packed()
    want = _guided(stack)
    assert stack.fuse(pack=True) and stack.packed()
    assert all(type(w) is PackedWeight for layer in stack._fused_plan() for w in layer)
    got = _guided(stack)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    assert stack.fuse(pack=False) and not stack.packed()  # asking for the other setting re-plans
    assert not any(isinstance(w, PackedWeight) for layer in stack._fused_plan() for w in layer)


def test_a_packed_stack_follows_in_place_updates_and_replaced_weights():
    stack = _wide_stack()
    stack.fuse(pack=True)
    before = _guided(stack)
    with torch.no_grad():
        stack.layers[1].mlp.down_proj.weight.mul_(3.0)  # in place: the packed copy is stale now
    assert stack._fused_plan() is None
    after = _guided(stack)  # the module path meanwhile, with the new weight
    assert not torch.allclose(after[1], before[1])
    stack.fuse(pack=True)
    torch.testing.assert_close(_guided(stack)[1], after[1], rtol=1e-4, atol=1e-4)
    attn = stack.layers[0].self_attn
    attn.o_proj.weight = torch.nn.Parameter(attn.o_proj.weight.detach() * 0.5)
    assert stack._fused_plan() is None


def test_stacks_over_the_memory_cap_keep_one_copy(monkeypatch):
    stack = _wide_stack()
    monkeypatch.setattr(packed_linear, "MAX_STACK_BYTES", 1024)
    assert stack.fuse(pack=True) and not stack.packed()


def test_hop_speed_packs_on_the_fast_path_only():
    assert HopSpeed().packed_weights and not BASELINE.packed_weights
    from metis_rt.models.hop_speed import apply_hop_speed
    from metis_rt.pipeline.components import MetisComponents

    class Chain:  # the parts apply_hop_speed touches
        device = torch.device("cpu")
        generative_models = MetisComponents.generative_models  # the real enumeration of the stacks

        def __init__(self):
            self.stage1 = {}
            self.s2a_1layer = _Holder()
            self.s2a_full = _Holder()
            self.ssl = _Ssl()

    chain = Chain()
    apply_hop_speed(chain, HopSpeed(compile="never"))
    assert chain.s2a_full.diff_estimator.packed()
    apply_hop_speed(chain, HopSpeed(compile="never", packed_weights=False))
    assert not chain.s2a_full.diff_estimator.packed()
    apply_hop_speed(chain, BASELINE)
    assert chain.s2a_full.diff_estimator._fused_plan() is None


class _Holder:
    def __init__(self):
        self.diff_estimator = _wide_stack()
        self.fast_path = True


class _Ssl:
    def __init__(self):
        self.fast_path = True
        self.encoder = torch.nn.Module()
