"""Strict checkpoint loading: a file that does not match the model fails loudly, naming the file and the keys."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from safetensors.torch import save_file

from metis_rt.config import LoraConfig, ModelConfig, S2AConfig, Stage1Config
from metis_rt.errors import CheckpointError
from metis_rt.models.checkpoints import WNConv1d, load_checkpoint, meta_tensors, on_meta
from metis_rt.models.lora import LoraLinear, inject_lora
from metis_rt.models.s2a import UNUSED_KEYS, S2AModel
from metis_rt.models.stage1 import Stage1Model
from metis_rt.models.stage1_loading import load_stage1, stage1_config
from metis_rt.pipeline.components import S2A_FILES, load_s2a

from .conftest import write_stage1_task_files

TINY_S2A = S2AConfig(num_quantizer=2, hidden_size=16, num_layers=1, num_heads=2, codebook_size=8, cond_codebook_size=12)
TINY_CFG = ModelConfig(s2a_full=TINY_S2A)
S2A_PATH = S2A_FILES["s2a_full"]
EMBED_TOKENS_ARTEFACT = torch.zeros(0, 256)  # what the official S2A files carry (HF LlamaModel leftover)

TINY_TASK = dataclasses.replace(
    ModelConfig(),
    stage1=Stage1Config(hidden_size=16, num_layers=2, num_heads=2, cond_codebook_size=12, cond_dim=6),
    lora={"se": LoraConfig(2, 4)},
)


def s2a_state(model: S2AModel) -> dict[str, torch.Tensor]:
    """The model's tensors under the official names, including the [0, 256] artefact."""
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    (unused,) = UNUSED_KEYS
    return {**state, unused: EMBED_TOKENS_ARTEFACT}


def s2a_forward(model: S2AModel) -> torch.Tensor:
    """Logits of quantizer layer 1 for fixed inputs: [1, 5, codebook]."""
    gen = torch.Generator().manual_seed(10)
    semantic = torch.randint(0, TINY_S2A.cond_codebook_size, (1, 8), generator=gen)
    prompt_ids = torch.randint(0, TINY_S2A.codebook_size, (1, 3, TINY_S2A.num_quantizer), generator=gen)
    target_ids = torch.randint(0, TINY_S2A.codebook_size, (1, 5, TINY_S2A.num_quantizer), generator=gen)
    mask = torch.rand(1, 5, generator=gen) < 0.5
    dtype = model.mask_emb.weight.dtype
    with torch.no_grad():
        prompt = model.prompt_rows(prompt_ids)
        target = model.target_rows(model.lower_rows(target_ids, 1), target_ids[..., 1], mask, 1)
        cond, _ = model.hidden(prompt, target, model.condition(semantic, 1), torch.tensor([0.4], dtype=dtype), 0, 0)
        return model.to_logits[1](cond)


@pytest.fixture
def s2a_source() -> S2AModel:
    torch.manual_seed(0)
    return S2AModel(TINY_S2A).eval()


def save_s2a(tmp_path, state: dict[str, torch.Tensor]):
    path = tmp_path / S2A_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def test_clean_s2a_file_loads_and_reproduces_the_forward(tmp_path, s2a_source):
    save_s2a(tmp_path, s2a_state(s2a_source))
    loaded = load_s2a(tmp_path, "s2a_full", TINY_CFG, dtype=torch.float32, device="cpu")
    assert not meta_tensors(loaded)
    assert not hasattr(loaded.diff_estimator, "embed_tokens")
    torch.testing.assert_close(s2a_forward(loaded), s2a_forward(s2a_source), rtol=0, atol=0)


def _rename(state):
    state["diff_estimator.layers.0.self_attn.query.weight"] = state.pop(
        "diff_estimator.layers.0.self_attn.q_proj.weight"
    )
    return ["diff_estimator.layers.0.self_attn.q_proj.weight", "diff_estimator.layers.0.self_attn.query.weight"]


def _drop(state):
    del state["to_logits.1.bias"]
    return ["missing 1 tensor(s): to_logits.1.bias"]


def _extra(state):
    state["diff_estimator.layers.1.mlp.up_proj.weight"] = torch.zeros(64, 16)
    return ["unexpected 1 tensor(s): diff_estimator.layers.1.mlp.up_proj.weight"]


def _reshape(state):
    state["cond_emb.weight"] = torch.zeros(13, 16)
    return ["shape of cond_emb.weight: file has [13, 16], model expects [12, 16]"]


@pytest.mark.parametrize("corrupt", [_rename, _drop, _extra, _reshape], ids=["renamed", "missing", "extra", "shape"])
def test_mismatched_s2a_file_fails_naming_file_and_keys(tmp_path, s2a_source, corrupt):
    state = s2a_state(s2a_source)
    named = corrupt(state)
    path = save_s2a(tmp_path, state)
    with pytest.raises(CheckpointError) as info:
        load_s2a(tmp_path, "s2a_full", TINY_CFG, dtype=torch.float32, device="cpu")
    message = str(info.value)
    assert str(path) in message
    for fragment in named:
        assert fragment in message


