"""``metis-rt train CONFIG [key=value ...] [--resume]`` (also ``python -m metis_rt.train.main``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from metis_rt.errors import MetisError
from metis_rt.train.config import TrainConfig, load_train_config

RUN_CONFIG = "train_config.yaml"


def build_parser(prog: str = "metis-rt train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="train or fine-tune a Metis component from a run file (configs/train/*.yaml)",
    )
    p.add_argument("config", type=Path, help="run file, e.g. configs/train/finetune_se.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loop.steps=2000 options.lora_r=16")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt if there is one")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def save_run_config(run: TrainConfig, out_dir: Path) -> Path:
    """The resolved run file (overrides applied) beside the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plain = json.loads(json.dumps(dataclasses.asdict(run)))
    path = out_dir / RUN_CONFIG
    path.write_text(yaml.safe_dump(plain, sort_keys=False))
    return path


def run_training(run: TrainConfig, resume: bool):
    """Seed, build the trainer's task and the example feeds, and train (the loop writes everything)."""
    import torch

    from metis_rt.train.feeds import example_feeds
    from metis_rt.train.loop import train
    from metis_rt.train.registry import build_task

    torch.manual_seed(run.loop.seed)  # the task's fresh weights depend on it
    task = build_task(run)
    train_feed, valid_feed = example_feeds(run.data)
    save_run_config(run, Path(run.out_dir))
    return train(task, train_feed, run.loop, run.out_dir, valid_factory=valid_feed, resume=resume)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run = load_train_config(args.config, args.overrides)
        result = run_training(run, args.resume)
    except MetisError as exc:
        print(f"metis-rt train: {exc}", file=sys.stderr)
        return 2
    print(f"trained {run.trainer} for {result.steps} steps; results in {result.out_dir}")
    print(f"  checkpoint: {result.checkpoint}")
    print(f"  losses:     {result.losses_csv} (train {result.train_loss}, valid {result.valid_loss})")
    if result.loss_curve is not None:
        print(f"  curve:      {result.loss_curve}")
    print(f"  export:     {result.out_dir / 'export'} ({len(result.exported)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
