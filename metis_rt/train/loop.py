"""The one training loop every :class:`~metis_rt.train.task.TrainTask` runs in.

AdamW on ``task.trainable()``, linear warmup then cosine decay, gradient accumulation and clipping, bf16 autocast
on CUDA (fp32 on CPU unless asked), periodic validation, resumable checkpoints, ``losses.csv`` +
``loss_curve.png``, and ``task.export(out_dir / "export")`` at the end.

Exact resumption: ``out_dir/checkpoint.pt`` holds every module of ``task.modules()``, the optimiser, the schedule,
the step, the RNG states (torch CPU/CUDA, numpy, python) and the data position (epoch, examples consumed in it).
A resumed run re-opens ``examples_factory(epoch)``, skips the consumed examples and continues with the restored
generators, so it takes the very batches and random draws of an uninterrupted run. This needs:

* ``examples_factory(epoch)`` to give the same examples for the same epoch (the data's own seeded randomness);
* ``task.batches`` to draw its randomness from the global generators and not to read examples ahead of the batch
  it yields (a generator that yields as soon as a batch is full).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from metis_rt.errors import MetisError
from metis_rt.train.config import LoopConfig
from metis_rt.train.curves import LOSS_CURVE_PNG, LOSSES_CSV, TRAIN, VALID, plot_curves, write_csv
from metis_rt.train.example import Example
from metis_rt.train.task import TrainTask

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
EXPORT_DIR = "export"
CHECKPOINT_FORMAT = 1
VALID_SEED_OFFSET = 10_007  # validation draws its masks from a fixed seed, the same at every pass

ExamplesFactory = Callable[[int], Iterable[Example]]  # epoch -> that epoch's examples (deterministic per epoch)
ValidFactory = Callable[[], Iterable[Example]]


class TrainingError(MetisError):
    """The loop cannot go on (no data, no trainable parameter, a checkpoint that does not fit...)."""


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    consumed: int = 0  # examples of the current epoch taken by task.batches
    history: list[dict] = field(default_factory=list)  # the rows of losses.csv
    window: list[tuple[float, dict]] = field(default_factory=list)  # train steps since the last logged row


@dataclass(frozen=True)
class TrainResult:
    steps: int
    train_loss: float | None  # the last logged window's mean
    valid_loss: float | None  # the last validation pass
    out_dir: Path
    checkpoint: Path
    losses_csv: Path
    loss_curve: Path | None
    exported: list[Path]


# ----------------------------------------------------------------------------- data position
class BatchStream:
    """Endless batches over epochs of ``factory(epoch)``, counting the examples ``task.batches`` consumed."""

    def __init__(self, task: TrainTask, factory: ExamplesFactory, batch_size: int, state: LoopState):
        self.task, self.factory, self.batch_size, self.state = task, factory, batch_size, state
        self._open()

    def _count(self, examples: Iterable[Example]) -> Iterator[Example]:
        for example in examples:
            self.state.consumed += 1
            yield example

    def _open(self) -> None:
        examples = iter(self.factory(self.state.epoch))
        skipped = sum(1 for _ in itertools.islice(examples, self.state.consumed))
        if skipped < self.state.consumed:
            raise TrainingError(
                f"resuming epoch {self.state.epoch}: the data gave {skipped} examples, the checkpoint had consumed "
                f"{self.state.consumed}; was the data set changed since the checkpoint?"
            )
        self._fresh = self.state.consumed == 0
        self._yielded = 0
        self._batches = iter(self.task.batches(self._count(examples), self.batch_size))

    def __next__(self) -> Any:
        try:
            batch = next(self._batches)
        except StopIteration:
            if self._fresh and self._yielded == 0:
                raise TrainingError(
                    f"epoch {self.state.epoch} of the training examples produced no batch: the data is empty or "
                    "every example is too short for the task"
                ) from None
            self.state.epoch += 1
            self.state.consumed = 0
            self._open()
            return next(self)
        self._yielded += 1
        return batch


# ----------------------------------------------------------------------------- schedule and precision
def lr_factor(step: int, cfg: LoopConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimiser step ``step`` (0-based): linear warmup, then cosine to min ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r}: this machine or torch build has no CUDA device; use device=cpu")
    return device


def autocast_dtype(cfg: LoopConfig, device: torch.device) -> torch.dtype | None:
    """bf16 for precision bf16 (or auto on CUDA); None = no autocast (fp32)."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def precision_context(cfg: LoopConfig, device: torch.device):
    """The forward pass's autocast context (a no-op in fp32)."""
    amp = autocast_dtype(cfg, device)
    return contextlib.nullcontext() if amp is None else torch.autocast(device.type, dtype=amp)


