"""Offline processing of audio files: read, check, resample, segment, run the task chain, write 24 kHz mono."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from metis_rt.audio.files import check_output_extension, load_for_model, write_audio
from metis_rt.config import OfficialConfig, TaskDecoding
from metis_rt.errors import ConfigError
from metis_rt.models.decoding import GumbelNoise, NoiseSource, ZeroNoise
from metis_rt.pipeline.offline import OUTPUT_SAMPLE_RATE, PROMPT_TASKS, MetisPipeline
from metis_rt.pipeline.segments import DEFAULT_MAX_SEGMENT_S, plan_segments

log = logging.getLogger(__name__)

SSL_RATE = 16000
MIN_SOURCE_S = 0.5
MIN_REFERENCE_S = 1.0
LONG_REFERENCE_S = 30.0  # references longer than this only cost time; Metis was used with a few seconds


@dataclass(frozen=True)
class DecodingOverrides:
    """Command-line changes to a task's official decoding settings (None = keep the official value)."""

    stage1_steps: int | None = None
    stage1_cfg: float | None = None
    stage1_temperature: float | None = None
    s2a_steps: tuple[int, ...] | None = None  # 12 entries for the full model's layers; [0] is the 1-layer model's
    s2a_cfg: float | None = None
    s2a_temperature: float | None = None


def task_settings(official: OfficialConfig, task: str, ov: DecodingOverrides = DecodingOverrides()) -> TaskDecoding:
    if task not in official.decoding:
        raise ConfigError(f"no decoding settings for task {task!r}; configured: {sorted(official.decoding)}")
    base = official.decoding[task]
    s1 = dataclasses.replace(
        base.stage1,
        **_given(steps=ov.stage1_steps, cfg=ov.stage1_cfg, temperature=ov.stage1_temperature),
    )
    s2a = base.s2a
    if ov.s2a_steps is not None:
        if len(ov.s2a_steps) != len(s2a.steps_full):
            raise ConfigError(f"S2A steps need {len(s2a.steps_full)} values (one per layer), got {len(ov.s2a_steps)}")
        s2a = dataclasses.replace(s2a, steps_1layer=(ov.s2a_steps[0],), steps_full=tuple(ov.s2a_steps))
    s2a = dataclasses.replace(s2a, **_given(cfg_full=ov.s2a_cfg, temperature=ov.s2a_temperature))
    if s1.steps < 1 or min(s2a.steps_full + s2a.steps_1layer) < 1:
        raise ConfigError("decoding steps must be at least 1")
    return TaskDecoding(s1, s2a)


def _given(**values):
    return {k: v for k, v in values.items() if v is not None}


def make_noise(deterministic: bool, seed: int | None, device: torch.device) -> NoiseSource:
    return ZeroNoise() if deterministic else GumbelNoise(seed, device=device)


@dataclass(frozen=True)
class ProcessReport:
    input_s: float
    output_s: float
    segments: int
    compute_s: float

    @property
    def real_time_factor(self) -> float:
        return self.compute_s / max(self.input_s, 1e-9)


@dataclass(frozen=True)
class TaskInputs:
    """Checked, resampled inputs of one offline job (read before any model is loaded)."""

    source_16k: np.ndarray  # [N] float32
    references: dict[str, torch.Tensor]  # reference_16k / reference_24k for tse and vc, else empty


def read_inputs(task: str, input_path, reference_path=None, *, allow_clipped: bool = False) -> TaskInputs:
    source = load_for_model(input_path, rates=(SSL_RATE,), min_seconds=MIN_SOURCE_S, allow_clipped=allow_clipped)
    return TaskInputs(source[SSL_RATE], _load_reference(task, reference_path, allow_clipped))


def check_output_path(path: str | Path) -> Path:
    return check_output_extension(path)


def process(
    pipeline: MetisPipeline,
    task: str,
    inputs: TaskInputs,
    settings: TaskDecoding,
    noise: NoiseSource,
    *,
    max_segment_s: float = DEFAULT_MAX_SEGMENT_S,
    progress: bool = True,
    variant: str | None = None,
) -> tuple[np.ndarray, ProcessReport]:
    """Run ``task`` over the source in pause-aligned segments; returns (24 kHz mono [N], report).

    ``variant``: the stage-1 model (default: the task's own; ``"omni"`` for Metis-Omni)."""
    src = inputs.source_16k
    segments = plan_segments(src, SSL_RATE, max_segment_s)
    started = time.perf_counter()
    pieces = []
    bar = tqdm(segments, desc=task, unit="segment", disable=not progress or len(segments) < 2)
    with torch.inference_mode():
        for start, end in bar:
            segment = torch.from_numpy(src[start:end])
            result = pipeline.run(task, segment, settings, noise, variant=variant, **inputs.references)
            pieces.append(result.wav.float().cpu().numpy())
    out = np.concatenate(pieces)
    elapsed = time.perf_counter() - started
    report = ProcessReport(len(src) / SSL_RATE, len(out) / OUTPUT_SAMPLE_RATE, len(segments), elapsed)
    log.info(
        "%s: %.2f s in -> %.2f s out in %.2f s (RTF %.2f)",
        task,
        report.input_s,
        report.output_s,
        report.compute_s,
        report.real_time_factor,
    )
    return out, report


def process_file(
    pipeline: MetisPipeline,
    task: str,
    input_path: str | Path,
    output_path: str | Path,
    settings: TaskDecoding,
    noise: NoiseSource,
    *,
    reference_path: str | Path | None = None,
    max_segment_s: float = DEFAULT_MAX_SEGMENT_S,
    allow_clipped: bool = False,
    progress: bool = True,
) -> ProcessReport:
    """Read, process and write in one call (library convenience; the CLI checks inputs before loading models)."""
    output_path = check_output_path(output_path)
    inputs = read_inputs(task, input_path, reference_path, allow_clipped=allow_clipped)
    out, report = process(pipeline, task, inputs, settings, noise, max_segment_s=max_segment_s, progress=progress)
    write_audio(output_path, out, OUTPUT_SAMPLE_RATE)
    return report


def _load_reference(task: str, reference_path, allow_clipped: bool) -> dict[str, torch.Tensor]:
    if task not in PROMPT_TASKS:
        if reference_path is not None:
            log.warning("task %s takes no reference; ignoring %s", task, reference_path)
        return {}
    if reference_path is None:
        raise ConfigError(f"task {task!r} needs --reference: a recording of the target speaker (a few seconds)")
    return load_reference(reference_path, allow_clipped)


def load_reference(reference_path, allow_clipped: bool = False) -> dict[str, torch.Tensor]:
    """A speaker reference / voice prompt (any format): ``reference_16k`` and ``reference_24k``, 1 s at least."""
    ref = load_for_model(
        reference_path, rates=(SSL_RATE, OUTPUT_SAMPLE_RATE), min_seconds=MIN_REFERENCE_S, allow_clipped=allow_clipped
    )
    if len(ref[SSL_RATE]) / SSL_RATE > LONG_REFERENCE_S:
        log.warning(
            "reference is %.0f s long; a few seconds suffice and every second costs compute",
            len(ref[SSL_RATE]) / SSL_RATE,
        )
    return {
        "reference_16k": torch.from_numpy(ref[SSL_RATE]),
        "reference_24k": torch.from_numpy(ref[OUTPUT_SAMPLE_RATE]),
    }
