"""LoRA on the stage-1 denoiser: official layout, scaling alpha / r, merged == unmerged, file round trip."""

from __future__ import annotations

import copy
import dataclasses

import torch

from metis_rt.config import LoraConfig, ModelConfig, Stage1Config
from metis_rt.models.checkpoints import meta_tensors
from metis_rt.models.lora import LoraLinear, inject_lora, lora_parameters, merge_lora
from metis_rt.models.stage1 import Stage1Inputs, Stage1Model
from metis_rt.models.stage1_loading import load_stage1, stage1_config

from .conftest import write_stage1_task_files

TINY_STAGE1 = Stage1Config(hidden_size=16, num_layers=2, num_heads=2, cond_codebook_size=12, cond_dim=6)
R, ALPHA = 2, 8.0  # scaling 4.0: a hard-coded peft-style 2.0 would show
TARGETS = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
PROMPT_LEN, TARGET_LEN = 3, 5


def tiny_task_model(seed: int = 0) -> Stage1Model:
    """Random float64 se-architecture model (gated adapter with a non-zero gate), no LoRA yet."""
    torch.manual_seed(seed)
    model = Stage1Model(stage1_config("se", TINY_STAGE1)).double()
    with torch.no_grad():
        model.cond_adapter.gate_scale.fill_(0.7)
    return model.eval()


def randomise_lora(model: Stage1Model) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLinear):
                for factor in (module.lora_A["default"], module.lora_B["default"]):
                    factor.weight.copy_(0.3 * torch.randn(factor.weight.shape, generator=gen, dtype=torch.float64))


def logits(model: Stage1Model) -> torch.Tensor:
    """to_logit of the conditional and CFG-guided target rows for fixed inputs: 2 x [2, Tt, V]."""
    gen = torch.Generator().manual_seed(2)
    vocab = TINY_STAGE1.cond_codebook_size
    inputs = Stage1Inputs(
        prompt_ids=torch.randint(0, vocab, (2, PROMPT_LEN), generator=gen),
        condition=torch.randn(2, PROMPT_LEN + TARGET_LEN, TINY_STAGE1.cond_dim, generator=gen, dtype=torch.float64),
    )
    seq = torch.randint(0, vocab, (2, TARGET_LEN), generator=gen)
    mask = torch.rand(2, TARGET_LEN, generator=gen) < 0.5
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    with torch.no_grad():
        prep = model.prepare(inputs, TARGET_LEN)
        cond, guided = model.hidden(prep, model.target_rows(seq, mask), t, cfg=1.5, rescale=0.75)
        return torch.stack([model.to_logit(cond), model.to_logit(guided)])


def official_lora_names(num_layers: int) -> set[str]:
    return {
        f"model.diff_estimator.layers.{i}.{target}.lora_{ab}.default.weight"
        for i in range(num_layers)
        for target in TARGETS
        for ab in "AB"
    }


def test_inject_wraps_seven_linears_per_layer_with_official_names():
    model = tiny_task_model()
    names = inject_lora(model, R, ALPHA)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLinear)]
    assert len(names) == len(wrapped) == 7 * TINY_STAGE1.num_layers
    assert sorted(names) == sorted(wrapped)
    params = lora_parameters(model)
    assert set(params) == official_lora_names(TINY_STAGE1.num_layers)
    h = TINY_STAGE1.hidden_size
    for name, p in params.items():
        fan_in, fan_out = (4 * h, h) if ".down_proj." in name else (h, 4 * h) if ".mlp." in name else (h, h)
        assert p.shape == ((R, fan_in) if ".lora_A." in name else (fan_out, R)), name


def test_untrained_lora_is_the_identity():
    base = tiny_task_model()
    model = copy.deepcopy(base)
    inject_lora(model, R, ALPHA)
    torch.testing.assert_close(logits(model), logits(base), rtol=0, atol=0)


def test_scaling_is_alpha_over_r():
    model = tiny_task_model()
    inject_lora(model, R, ALPHA)
    randomise_lora(model)
    lora = model.diff_estimator.layers[1].mlp.up_proj
    assert {m.scaling for m in model.modules() if isinstance(m, LoraLinear)} == {4.0}
    a, b, w = lora.lora_A["default"].weight, lora.lora_B["default"].weight, lora.base_layer.weight
    x = torch.randn(3, TINY_STAGE1.hidden_size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(lora(x), x @ (w + 4.0 * b @ a).T, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lora.merged().weight, w + 4.0 * b @ a, rtol=0, atol=1e-14)


def test_merged_equals_unmerged():
    base = tiny_task_model()
    model = copy.deepcopy(base)
    inject_lora(model, R, ALPHA)
    randomise_lora(model)
    unmerged = logits(model)
    assert merge_lora(model) == 7 * TINY_STAGE1.num_layers
    merged = logits(model)
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert not lora_parameters(model)
    assert (merged - unmerged).abs().max().item() < 1e-12
    assert (merged - logits(base)).abs().max().item() > 1e-3  # the adapter changed the model


def test_load_stage1_round_trip_reproduces_the_unmerged_model(tmp_path):
    cfg = dataclasses.replace(ModelConfig(), stage1=TINY_STAGE1, lora={"se": LoraConfig(R, ALPHA)})
    model = tiny_task_model()
    inject_lora(model, R, ALPHA)
    randomise_lora(model)
    paths = write_stage1_task_files(model, tmp_path, "se", cfg)
    assert {p.relative_to(tmp_path).as_posix() for p in paths.values()} == {
        "metis_base/model.safetensors",
        f"metis_se/metis_se_lora_{R}_adapter.safetensors",
        f"metis_se/metis_se_lora_{R}.safetensors",
    }
    loaded = load_stage1(tmp_path, "se", cfg, dtype=torch.float64)
    assert not meta_tensors(loaded)
    assert not any(isinstance(m, LoraLinear) for m in loaded.modules())
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    assert (logits(loaded) - logits(model)).abs().max().item() < 1e-12
