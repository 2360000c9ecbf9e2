"""The contract between the shared training loop (``loop.py``) and each trainer (fine-tuning, pre-training)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from metis_rt.train.example import Example


class TrainTask(Protocol):
    """One thing to train. The loop owns optimiser, schedule, precision, checkpoints, logging and plots."""

    name: str  # e.g. "finetune-se", "pretrain-acoustic-codec"

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose state a resumable checkpoint must hold (trainable or not)."""

    def trainable(self) -> Iterable[nn.Parameter]:
        """The parameters the optimiser updates (everything else stays frozen)."""

    def batches(self, examples: Iterator[Example], batch_size: int) -> Iterator[Any]:
        """Turn examples into model-ready batches (features, tokens, masks...) on the task's device."""

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """(the loss to minimise, named scalars to log: parts of the loss, accuracies...)."""

    def export(self, out_dir: Path) -> list[Path]:
        """Write the trained weights in the official layout under ``out_dir``; return the files written."""
