"""Official-size modules built on ``meta`` hold exactly the tensor names and shapes of the released files.

The dumps under ``tests/data/spec/keys`` list every tensor of each official checkpoint (see their README). Building
on ``meta`` allocates nothing, so these checks cost milliseconds even for the 700 M-parameter models.
"""

from __future__ import annotations

import re

import pytest
from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

from metis_rt.config import ModelConfig, load_official_config
from metis_rt.models.checkpoints import file_layout, on_meta
from metis_rt.models.s2a import UNUSED_KEYS, S2AModel
from metis_rt.models.ssl import unused_w2v_key
from metis_rt.models.stage1_loading import (
    LORA_VARIANTS,
    STAGE1_VARIANTS,
    build_stage1,
    expected_file_layouts,
    stage1_files,
)

from .conftest import SPEC_KEYS_DIR, read_key_dump

BASE_DUMP = "metis_base__MetisStage1_ft_None.txt"
FULL_VARIANT_DUMPS = {
    "base": BASE_DUMP,
    "omni": "metis_omni_full__MetisStage1_omni.txt",
    "l2s": "metis_l2s_full__MetisStage1_l2s.txt",
    "tts": "maskgct_t2s__MetisStage1_tts.txt",
}
HUB_TASK_FILES = {  # released names on amphion/Metis (rank from the official config)
    "se": ("metis_se/metis_se_lora_32.safetensors", "metis_se/metis_se_lora_32_adapter.safetensors"),
    "tse": ("metis_tse/metis_tse_lora_32.safetensors", "metis_tse/metis_tse_lora_32_adapter.safetensors"),
    "vc": ("metis_vc/metis_vc_lora_16.safetensors", "metis_vc/metis_vc_lora_16_adapter.safetensors"),
}
S2A_DUMPS = {"s2a_1layer": "s2a_model_1layer__MaskGCT_S2A.txt", "s2a_full": "s2a_model_full__MaskGCT_S2A.txt"}
W2V_DUMP = "w2v_bert_2_0__Wav2Vec2BertModel.txt"
W2V_BUILT_LAYERS = 17  # SslFeatures.load builds what hidden_states[17] needs
_DUMP_COUNT = re.compile(r"^# .*?: (\d+) tensors")


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return ModelConfig()


def dump_count(name: str) -> int | None:
    """Tensor count stated in a dump's first comment line, if it states one."""
    m = _DUMP_COUNT.match((SPEC_KEYS_DIR / name).read_text().splitlines()[0])
    return int(m.group(1)) if m else None


def test_default_model_config_is_the_official_config():
    assert ModelConfig() == load_official_config().model


def test_every_stage1_variant_is_covered():
    assert set(STAGE1_VARIANTS) == set(FULL_VARIANT_DUMPS) | set(LORA_VARIANTS)


@pytest.mark.parametrize(("variant", "dump"), sorted(FULL_VARIANT_DUMPS.items()))
def test_full_stage1_variant_matches_dump(cfg, variant, dump):
    layouts = expected_file_layouts(variant, cfg)
    expected = read_key_dump(dump)
    assert list(layouts) == [stage1_files(variant, cfg).main]
    assert layouts[stage1_files(variant, cfg).main] == expected
    assert len(expected) == dump_count(dump)


@pytest.mark.parametrize("variant", LORA_VARIANTS)
def test_lora_stage1_variant_matches_dumps(cfg, variant):
    r = cfg.lora[variant].r
    files = stage1_files(variant, cfg)
    assert (files.lora, files.adapter) == HUB_TASK_FILES[variant]
    layouts = expected_file_layouts(variant, cfg)
    assert set(layouts) == {files.main, files.adapter, files.lora}
    assert layouts[files.main] == read_key_dump(BASE_DUMP)
    assert layouts[files.adapter] == read_key_dump(f"metis_{variant}_lora_adapter_keys.txt")
    assert layouts[files.lora] == read_key_dump(f"metis_{variant}_lora_r{r}_keys.txt")
    assert len(layouts[files.lora]) == 2 * 7 * cfg.stage1.num_layers


def test_merged_task_model_has_the_full_fine_tune_layout(cfg):
    """After merging, a task model is base + adapter: the layout of the (unpublished) full metis_vc file."""
    assert file_layout(build_stage1("vc", cfg)) == read_key_dump("metis_vc_full__MetisStage1_vc.txt")


def test_vc_rank_comes_from_the_official_config():
    official = load_official_config().model
    assert (official.lora["vc"].r, official.lora["vc"].alpha) == (16, 32.0)
    assert (official.lora["se"].r, official.lora["tse"].r) == (32, 32)


@pytest.mark.parametrize(("which", "dump"), sorted(S2A_DUMPS.items()))
def test_s2a_matches_dump_plus_exactly_the_unused_keys(cfg, which, dump):
    with on_meta():
        model = S2AModel(getattr(cfg, which))
    ours = file_layout(model)
    expected = read_key_dump(dump)
    assert len(expected) == dump_count(dump)
    extra = {k: expected[k] for k in set(expected) - set(ours)}
    assert extra == {"diff_estimator.embed_tokens.weight": (0, 256)}
    assert set(extra) == UNUSED_KEYS
    assert ours == {k: s for k, s in expected.items() if k not in UNUSED_KEYS}


def expanded_w2v_dump() -> dict[str, tuple[int, ...]]:
    """The w2v-BERT dump lists encoder layer 0 only; layers 1..23 repeat its keys."""
    listed = read_key_dump(W2V_DUMP)
    n_layers = Wav2Vec2BertConfig().num_hidden_layers
    assert "encoder.layers.{1..23}" in (SPEC_KEYS_DIR / W2V_DUMP).read_text()
    assert n_layers == 24
    layout = {}
    for key, shape in listed.items():
        if key.startswith("encoder.layers.0."):
            for i in range(n_layers):
                layout[key.replace("encoder.layers.0.", f"encoder.layers.{i}.", 1)] = shape
        else:
            assert not key.startswith("encoder.layers.")
            layout[key] = shape
    assert len(layout) == dump_count(W2V_DUMP)
    return layout


def test_w2v_bert_truncated_encoder_is_a_subset_of_the_dump():
    config = Wav2Vec2BertConfig()
    config.num_hidden_layers = W2V_BUILT_LAYERS  # as SslFeatures.load
    config.mask_time_prob = 0.0
    config.mask_feature_prob = 0.0
    config.add_adapter = False
    with on_meta():
        encoder = Wav2Vec2BertModel(config)
    ours = file_layout(encoder)
    expected = expanded_w2v_dump()
    ignore = unused_w2v_key(W2V_BUILT_LAYERS)

    assert set(ours) <= set(expected)
    assert {k: expected[k] for k in ours} == ours
    skipped = set(expected) - set(ours)
    assert skipped and all(ignore(k) for k in skipped)
    assert not any(ignore(k) for k in ours)  # the filter never hides a tensor we need
    assert {int(k.split(".")[2]) for k in skipped} == set(range(W2V_BUILT_LAYERS, 24))
    assert ignore("masked_spec_embed")  # the hub file may carry SpecAugment's embedding
