"""A model directory's own decoding / streaming settings (``metis-rt.yaml``): merge, errors, every entry point."""

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from metis_rt.config import OFFICIAL_MODEL_CONFIG, ModelConfig, deep_merge, load_official_config
from metis_rt.errors import ConfigError
from metis_rt.model_settings import (
    MODEL_SETTINGS,
    check_codebooks,
    load_official_for,
    load_stream_config_for,
)
from metis_rt.streaming.config import STREAMING_CONFIG, load_stream_config

from .conftest import EXAMPLES_DIR, PARITY_DIR

SOURCE = EXAMPLES_DIR / "speech_noisy.wav"


def _model_dir(root: Path, settings: str | None = None, link_from: Path | None = None) -> Path:
    """A model directory: the files of ``link_from`` (symlinked, cases/ left out) plus ``metis-rt.yaml``."""
    root.mkdir(parents=True, exist_ok=True)
    if link_from is not None:
        for item in link_from.iterdir():
            if item.name != "cases":
                (root / item.name).symlink_to(item)
    if settings is not None:
        (root / MODEL_SETTINGS).write_text(settings)
    return root


def _compact_dir(root: Path, codebooks: int, settings: str | None = None) -> Path:
    """A directory whose Amphion config.json (that of parity/se) gives ``codebooks`` acoustic codebooks; no weights."""
    data = json.loads((PARITY_DIR / "se" / "config.json").read_text())
    data["model"]["acoustic_codec"]["decoder"]["num_quantizers"] = codebooks
    d = _model_dir(root, settings)
    (d / "config.json").write_text(json.dumps(data))
    return d


def _steps(n: int) -> str:
    return "[" + ", ".join(["8", "4"] + ["1"] * (n - 2)) + "]"


# ----------------------------------------------------------------------------- merging
def test_without_a_settings_file_the_base_files_apply(tmp_path):
    assert load_official_for(tmp_path) == load_official_config()
    assert load_stream_config_for(tmp_path) == load_stream_config()


def test_precedence_is_base_then_model_file_then_overrides(tmp_path):
    base_data = yaml.safe_load(OFFICIAL_MODEL_CONFIG.read_text())
    base_data["decoding"]["se"]["stage1"]["filter_thres"] = 0.5  # the user's --config
    base = tmp_path / "mine.yaml"
    base.write_text(yaml.safe_dump(base_data))
    d = _model_dir(
        tmp_path / "model",
        "decoding:\n  se:\n    stage1: {steps: 3, cfg: 0.5}\n"
        "streaming:\n  geometry: {left_context_ms: 480}\n  steps:\n    se: {stage1: 2}\n",
    )
    official = load_official_for(d, base, ["decoding.se.stage1.steps=7"])
    se, ref = official.decoding["se"].stage1, load_official_config(base).decoding["se"].stage1
    assert (se.steps, se.cfg) == (7, 0.5)  # the override beats the model file, which beats the base file
    assert (se.filter_thres, se.temperature) == (0.5, ref.temperature)  # the rest of the stage: the base file's
    assert official.decoding["vc"] == load_official_config(base).decoding["vc"]
    assert official.model == load_official_config(base).model

    stream = load_stream_config_for(d, STREAMING_CONFIG, ["geometry.chunk_ms=160"])
    default = load_stream_config()
    assert (stream.geometry.left_context_ms, stream.geometry.chunk_ms) == (480, 160)
    assert stream.geometry.lookahead_ms == default.geometry.lookahead_ms
    assert stream.steps_for("se").stage1 == 2 and stream.steps_for("se").s2a == default.steps_for("se").s2a
    assert stream.steps_for("vc") == default.steps_for("vc") and stream.engine == default.engine
    stream = load_stream_config_for(d, STREAMING_CONFIG, ["geometry.left_context_ms=640"])
    assert stream.geometry.left_context_ms == 640


def test_overriding_one_task_leaves_the_tasks_sharing_its_yaml_anchor_alone(tmp_path):
    d = _model_dir(
        tmp_path, "decoding:\n  se:\n    s2a: {cfg_full: 0.0, steps_full: [9, 9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]}\n"
    )
    official, ref = load_official_for(d), load_official_config()
    assert official.decoding["se"].s2a.cfg_full == 0.0 and official.decoding["se"].s2a.steps_full[:2] == (9, 9)
    assert official.decoding["se"].s2a.temperature == ref.decoding["se"].s2a.temperature
    for task in ("tse", "vc", "tts", "l2s"):  # `s2a: *s2a` in configs/metis.yaml: the same dict as se's
        assert official.decoding[task].s2a == ref.decoding[task].s2a


