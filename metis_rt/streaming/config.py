"""Streaming configuration: window geometry, per-task decoding steps, engine limits (``configs/streaming.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metis_rt.config import CONFIG_DIR, OfficialConfig, TaskDecoding, apply_overrides, from_dict, read_mapping
from metis_rt.models.hop_speed import HopSpeed
from metis_rt.pipeline.process import DecodingOverrides, task_settings
from metis_rt.streaming.geometry import GeometryConfig

STREAMING_CONFIG = CONFIG_DIR / "streaming.yaml"


@dataclass(frozen=True)
class StepsConfig:
    """Decoding steps per window: stage 1, and S2A per quantizer layer ([0] = the 1-layer model)."""

    stage1: int = 4
    s2a: tuple[int, ...] = (8, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 16  # windows run together in one engine step
    max_backlog_ms: int = 480  # a complete window waiting longer than this (wall clock) is dropped if one follows
    max_buffer_ms: int = 5000  # unprocessed input beyond the next window never exceeds this (any feed rate)
    max_output_ms: int = 5000  # undelivered output kept per session before the oldest is dropped


@dataclass(frozen=True)
class StreamConfig:
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    steps: Mapping[str, StepsConfig] = field(default_factory=dict)
    engine: EngineConfig = field(default_factory=EngineConfig)
    speed: HopSpeed = field(default_factory=HopSpeed)  # eager fast path / torch.compile (models/hop_speed.py)

    def steps_for(self, task: str) -> StepsConfig:
        return self.steps.get(task, StepsConfig())


def load_stream_config(path: str | Path = STREAMING_CONFIG, overrides: Sequence[str] = ()) -> StreamConfig:
    data = apply_overrides(read_mapping(path), overrides)
    return from_dict(StreamConfig, data, where=str(path))


def stream_decoding(official: OfficialConfig, task: str, steps: StepsConfig) -> TaskDecoding:
    """The task's official decoding settings with the stream's step counts (validated like the CLI overrides)."""
    return task_settings(official, task, DecodingOverrides(stage1_steps=steps.stage1, s2a_steps=tuple(steps.s2a)))
