"""Where a run's examples come from (``data:`` of the run file): factories the loop calls per epoch."""

from __future__ import annotations

from metis_rt.errors import ConfigError
from metis_rt.train.config import DataConfig
from metis_rt.train.loop import ExamplesFactory, ValidFactory
from metis_rt.train.synthetic import synthetic_examples
from metis_rt.train.timbre import TimbreConfig

TRAIN_SPLIT, VALID_SPLIT = "train", "valid"
SYNTHETIC_VALID_SEED_OFFSET = 1_000_003  # synthetic validation examples differ from the training ones


def _training_examples():
    try:
        from metis_rt.train.data import TrainingExamples
    except ImportError as exc:
        raise ConfigError(
            "data.source 'set' needs the training data pipeline (metis_rt/train/data.py), which this checkout lacks "
            f"({exc}); use data.source=synthetic for a plumbing check"
        ) from exc
    return TrainingExamples


def example_feeds(data: DataConfig) -> tuple[ExamplesFactory, ValidFactory | None]:
    """(training examples per epoch, validation examples or None)."""
    if data.source == "synthetic":

        def train_synthetic(epoch: int):
            return synthetic_examples(data.task, data.synthetic_count, data.synthetic_seconds, data.seed)

        def valid_synthetic():
            seed = data.seed + SYNTHETIC_VALID_SEED_OFFSET
            return synthetic_examples(data.task, data.synthetic_count, data.synthetic_seconds, seed)

        return train_synthetic, (valid_synthetic if data.valid else None)
    examples = _training_examples()

    lengths = {
        "segment_s": data.segment_s,
        "reference_s": data.reference_s,
        "vc_reference": data.vc_reference,
        "vc_timbre": TimbreConfig() if data.vc_timbre_perturbation else None,
    }
    train_examples = examples(data.set_dir, data.task, seed=data.seed, split=TRAIN_SPLIT, **lengths)
    # opened now so that a set without a valid split fails before training, not at the first validation
    valid_examples = (
        examples(data.set_dir, data.task, seed=data.seed, split=VALID_SPLIT, **lengths) if data.valid else None
    )

    def train_set(epoch: int):
        train_examples.set_epoch(epoch)  # a new order and new degradations per epoch
        return train_examples

    return train_set, (None if valid_examples is None else lambda: valid_examples)
