"""``metis-rt eval``: systems x evaluation set -> outputs, per-clip metrics, a report folder.

Stages: (1) the set (an existing ``manifest.json`` folder, or built from the seed); (2) every applicable system
processes every item (main process: the models are loaded once), outputs written as 16 kHz float WAVs under
``audio/<system>/<id>.wav``; (3) metrics per item in a process pool (``workers``; each worker loads the metric
models once); (4) the report (``metis_rt.eval.report``). Re-running with the same outputs folder recomputes
everything: nothing is cached between runs.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from metis_rt.errors import ConfigError
from metis_rt.eval import systems as sysmod

log = logging.getLogger(__name__)

QUICK_PER_TASK = {"se": 3, "tse": 1, "vc": 1}  # CI-sized: 5 clips, every system
PER_TASK_SEED = 0  # --per-task samples


@dataclass(frozen=True)
class EvalOptions:
    out_dir: Path
    set_dir: Path | None = None  # a folder with manifest.json; None = build one under out_dir/set
    quick: bool = False
    model_dir: Path | None = None
    systems: tuple[str, ...] | None = None  # None = every usable system
    tasks: tuple[str, ...] | None = None  # None = every task in the set
    device: str = "cpu"
    workers: int = 2
    seed: int = 0
    metrics: tuple[str, ...] | None = None  # None = all (quick: all but WER)
    per_task: int | None = None  # at most this many items per task, a seeded sample (None = all)
    engine: str = "auto"  # auto = every usable system; an engine name = its systems (+ unprocessed) only


def engine_systems(systems: list, engine: str) -> list:
    """``--engine NAME``: the systems of that engine (``NAME``, ``NAME-...``) and the unprocessed reference row."""
    if engine == "auto":
        return systems
    kept = [s for s in systems if s.name == "unprocessed" or s.name == engine or s.name.startswith(f"{engine}-")]
    if all(s.name == "unprocessed" for s in kept):
        hint = " (metis systems need --model-dir)" if engine == "metis" else ""
        raise ConfigError(f"--engine {engine}: no such system among {sorted(s.name for s in systems)}{hint}")
    return kept


def load_set(opts: EvalOptions, progress: bool) -> tuple[Path, dict]:
    if opts.set_dir is not None and (opts.set_dir / "manifest.json").is_file():
        root = opts.set_dir
        return root, json.loads((root / "manifest.json").read_text())
    from metis_rt.data.evalset import build_eval_set

    root = opts.set_dir or opts.out_dir / "set"
    return root, build_eval_set(root, seed=opts.seed, quick=opts.quick, progress=progress)


def pick_items(manifest: dict, quick: bool, tasks: Sequence[str] | None, per_task: int | None = None) -> list[dict]:
    """The items to run: ``tasks`` only; ``quick``: the first few per task; ``per_task``: at most N per task,
    a seeded random sample (the same every run) so that it spreads over the task's conditions."""
    items = [item for item in manifest["items"] if tasks is None or item["task"] in tasks]
    if per_task is not None:
        if per_task < 1:
            raise ConfigError(f"--per-task must be at least 1, got {per_task}")
        picked = []
        for task in sorted({item["task"] for item in items}):
            mine = sorted((i for i in items if i["task"] == task), key=lambda i: i["id"])
            chosen = np.random.default_rng(PER_TASK_SEED).choice(len(mine), min(per_task, len(mine)), replace=False)
            picked += [mine[k] for k in sorted(chosen)]
        items = picked
    if not quick:
        return items
    picked, counts = [], {}
    for item in sorted(items, key=lambda i: i["id"]):
        n = counts.get(item["task"], 0)
        if n < QUICK_PER_TASK.get(item["task"], 0):
            picked.append(item)
            counts[item["task"]] = n + 1
    return picked


