"""The record of a run: ``losses.csv`` (one row per logged window or validation pass) and ``loss_curve.png``."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

LOSSES_CSV = "losses.csv"
LOSS_CURVE_PNG = "loss_curve.png"
FIXED_COLUMNS = ("step", "split", "loss", "lr")
TRAIN, VALID = "train", "valid"
CURVE_SIZE_IN = (8, 4.5)
CURVE_DPI = 120


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    """Rows ``{step, split, loss, lr, <metrics>...}``; metric columns are the union over rows, sorted."""
    extra = sorted({k for row in rows for k in row} - set(FIXED_COLUMNS))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*FIXED_COLUMNS, *extra], restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def read_csv(path: Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(rows: Sequence[dict], path: Path, title: str) -> Path | None:
    """Train and validation loss against the step (matplotlib, Agg). None (logged) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install matplotlib)", path.name)
        return None
    fig, ax = plt.subplots(figsize=CURVE_SIZE_IN)
    for split, style in ((TRAIN, "-"), (VALID, "o-")):
        points = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == split]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=split, markersize=4)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=CURVE_DPI)
    plt.close(fig)
    return path