def test_only_the_named_artefact_is_tolerated(tmp_path, s2a_source):
    state = s2a_state(s2a_source)
    state["diff_estimator.embed_positions.weight"] = torch.zeros(0, 256)  # a look-alike, not in UNUSED_KEYS
    save_s2a(tmp_path, state)
    with pytest.raises(CheckpointError, match="diff_estimator.embed_positions.weight"):
        load_s2a(tmp_path, "s2a_full", TINY_CFG, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_load_casts_every_tensor(tmp_path, s2a_source, dtype):
    save_s2a(tmp_path, s2a_state(s2a_source))
    loaded = load_s2a(tmp_path, "s2a_full", TINY_CFG, dtype=dtype, device="cpu")
    assert not meta_tensors(loaded)
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    assert all(isinstance(p, torch.nn.Parameter) for p in loaded.parameters())
    torch.testing.assert_close(loaded.cond_emb.weight, s2a_source.cond_emb.weight.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize(
    "content",
    [b"definitely not a safetensors file", b'\x08\x00\x00\x00\x00\x00\x00\x00{"a": 1}'],
    ids=["garbage", "bad-header"],
)
def test_unreadable_file_is_a_checkpoint_error(tmp_path, content):
    path = save_s2a(tmp_path, {"x": torch.zeros(1)})
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_s2a(tmp_path, "s2a_full", TINY_CFG, dtype=torch.float32, device="cpu")


def test_truncated_file_is_a_checkpoint_error(tmp_path, s2a_source):
    path = save_s2a(tmp_path, s2a_state(s2a_source))
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_s2a(tmp_path, "s2a_full", TINY_CFG, dtype=torch.float32, device="cpu")


def test_absent_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_s2a(tmp_path, "s2a_full", TINY_CFG, dtype=torch.float32, device="cpu")


def test_weight_norm_file_without_weight_g_fails(tmp_path):
    torch.manual_seed(1)
    conv = WNConv1d(3, 4, 3)
    path = tmp_path / "conv.safetensors"
    save_file({"weight_v": conv.weight.detach().clone(), "bias": conv.bias.detach().clone()}, str(path))
    with on_meta():
        target = WNConv1d(3, 4, 3)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, path)
    assert str(path) in str(info.value) and "missing 1 tensor(s): weight_g" in str(info.value)


# ----------------------------------------------------------------------------- stage-1 task variant (se)
def tiny_se_model() -> Stage1Model:
    """Random unmerged se model (gated adapter with a non-zero gate, non-zero LoRA B)."""
    torch.manual_seed(2)
    model = Stage1Model(stage1_config("se", TINY_TASK.stage1))
    lora = TINY_TASK.lora["se"]
    inject_lora(model, lora.r, lora.alpha)
    with torch.no_grad():
        model.cond_adapter.gate_scale.fill_(0.5)
        for module in model.modules():
            if isinstance(module, LoraLinear):
                module.lora_B["default"].weight.normal_()
    return model.eval()


def test_clean_se_model_dir_loads(tmp_path):
    write_stage1_task_files(tiny_se_model(), tmp_path, "se", TINY_TASK)
    loaded = load_stage1(tmp_path, "se", TINY_TASK)
    assert not meta_tensors(loaded)
    assert not any(isinstance(m, LoraLinear) for m in loaded.modules())


def test_se_adapter_file_without_gate_scale_fails(tmp_path):
    paths = write_stage1_task_files(tiny_se_model(), tmp_path, "se", TINY_TASK, drop={"model.cond_adapter.gate_scale"})
    with pytest.raises(CheckpointError) as info:
        load_stage1(tmp_path, "se", TINY_TASK)
    message = str(info.value)
    assert str(paths["adapter"]) in message
    assert "missing 1 tensor(s): model.cond_adapter.gate_scale" in message


def test_se_lora_file_missing_one_layer_fails(tmp_path):
    model = tiny_se_model()
    layer1 = {"model." + k for k in model.state_dict() if k.startswith("diff_estimator.layers.1.") and ".lora_" in k}
    assert len(layer1) == 14  # 7 targets x (A, B)
    paths = write_stage1_task_files(model, tmp_path, "se", TINY_TASK, drop=layer1)
    with pytest.raises(CheckpointError) as info:
        load_stage1(tmp_path, "se", TINY_TASK)
    message = str(info.value)
    assert str(paths["lora"]) in message
    assert "missing 14 tensor(s): model.diff_estimator.layers.1." in message
    assert "layers.0." not in message