def _score(job: tuple[dict, str, list[tuple[str, str]], tuple[str, ...]]) -> list[dict]:
    """One item, every system's output: metric rows (runs in a worker process)."""
    from metis_rt.eval.metrics import compute_metrics, transcribe

    item, root, outputs, which = job
    base = Path(root)
    clean = _read(base / item["clean"]) if item.get("clean") else None
    voice = _read(base / item["enrollment"]) if item["task"] == "vc" and item.get("enrollment") else None
    text = None
    if "wer" in which:
        content = clean if clean is not None else _read(base / item["input"])  # VC: the source's words
        try:
            text = transcribe(content)
        except Exception as exc:  # an unusable reference transcript makes WER undefined, not the run fail
            log.warning("%s: no reference transcript (%s); WER undefined", item["id"], exc)
    rows = []
    for system, path in outputs:
        metrics = compute_metrics(_read(Path(path)), clean=clean, voice=voice, reference_text=text, which=which)
        rows.append({"item": item["id"], "system": system, **metrics})
    return rows


def _read(path: Path) -> np.ndarray:
    x, rate = sf.read(path, dtype="float32")
    if rate != sysmod.RATE:
        raise ConfigError(f"{path}: expected {sysmod.RATE} Hz, got {rate}")
    return x if x.ndim == 1 else x.mean(axis=1)


def run_eval(opts: EvalOptions, progress: bool = True) -> Path:
    """Run the evaluation; returns the report's markdown path."""
    from metis_rt.eval.metrics import ALL, QUICK
    from metis_rt.eval.report import write_report

    started = time.perf_counter()
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    root, manifest = load_set(opts, progress)
    items = pick_items(manifest, opts.quick, opts.tasks, opts.per_task)
    if not items:
        raise ConfigError("no items to evaluate (check --tasks against the set)")
    tasks = sorted({item["task"] for item in items})
    systems, models = sysmod.select(opts.systems, opts.model_dir, tasks, opts.device)
    systems = engine_systems(systems, opts.engine)
    which = opts.metrics or (QUICK if opts.quick else ALL)

    outputs: dict[str, list[tuple[str, str]]] = {item["id"]: [] for item in items}
    timing: dict[str, list[float]] = {s.name: [] for s in systems}
    jobs = [(item, s) for item in items for s in systems if item["task"] in s.tasks]
    for item, system in tqdm(jobs, desc="systems", unit="clip", disable=not progress):
        path = opts.out_dir / "audio" / system.name / f"{item['id']}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        enrollment = root / item["enrollment"] if item.get("enrollment") else None
        out = system.run(item["task"], root / item["input"], enrollment)
        timing[system.name].append(time.perf_counter() - t0)
        sf.write(path, out, sysmod.RATE, subtype="FLOAT")
        outputs[item["id"]].append((system.name, str(path)))

    score_jobs = [(item, str(root), outputs[item["id"]], tuple(which)) for item in items]
    rows: list[dict] = []
    # spawn, not fork: the parent has torch/OpenMP threads running, and a forked child can hang on their locks
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, opts.workers), mp_context=context) as pool:
        for result in tqdm(pool.map(_score, score_jobs), total=len(score_jobs), desc="metrics", disable=not progress):
            rows += result
    by_id = {item["id"]: item for item in items}
    for row in rows:
        item = by_id[row["item"]]
        row.update(task=item["task"], split=item.get("split", "test"), **_condition(item))
    info = {
        "set": str(root),
        "seed": manifest.get("seed"),
        "items": len(items),
        "quick": opts.quick,
        "per_task": opts.per_task,
        "model_dir": str(opts.model_dir) if opts.model_dir else None,
        "official_architecture": models.official_architecture if models else None,
        "latency_ms": {s.name: s.latency_ms for s in systems},
        "seconds_per_clip": {k: float(np.mean(v)) for k, v in timing.items() if v},
        "wall_s": round(time.perf_counter() - started, 1),
        "sources": manifest.get("sources", []),
    }
    return write_report(opts.out_dir, rows, info, items, root, which)


def _condition(item: dict) -> dict:
    c = item.get("condition") or {}
    return {
        "snr_db": c.get("snr_db"),
        "reverb": bool(c.get("reverb", False)),
        "noise": c.get("noise"),
        "sir_db": c.get("sir_db"),
        "language": item.get("language"),
    }
