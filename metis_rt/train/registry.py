"""Which trainer a run file's ``trainer:`` names, and how it is built.

A trainer is a module exposing ``build(options: Mapping[str, Any], run: TrainConfig) -> TrainTask``: ``options`` is
the run file's raw ``options:`` section (the trainer parses it with its own frozen dataclass, e.g.
``metis_rt.config.from_dict``, so unknown keys fail before any model loads), ``run`` the whole parsed run file
(``run.loop.device``, ``run.loop.seed``, ``run.data``...). Modules are imported only when their trainer is used.

To add a trainer, add one line to ``TRAINERS`` (or to ``metis_rt.train.pretrain.TRAINER_MODULES``, merged here).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from metis_rt.errors import ConfigError
from metis_rt.train.config import TrainConfig
from metis_rt.train.pretrain import TRAINER_MODULES as PRETRAIN_TRAINERS
from metis_rt.train.task import TrainTask

TrainerFactory = Callable[[Mapping[str, Any], TrainConfig], TrainTask]

TRAINERS: dict[str, str] = {
    "finetune": "metis_rt.train.finetune",
    **PRETRAIN_TRAINERS,  # pretrain-ssl, -semantic-codec, -acoustic-codec, -base, -s2a
}


def trainer_factory(name: str) -> TrainerFactory:
    """The ``build`` function of trainer ``name`` (imports its module)."""
    if name not in TRAINERS:
        raise ConfigError(f"unknown trainer {name!r}; known: {', '.join(sorted(TRAINERS))}")
    module = importlib.import_module(TRAINERS[name])
    build = getattr(module, "build", None)
    if not callable(build):
        raise ConfigError(f"trainer {name!r}: module {TRAINERS[name]} has no build(options, run) function")
    return build


def build_task(run: TrainConfig) -> TrainTask:
    return trainer_factory(run.trainer)(run.options, run)
