"""Training configuration: one YAML per run (``configs/train/*.yaml``), frozen dataclasses, ``key=value`` overrides.

A run file has four sections::

    trainer: finetune            # which TrainTask to build (metis_rt.train.registry.TRAINERS)
    out_dir: out/train/se        # checkpoint.pt, losses.csv, loss_curve.png, export/
    loop: {...}                  # LoopConfig: optimiser, schedule, precision, device, checkpoints
    data: {...}                  # DataConfig: where the examples come from
    options: {...}               # the trainer's own settings, parsed by the trainer (FinetuneOptions here)

Relative paths are relative to the current working directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metis_rt.config import CONFIG_DIR, apply_overrides, from_dict, read_mapping
from metis_rt.streaming.geometry import Geometry, GeometryConfig

TRAIN_CONFIG_DIR = CONFIG_DIR / "train"
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on CUDA, fp32 on CPU
DATA_SOURCES = ("set", "synthetic")
EXAMPLE_TASKS = ("se", "tse", "vc", "clean")
FINETUNE_TASKS = ("se", "tse", "vc")
WINDOW_MODES = ("utterance", "streaming")
INITS = ("fresh", "official")
FEATURE_DTYPES = ("float32", "bfloat16", "float16")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _probability(name: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, f"{name}={value} must lie in [0, 1]")


@dataclass(frozen=True)
class LoopConfig:
    """The shared loop (``loop.py``): AdamW, linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    steps: int = 1000  # optimiser steps
    batch_size: int = 8  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10  # steps per train row of losses.csv (mean over the window)
    valid_every: int = 200  # steps between validation passes; 0 = only at the end
    valid_batches: int = 8  # batches per validation pass
    checkpoint_every: int = 200  # steps between checkpoints (one is always written at the end)
    progress: bool = True  # tqdm progress bar

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "log_every", "valid_batches", "checkpoint_every"):
            _check(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        _check(self.lr > 0, f"lr={self.lr} must be positive")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
        _check(self.warmup_steps >= 0 and self.valid_every >= 0, "warmup_steps and valid_every must be >= 0")
        _check(self.grad_clip >= 0, f"grad_clip={self.grad_clip} must be >= 0")
        _check(self.precision in PRECISIONS, f"precision={self.precision!r}; expected one of {PRECISIONS}")


@dataclass(frozen=True)
class DataConfig:
    """Where a run's examples come from.

    ``set``: a training set built by ``metis-rt data build-train`` (``metis_rt.train.data.TrainingExamples``), the
    ``train`` split for training and the ``valid`` split for the validation loss. ``synthetic``: a few generated
    harmonic "voices" with noise (plumbing checks only; nothing useful is learnt from them).
    """

    source: str = "set"
    set_dir: str | None = None
    task: str = "se"  # the examples' task (se, tse, vc; clean for pre-training)
    seed: int = 0
    valid: bool = True  # compute a validation loss on the valid split
    segment_s: float = 4.0  # set: clean speech cropped (or zero-padded) to this length
    reference_s: float = 3.0  # set: TSE enrollment / VC voice length
    vc_reference: str = "same-speaker"  # set, VC: the voice prompt's speaker (same-speaker | other-speaker)
    vc_timbre_perturbation: bool = True  # set, VC: perturb the source's timbre in the condition (train/timbre.py)
    synthetic_count: int = 4  # examples per epoch (synthetic source)
    synthetic_seconds: float = 1.0

    def __post_init__(self):
        _check(self.source in DATA_SOURCES, f"source={self.source!r}; expected one of {DATA_SOURCES}")
        _check(self.task in EXAMPLE_TASKS, f"task={self.task!r}; expected one of {EXAMPLE_TASKS}")
        _check(self.source != "set" or bool(self.set_dir), "source 'set' needs set_dir (metis-rt data build-train)")
        _check(self.synthetic_count >= 1 and self.synthetic_seconds > 0, "synthetic_count/seconds must be positive")
        _check(self.segment_s > 0 and self.reference_s > 0, "segment_s and reference_s must be positive")


@dataclass(frozen=True)
class TrainConfig:
    trainer: str
    out_dir: str
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: DataConfig = field(default_factory=DataConfig)
    options: Mapping[str, Any] = field(default_factory=dict)  # parsed by the trainer (see registry.py)


@dataclass(frozen=True)
class FinetuneOptions:
    """``trainer: finetune``: LoRA + condition-adapter fine-tuning of Metis stage 1 on a frozen base."""

    task: str = "se"  # se | tse | vc
    model_dir: str | None = None  # official layout; None = $METIS_RT_MODEL_DIR or ~/.cache/metis-rt/models
    init: str = "fresh"  # fresh: new LoRA + zero-gate adapter; official: continue the released metis_<task> files
    lora_r: int = 32
    lora_alpha: float = 64.0
    gate_init: float = 0.0  # the official SimpleAdapter starts with gate_scale = 0 (the gate learns first)
    window_mode: str = "utterance"  # utterance (offline regime) | streaming (the engine's windows)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)  # streaming windows (configs/streaming.yaml)
    max_frames: int = 500  # utterance mode: random crop of at most this many 20 ms frames
    max_reference_frames: int = 250  # TSE/VC references are cut to this many frames
    prompt_drop_prob: float = 0.15  # no prompt at all (the CFG unconditional regime; official cfg_scale 0.15)
    prefix_prob: float = 1.0  # utterance mode: a random clean prefix of the target joins the prompt
    min_mask_ratio: float = 0.2  # mask ratio = max(sin(pi t / 2), this), t ~ U(0, 1)
    features_dtype: str = "float32"  # the frozen w2v-BERT and semantic codec

    def __post_init__(self):
        _check(self.task in FINETUNE_TASKS, f"task={self.task!r}; expected one of {FINETUNE_TASKS}")
        _check(self.init in INITS, f"init={self.init!r}; expected one of {INITS}")
        _check(self.window_mode in WINDOW_MODES, f"window_mode={self.window_mode!r}; expected one of {WINDOW_MODES}")
        _check(self.lora_r >= 1 and self.lora_alpha > 0, "lora_r must be >= 1 and lora_alpha positive")
        _check(self.max_frames >= 2 and self.max_reference_frames >= 1, "max_frames >= 2, max_reference_frames >= 1")
        _check(self.features_dtype in FEATURE_DTYPES, f"features_dtype must be one of {FEATURE_DTYPES}")
        for name in ("prompt_drop_prob", "prefix_prob", "min_mask_ratio"):
            _probability(name, getattr(self, name))
        Geometry.from_config(self.geometry)  # raises ValueError on a bad geometry


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a run file, apply ``a.b=value`` overrides, check it (unknown keys raise ConfigError)."""
    data = apply_overrides(read_mapping(path), overrides)
    return from_dict(TrainConfig, data, where=str(path))


def parse_options(cls: type, options: Mapping[str, Any], where: str = "options"):
    """A trainer's typed options from the ``options`` section (unknown keys raise ConfigError)."""
    return from_dict(cls, dict(options), where=where)
