"""Shared plumbing of the pre-training tasks: option parsing, aligned audio crops, batching, weight-norm export.

Random draws use the global torch RNG, which the loop seeds, checkpoints and forks for validation (so a resumed
run continues the same sequence). Crops are taken on the 20 ms frame grid shared by both sample rates (320
samples at 16 kHz, 480 at 24 kHz), so semantic frame ``i`` and acoustic frame ``i`` cover the same speech. A crop
of ``k`` frames gives ``k - 1`` SSL frames (the extractor's 25 ms window loses the last one) and ``k`` acoustic
frames.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from metis_rt.config import from_dict
from metis_rt.models.checkpoints import weight_norm_modules
from metis_rt.train.config import TrainConfig
from metis_rt.train.example import Example

log = logging.getLogger(__name__)

FRAME_SAMPLES_16K = 320  # one 20 ms frame at the SSL rate
FRAME_SAMPLES_24K = 480  # one 20 ms frame at the acoustic-codec rate
SAFETENSORS_METADATA = {"format": "pt"}  # what the official files carry

C = TypeVar("C")


def parse_options(cls: type[C], options: Mapping[str, Any], where: str) -> C:
    """Typed trainer options from a run file's ``options:`` section (unknown keys raise ConfigError)."""
    return from_dict(cls, dict(options), where=f"options ({where})")


def run_device(run: TrainConfig | None) -> torch.device:
    """The run's ``loop.device`` (CPU without a run, e.g. in tests)."""
    return torch.device("cpu" if run is None else run.loop.device)


# ----------------------------------------------------------------------------- audio crops
@dataclass(frozen=True)
class Crop:
    wav_16k: np.ndarray  # [n_frames * 320] float32
    wav_24k: np.ndarray  # [n_frames * 480] float32
    degraded_16k: np.ndarray | None = None  # the example's degraded input over the same span (when it has one)


def crop_example(example: Example, n_frames: int) -> Crop | None:
    """A random ``n_frames`` x 20 ms crop of the clean speech at both rates, or None if it is too short.

    The degraded input is cut over the same span when it is as long as the clean speech (se, vc, clean).
    """
    if np.ndim(example.clean_16k) != 1 or np.ndim(example.clean_24k) != 1:
        raise ValueError(
            f"examples must hold mono waveforms [N]; got clean_16k {np.shape(example.clean_16k)}, "
            f"clean_24k {np.shape(example.clean_24k)}"
        )
    available = min(len(example.clean_16k) // FRAME_SAMPLES_16K, len(example.clean_24k) // FRAME_SAMPLES_24K)
    if available < n_frames:
        return None
    start = int(torch.randint(0, available - n_frames + 1, ()))
    s16, s24 = start * FRAME_SAMPLES_16K, start * FRAME_SAMPLES_24K
    span16 = slice(s16, s16 + n_frames * FRAME_SAMPLES_16K)
    degraded = example.degraded_16k
    same_length = degraded is not None and np.ndim(degraded) == 1 and len(degraded) == len(example.clean_16k)
    return Crop(
        np.asarray(example.clean_16k[span16], dtype=np.float32),
        np.asarray(example.clean_24k[s24 : s24 + n_frames * FRAME_SAMPLES_24K], dtype=np.float32),
        np.asarray(degraded[span16], dtype=np.float32) if same_length else None,
    )


def crops(examples: Iterable[Example], n_frames: int) -> Iterator[Crop]:
    """One crop per example long enough; shorter ones are skipped (counted at DEBUG level)."""
    skipped = 0
    for example in examples:
        crop = crop_example(example, n_frames)
        if crop is None:
            skipped += 1
            log.debug("skipped a clip shorter than %d frames (%d so far)", n_frames, skipped)
            continue
        yield crop


def grouped(items: Iterable[C], size: int) -> Iterator[list[C]]:
    """Consecutive groups of ``size`` items; an incomplete last group is dropped (fixed batch shapes)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    group: list[C] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []


def stack_16k(group: list[Crop]) -> np.ndarray:
    return np.stack([c.wav_16k for c in group])


def stack_degraded_16k(group: list[Crop]) -> np.ndarray:
    """The degraded inputs of a group; every crop must have one (data.task se, or clean where it equals clean)."""
    missing = sum(c.degraded_16k is None for c in group)
    if missing:
        raise ValueError(f"{missing} of {len(group)} crops have no same-length degraded input (use data.task se)")
    return np.stack([c.degraded_16k for c in group])


def stack_24k(group: list[Crop], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack([c.wav_24k for c in group])).to(device)


# ----------------------------------------------------------------------------- weight norm
def apply_weight_norm(module: nn.Module) -> nn.Module:
    """Re-parametrise every ``WNConv1d`` as ``g * v / ||v||`` (dim 0), as the official codecs were trained."""
    for _, conv in weight_norm_modules(module):
        if not parametrize.is_parametrized(conv, "weight"):
            parametrizations.weight_norm(conv, name="weight", dim=0)
    return module


def official_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with every ``WNConv1d`` weight written as the official ``weight_g`` [out, 1, 1] / ``weight_v``.

    Parametrised convolutions give their trained factors; plain ones are split as ``g = ||w||``, ``v = w``.
    """
    state: dict[str, torch.Tensor] = {}
    wn = {name for name, _ in weight_norm_modules(module)}
    for key, value in module.state_dict().items():
        stem, sep, rest = key.partition("parametrizations.weight.original")
        if sep and stem.rstrip(".") in wn:
            state[stem + ("weight_g" if rest == "0" else "weight_v")] = value
        elif key.endswith("weight") and key[: -len(".weight")] in wn:
            norm = value.flatten(1).norm(dim=1).view(-1, *([1] * (value.dim() - 1)))
            state[key + "_g"], state[key + "_v"] = norm, value
        else:
            state[key] = value
    return state


def save_tensors(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Write float32 CPU copies to a safetensors file (parents created), with the official metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).contiguous().clone()
        for k, v in state.items()
    }
    save_file(tensors, str(path), metadata=SAFETENSORS_METADATA)
    return path


def prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