def make_optimizer(params: list[torch.nn.Parameter], cfg: LoopConfig):
    """(AdamW, LambdaLR) as the loop uses them."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg))
    return opt, sched


def trainable_params(task: TrainTask) -> list[torch.nn.Parameter]:
    params = list(task.trainable())
    if not params:
        raise TrainingError(f"task {task.name!r} has no trainable parameter")
    frozen = [i for i, p in enumerate(params) if not p.requires_grad]
    if frozen:
        raise TrainingError(
            f"task {task.name!r}: trainable() returned {len(frozen)} parameter(s) with requires_grad off"
        )
    return params


def train_step(task, stream: Iterator, params, opt, sched, cfg: LoopConfig, device) -> tuple[float, dict]:
    """One optimiser step over ``cfg.grad_accum`` micro-batches: (mean loss, mean metrics incl. grad_norm)."""
    opt.zero_grad(set_to_none=True)
    total, sums = 0.0, {}
    for _ in range(cfg.grad_accum):
        batch = next(stream)
        with precision_context(cfg, device):
            loss, metrics = task.loss(batch)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite loss {float(loss.detach())} in task {task.name!r}; lower loop.lr or check the data"
            )
        (loss / cfg.grad_accum).backward()
        total += float(loss.detach()) / cfg.grad_accum
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) / cfg.grad_accum
    if cfg.grad_clip > 0:
        sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    opt.step()
    sched.step()
    return total, sums


# ----------------------------------------------------------------------------- checkpoints
def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    random.setstate(state["python"])


def save_checkpoint(path: Path, task, opt, sched, state: LoopState, cfg: LoopConfig, device) -> None:
    data = {
        "format": CHECKPOINT_FORMAT,
        "task": task.name,
        "modules": {name: m.state_dict() for name, m in task.modules().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "loop": asdict(state),
        "rng": _rng_state(device),
        "config": asdict(cfg),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, task, opt, sched, device) -> LoopState:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        raise TrainingError(f"{path} is not a readable checkpoint: {exc}") from exc
    if data.get("format") != CHECKPOINT_FORMAT or data.get("task") != task.name:
        raise TrainingError(
            f"{path} holds task {data.get('task')!r} (format {data.get('format')}); this run trains {task.name!r}"
        )
    modules = task.modules()
    if set(data["modules"]) != set(modules):
        raise TrainingError(f"{path} holds modules {sorted(data['modules'])}, the task has {sorted(modules)}")
    for name, module in modules.items():
        module.load_state_dict(data["modules"][name])
    opt.load_state_dict(data["optimizer"])
    sched.load_state_dict(data["scheduler"])
    _set_rng_state(data["rng"], device)
    return LoopState(**data["loop"])


# ----------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(task, factory: ValidFactory, cfg: LoopConfig, device) -> tuple[float, dict] | None:
    """Mean loss and metrics over up to ``cfg.valid_batches`` batches, with fixed random draws."""
    modules = task.modules().values()
    for m in modules:
        m.eval()
    total, sums, n = 0.0, {}, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed + VALID_SEED_OFFSET)
        batches = task.batches(iter(factory()), cfg.batch_size)
        for batch in itertools.islice(batches, cfg.valid_batches):
            with precision_context(cfg, device):
                loss, metrics = task.loss(batch)
            total, n = total + float(loss), n + 1
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    for m in modules:
        m.train()
    if n == 0:
        log.warning("the validation examples produced no batch; no validation loss")
        return None
    return total / n, {k: v / n for k, v in sums.items()}


# ----------------------------------------------------------------------------- the loop
def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _row(step: int, split: str, loss: float, lr: float, metrics: dict) -> dict:
    return {"step": step, "split": split, "loss": loss, "lr": lr, **metrics}


def _mean_rows(window: list[tuple[float, dict]]) -> tuple[float, dict]:
    keys = {k for _, m in window for k in m}
    return (
        sum(loss for loss, _ in window) / len(window),
        {k: sum(m.get(k, 0.0) for _, m in window) / len(window) for k in sorted(keys)},
    )


def train(
    task: TrainTask,
    examples_factory: ExamplesFactory,
    cfg: LoopConfig,
    out_dir: str | Path,
    *,
    valid_factory: ValidFactory | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``task`` for ``cfg.steps`` optimiser steps; see the module docstring for what lands in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    ckpt = out / CHECKPOINT
    if ckpt.exists() and not resume:
        raise TrainingError(f"{ckpt} exists: pass --resume (resume=True) to continue it, or use another out_dir")
    _seed(cfg.seed)
    params = trainable_params(task)
    opt, sched = make_optimizer(params, cfg)
    for m in task.modules().values():
        m.train()
    state = LoopState()
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, task, opt, sched, device)
        log.info("resumed %s at step %d (epoch %d)", ckpt, state.step, state.epoch)
    elif resume:
        log.warning("no checkpoint in %s: starting from step 0", out)
    stream = BatchStream(task, examples_factory, cfg.batch_size, state)
    bar = tqdm(total=cfg.steps, initial=state.step, desc=task.name, disable=not cfg.progress, dynamic_ncols=True)
    while state.step < cfg.steps:
        lr = opt.param_groups[0]["lr"]
        state.window.append(train_step(task, stream, params, opt, sched, cfg, device))
        state.step += 1
        bar.update(1)
        _record(task, state, cfg, lr, valid_factory, device, bar)
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            save_checkpoint(ckpt, task, opt, sched, state, cfg, device)
            write_csv(state.history, out / LOSSES_CSV)
    bar.close()
    return _finish(task, state, out, ckpt)


def _record(task, state: LoopState, cfg: LoopConfig, lr: float, valid_factory, device, bar) -> None:
    """After a step: a train row every ``log_every`` steps, a validation row every ``valid_every`` (and at the end)."""
    last = state.step == cfg.steps
    if state.step % cfg.log_every == 0 or last:
        loss, metrics = _mean_rows(state.window)
        state.history.append(_row(state.step, TRAIN, loss, lr, metrics))
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        log.info("step %d: loss %.4f %s", state.step, loss, metrics)
        state.window = []
    if valid_factory is not None and (last or (cfg.valid_every and state.step % cfg.valid_every == 0)):
        result = validate(task, valid_factory, cfg, device)
        if result is not None:
            state.history.append(_row(state.step, VALID, result[0], lr, result[1]))
            log.info("step %d: valid loss %.4f %s", state.step, *result)


def _finish(task, state: LoopState, out: Path, ckpt: Path) -> TrainResult:
    csv_path = write_csv(state.history, out / LOSSES_CSV)
    curve = plot_curves(state.history, out / LOSS_CURVE_PNG, task.name)
    exported = task.export(out / EXPORT_DIR)
    last = {
        split: next((r["loss"] for r in reversed(state.history) if r["split"] == split), None)
        for split in (TRAIN, VALID)
    }
    return TrainResult(state.step, last[TRAIN], last[VALID], out, ckpt, csv_path, curve, list(exported))