def test_deep_merge_copies_and_never_mutates_its_inputs():
    base = yaml.safe_load("a: &x {p: 1, q: 2}\nb: *x\nc: [1, 2]\n")
    update = {"a": {"p": 5}, "c": [3]}
    before = copy.deepcopy((base, update))
    merged = deep_merge(base, update)
    assert merged == {"a": {"p": 5, "q": 2}, "b": {"p": 1, "q": 2}, "c": [3]}
    assert (base, update) == before and base["a"] is base["b"]


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("decoding: [1, 2\n", "not valid YAML"),
        ("- decoding\n", "expected a mapping at the top level"),
        ("model: {}\n", "unknown top-level key(s) ['model']; allowed: decoding, streaming"),
        ("decoding:\n  se:\n    stage1: {stpes: 3}\n", "stpes"),
        ("streaming:\n  geometry: {chunk: 240}\n", "chunk"),
        ("streaming:\n  steps:\n    se: {stage1: many}\n", "expected an integer"),
        ("decoding:\n  sse: {stage1: {steps: 3}}\n", "unknown task(s) ['sse']"),
        ("streaming:\n  steps:\n    tts: {stage1: 3}\n", "unknown task(s) ['tts']"),
    ],
)
def test_a_bad_settings_file_is_named_in_the_error(tmp_path, text, message):
    d = _model_dir(tmp_path, text)
    for load in (load_official_for, load_stream_config_for):
        with pytest.raises(ConfigError) as info:
            load(d)
        assert message in str(info.value) and str(d / MODEL_SETTINGS) in str(info.value)


def test_step_lists_must_have_one_entry_per_codebook(tmp_path):
    cfg = ModelConfig()
    cfg = dataclasses.replace(cfg, codec_decoder=dataclasses.replace(cfg.codec_decoder, num_quantizers=4))
    check_codebooks(tmp_path, ModelConfig(), ["se", "tts"], load_official_config(), load_stream_config())
    with pytest.raises(ConfigError) as info:
        check_codebooks(tmp_path, cfg, ["se"], load_official_config(), load_stream_config())
    message = str(info.value)
    assert "has 4 acoustic codebooks" in message and str(tmp_path / MODEL_SETTINGS) in message
    assert "decoding.se.s2a.steps_full has 12 entries" in message and "streaming.steps.se.s2a has 12" in message

    d = _model_dir(
        tmp_path / "compact",
        f"decoding:\n  se:\n    s2a: {{steps_full: {_steps(4)}}}\n"
        f"streaming:\n  steps:\n    se: {{stage1: 4, s2a: {_steps(4)}}}\n",
    )
    official, stream = load_official_for(d), load_stream_config_for(d)
    check_codebooks(d, cfg, ["se"], official, stream)
    with pytest.raises(ConfigError, match="decoding.tse.s2a.steps_full has 12") as info:
        check_codebooks(d, cfg, ["se", "tse"], official, stream)
    assert "decoding.se" not in str(info.value) and "streaming.steps.tse.s2a has 12" in str(info.value)
    with pytest.raises(ConfigError, match="decoding.tts.s2a.steps_full has 12") as info:
        check_codebooks(d, cfg, ["tts"], official, stream)  # tts does not stream: no streaming steps to check
    assert "streaming" not in str(info.value)
    offline_only = _model_dir(tmp_path / "offline", f"decoding:\n  se:\n    s2a: {{steps_full: {_steps(4)}}}\n")
    check_codebooks(offline_only, cfg, ["se"], load_official_for(offline_only))  # no stream: decoding lists only
    with pytest.raises(ConfigError, match="streaming.steps.se.s2a has 12"):
        check_codebooks(offline_only, cfg, ["se"], load_official_for(offline_only), load_stream_config())


# ----------------------------------------------------------------------------- entry points
def _process(model_dir: Path, *extra: str) -> int:
    from metis_rt.cli import build_parser, cmd_process

    argv = ["process", "--task", "se", str(SOURCE), "-o", str(model_dir / "out.wav"), "--model-dir", str(model_dir)]
    argv += ["--engine", "metis"]  # the directory lacks weights: auto would denoise on the CPU engine
    return cmd_process(build_parser().parse_args([*argv, *extra]))


def _serve(model_dir: Path):
    from metis_rt.server.main import build_parser, build_server

    argv = ["--model-dir", str(model_dir), "--tasks", "se", "--engine", "metis"]  # auto: the CPU engine (no weights)
    return build_server(build_parser().parse_args(argv))


def _bridge(model_dir: Path):
    from metis_rt.bridge.backends import BridgeSettings
    from metis_rt.bridge.main import build_parser, local_factory

    args = build_parser().parse_args(["--local", "--model-dir", str(model_dir), "--engine", "metis"])  # as above
    return local_factory(args, BridgeSettings("se"), 16000)


def _evaluate(model_dir: Path):
    from metis_rt.eval.systems import MetisModels

    return MetisModels(model_dir, ["se"])


