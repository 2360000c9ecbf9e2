"""A model directory's own decoding and streaming settings: ``<model_dir>/metis-rt.yaml`` (optional).

A model with another architecture than the official one (e.g. 4 acoustic codebooks instead of 12, no S2A
guidance, a short left context) carries the settings that fit it, so that every entry point runs it right::

    decoding:                # partial configs/metis.yaml ``decoding`` section, merged per task / per stage
      se:
        s2a: {steps_full: [8, 4, 1, 1], cfg_full: 0.0}
    streaming:               # partial configs/streaming.yaml, merged key by key
      geometry: {left_context_ms: 480, s2a_left_context_ms: 480}
      steps:
        se: {stage1: 4, s2a: [8, 4, 1, 1]}

Precedence: the base file (``configs/metis.yaml`` / ``configs/streaming.yaml`` or the user's ``--config`` /
``--stream-config``) < the model directory's ``metis-rt.yaml`` < command-line overrides.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from metis_rt.config import (
    ALL_TASKS,
    OFFICIAL_MODEL_CONFIG,
    TASKS,
    ModelConfig,
    OfficialConfig,
    TaskDecoding,
    apply_overrides,
    deep_merge,
    from_dict,
    read_mapping,
)
from metis_rt.errors import ConfigError
from metis_rt.streaming.config import STREAMING_CONFIG, StreamConfig

MODEL_SETTINGS = "metis-rt.yaml"


@dataclass(frozen=True)
class ModelSettings:
    """The schema of ``metis-rt.yaml`` (every key optional); used to check the file, the merge uses plain data."""

    decoding: Mapping[str, TaskDecoding] = field(default_factory=dict)
    streaming: StreamConfig = field(default_factory=StreamConfig)


def settings_path(model_dir: str | Path) -> Path:
    return Path(model_dir) / MODEL_SETTINGS


def read_model_settings(model_dir: str | Path) -> dict[str, Any]:
    """The plain data of ``model_dir/metis-rt.yaml``, checked ({} when there is none)."""
    path = settings_path(model_dir)
    if not path.is_file():
        return {}
    data = read_mapping(path)
    allowed = [f.name for f in fields(ModelSettings)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: {', '.join(allowed)}")
    from_dict(ModelSettings, data, where=str(path))  # unknown nested keys and wrong types, named in this file
    _check_task_names(path, "decoding", data.get("decoding", {}), ALL_TASKS)
    _check_task_names(path, "streaming.steps", data.get("streaming", {}).get("steps", {}), TASKS)
    return data


def _check_task_names(path: Path, where: str, section: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ConfigError(f"{path}: {where} names unknown task(s) {unknown}; known: {', '.join(known)}")


def load_official_for(
    model_dir: str | Path, path: str | Path = OFFICIAL_MODEL_CONFIG, overrides: Sequence[str] = ()
) -> OfficialConfig:
    """``path`` (configs/metis.yaml), with the model directory's ``decoding`` merged in, then ``overrides``."""
    data = read_mapping(path)
    own = read_model_settings(model_dir).get("decoding")
    if own:
        data = {**data, "decoding": deep_merge(data.get("decoding") or {}, own)}
    return from_dict(OfficialConfig, apply_overrides(data, overrides), where=str(path))


def load_stream_config_for(
    model_dir: str | Path, path: str | Path = STREAMING_CONFIG, overrides: Sequence[str] = ()
) -> StreamConfig:
    """``path`` (configs/streaming.yaml), with the model directory's ``streaming`` merged in, then ``overrides``."""
    data = deep_merge(read_mapping(path), read_model_settings(model_dir).get("streaming") or {})
    return from_dict(StreamConfig, apply_overrides(data, overrides), where=str(path))


def check_codebooks(
    model_dir: str | Path,
    cfg: ModelConfig,
    tasks: Collection[str],
    official: OfficialConfig,
    stream: StreamConfig | None = None,
) -> None:
    """Fail before loading when the S2A step lists of ``tasks`` do not have one entry per acoustic codebook.

    ``cfg``: the model directory's resolved architecture (``resolve_config``); ``stream``: the streaming settings,
    when the entry point streams."""
    lists = {}
    for task in tasks:
        if task in official.decoding:
            lists[f"decoding.{task}.s2a.steps_full"] = official.decoding[task].s2a.steps_full
        if stream is not None and task in TASKS:
            lists[f"streaming.steps.{task}.s2a"] = stream.steps_for(task).s2a
    codebooks = cfg.codec_decoder.num_quantizers
    wrong = [f"{key} has {len(steps)} entries" for key, steps in lists.items() if len(steps) != codebooks]
    if wrong:
        raise ConfigError(
            f"model dir {model_dir} has {codebooks} acoustic codebooks, but {' and '.join(wrong)} (one per codebook "
            f"needed); set {'them' if len(wrong) > 1 else 'it'} to {codebooks} values in {settings_path(model_dir)}"
        )
