"""Config loading: official numbers, strict keys, overrides, Amphion config.json translation."""

import json

import pytest

from metis_rt.config import (
    LoraConfig,
    ModelConfig,
    from_amphion,
    load_official_config,
)
from metis_rt.errors import ConfigError
from metis_rt.pipeline.components import resolve_config
from metis_rt.pipeline.process import DecodingOverrides, task_settings


def test_official_yaml_equals_dataclass_defaults():
    official = load_official_config()
    assert official.model == ModelConfig()
    assert official.model.lora == {"se": LoraConfig(32, 64), "tse": LoraConfig(32, 64), "vc": LoraConfig(16, 32)}


@pytest.mark.parametrize("task", ["se", "tse", "vc"])
def test_official_decoding_defaults_equal_reference_pipeline_settings(parity_dir, task):
    manifest = json.loads((parity_dir / task / "cases" / "manifest.json").read_text())
    params = next(c["params"] for c in manifest["checks"] if c["component"] == "pipeline")
    ours = task_settings(load_official_config(), task)
    s1 = params["stage1"]
    assert (
        ours.stage1.steps,
        ours.stage1.cfg,
        ours.stage1.rescale_cfg,
        ours.stage1.temperature,
        ours.stage1.filter_thres,
    ) == (s1["n_timesteps"], s1["cfg"], s1["rescale_cfg"], s1["temp"], s1["filter_thres"])
    full, one = params["s2a_full"], params["s2a_1layer"]
    assert list(ours.s2a.steps_full) == full["n_timesteps"] and ours.s2a.cfg_full == full["cfg"]
    assert list(ours.s2a.steps_1layer) == one["n_timesteps"] and ours.s2a.cfg_1layer == one["cfg"]
    assert (ours.s2a.temperature, ours.s2a.filter_thres, ours.s2a.rescale_cfg) == (
        full["temp"],
        full["filter_thres"],
        full["rescale_cfg"],
    )


def test_unknown_key_and_wrong_type_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  stage1:\n    hidden_sise: 3\n")
    with pytest.raises(ConfigError, match="hidden_sise"):
        load_official_config(bad)
    bad.write_text("model:\n  stage1:\n    hidden_size: big\n")
    with pytest.raises(ConfigError, match="expected an integer"):
        load_official_config(bad)
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_official_config(bad)


def test_overrides_apply_and_unknown_override_fails():
    cfg = load_official_config(overrides=["decoding.se.stage1.steps=4", "model.lora.vc.alpha=16"])
    assert cfg.decoding["se"].stage1.steps == 4
    assert cfg.model.lora["vc"].scaling == 1.0
    with pytest.raises(ConfigError, match="unknown key"):
        load_official_config(overrides=["decoding.se.stage1.stepz=4"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_official_config(overrides=["decoding.se.stage1.steps"])


def test_cli_overrides_of_task_settings():
    s = task_settings(load_official_config(), "vc", DecodingOverrides(stage1_steps=4, s2a_steps=(8, 4) + (1,) * 10))
    assert s.stage1.steps == 4 and s.stage1.cfg == 1.0
    assert s.s2a.steps_1layer == (8,) and s.s2a.steps_full[:2] == (8, 4)
    with pytest.raises(ConfigError, match="12 values"):
        task_settings(load_official_config(), "vc", DecodingOverrides(s2a_steps=(8, 4)))


def test_amphion_config_translation_reads_every_size(parity_dir):
    cfg, _ = resolve_config(parity_dir / "vc", "vc")
    assert (cfg.stage1.hidden_size, cfg.stage1.num_layers, cfg.stage1.num_heads) == (48, 3, 2)
    assert cfg.stage1.cond_codebook_size == 512 and cfg.stage1.cond_dim == 32
    assert cfg.lora["vc"] == LoraConfig(2, 4)
    assert cfg.s2a_full.num_quantizer == 12 and cfg.s2a_1layer.num_quantizer == 1
    assert cfg.codec_decoder.codebook_size == 128 and cfg.codec_decoder.vocos_num_layers == 3
    assert cfg.codec_decoder.in_channels == 256  # `in_channel` is ignored, as the reference does
    assert cfg.semantic_codec.vocos_dim == 24 and cfg.codec_encoder.d_model == 2


def test_amphion_config_errors_are_clear():
    with pytest.raises(ConfigError, match="'model' section"):
        from_amphion({"models": {}}, ModelConfig())
    with pytest.raises(ConfigError, match="use_vocos"):
        from_amphion({"model": {"acoustic_codec": {"decoder": {"use_vocos": False}}}}, ModelConfig())
    with pytest.raises(ConfigError):
        from_amphion({"model": {"t2s_model": {"hidden_size": "wide"}}}, ModelConfig())


def test_amphion_config_may_name_the_ssl_feature_layer_of_a_model_trained_here():
    assert from_amphion({"model": {"ssl": {"hidden_state_index": 6}}}, ModelConfig()).ssl.hidden_state_index == 6
    assert from_amphion({"model": {}}, ModelConfig()).ssl.hidden_state_index == 17  # the official layer
    with pytest.raises(ConfigError):
        from_amphion({"model": {"ssl": {"hidden_state_index": "six"}}}, ModelConfig())