ENTRY_POINTS = {
    "process": _process,
    "process --stream": lambda d: _process(d, "--stream"),
    "serve": _serve,
    "bridge --local": _bridge,
    "eval": _evaluate,
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_refuses_steps_that_do_not_fit_the_codec_before_loading(tmp_path, entry):
    d = _compact_dir(tmp_path / "compact", 4)  # config.json only: loading any weights would fail differently
    with pytest.raises(ConfigError, match=r"has 4 acoustic codebooks, but decoding\.se\.s2a\.steps_full has 12"):
        ENTRY_POINTS[entry](d)


def test_metis_rt_process_uses_the_model_directory_settings(tmp_path, monkeypatch):
    from metis_rt.cli import main
    from metis_rt.pipeline import process as process_module

    seen = []

    def fake_process(pipeline, task, inputs, settings, noise, **kwargs):
        seen.append(settings)
        report = process_module.ProcessReport(1.0, 1.0, 1, 0.0)
        return np.zeros(24000, np.float32), report

    monkeypatch.setattr(process_module, "process", fake_process)
    plain = _model_dir(tmp_path / "plain", None, PARITY_DIR / "se")
    own = _model_dir(tmp_path / "own", "decoding:\n  se:\n    stage1: {steps: 3, cfg: 0.5}\n", PARITY_DIR / "se")
    for d, extra in [(plain, []), (own, []), (own, ["--set", "decoding.se.stage1.steps=5"])]:
        argv = ["process", "--task", "se", str(SOURCE), "-o", str(tmp_path / "out.wav"), "--model-dir", str(d)]
        assert main([*argv, "--device", "cpu", *extra]) == 0  # an explicit device: Metis, not the CPU engine
    official = load_official_config().decoding["se"]
    assert [(s.stage1.steps, s.stage1.cfg) for s in seen] == [
        (official.stage1.steps, official.stage1.cfg),
        (3, 0.5),
        (5, 0.5),
    ]
    assert all(s.s2a == official.s2a for s in seen)


def test_metis_rt_process_stream_uses_the_model_directory_settings(tmp_path, monkeypatch):
    from metis_rt.cli import main
    from metis_rt.streaming import simulate as simulate_module

    seen = []

    class Report:
        def lines(self):
            return []

    def fake_simulate(engine, session, wav, packet_ms, realtime=False):
        seen.append(session)
        return np.zeros(24000, np.float32), Report()

    monkeypatch.setattr(simulate_module, "simulate", fake_simulate)
    settings = (
        "streaming:\n  geometry: {left_context_ms: 480, s2a_left_context_ms: 480}\n  steps:\n    se: {stage1: 2}\n"
    )
    d = _model_dir(tmp_path / "own", settings, PARITY_DIR / "se")
    argv = ["process", "--task", "se", str(SOURCE), "-o", str(tmp_path / "out.wav"), "--model-dir", str(d), "--stream"]
    argv += ["--device", "cpu"]  # an explicit device: Metis, not the CPU engine
    assert main(argv) == 0
    assert main(argv + ["--left-context-ms", "960"]) == 0  # the command line beats the model directory
    got = [(s.geometry.left * 20, s.geometry.s2a_left * 20, s.spec.settings.stage1.steps) for s in seen]
    assert got == [(480, 480, 2), (960, 480, 2)]


def test_evaluation_systems_use_the_model_directory_settings(tmp_path):
    from metis_rt.eval.systems import MetisModels

    settings = "decoding:\n  se:\n    stage1: {steps: 3}\nstreaming:\n  steps:\n    se: {stage1: 2}\n"
    models = MetisModels(_model_dir(tmp_path / "own", settings, PARITY_DIR / "se"), ["se"])
    assert models.official.decoding["se"].stage1.steps == 3
    assert models.stream_cfg.steps_for("se").stage1 == 2
    assert models.stream_cfg.geometry == load_stream_config().geometry


def test_evaluation_streams_the_model_directory_geometry_and_any_named_one(tmp_path):
    from metis_rt.eval.systems import STREAM_GEOMETRIES, select

    settings = "streaming:\n  geometry: {chunk_ms: 200, lookahead_ms: 80, crossfade_ms: 20}\n"
    d = _model_dir(tmp_path / "own", settings, PARITY_DIR / "se")
    systems, _ = select(None, d, ["se"])
    names = [s.name for s in systems]
    assert "metis-stream-200-80" in names  # the model's own geometry, without asking
    assert all(f"metis-stream-{c}-{la}" in names for c, la in STREAM_GEOMETRIES.values())
    systems, _ = select(["metis-stream-240-40", "metis-stream-200-80"], d, ["se"])
    assert [(s.name, s.latency_ms) for s in systems] == [("metis-stream-240-40", 295.0), ("metis-stream-200-80", 295.0)]
    with pytest.raises(ConfigError, match="stream geometry 250/40"):
        select(["metis-stream-250-40"], d, ["se"])  # not whole 20 ms frames
