"""How many CPU threads a hop's operators get (issue 20): measured on the loaded models, not assumed.

Two thread pools share the cores of a CPU engine: torch's (OpenMP, one thread per core) and numpy's BLAS
(OpenBLAS, also one per core). OpenBLAS workers spin for a while after every numpy matrix product, so when anything
in the process calls one between two engine steps (the ``transformers`` w2v-BERT feature extractor did, every
window), torch's second thread waits for a core a spinning OpenBLAS worker holds, at every parallel operator: on
machine A (2 cores) the pre-issue-20 tiny SE hop took 136 ms with 2 torch threads, 68 ms with numpy's BLAS held to
one thread, and a compact one 124 vs 48 ms (bench/RESULTS.md, "Third pass"). A CPU engine therefore holds numpy's
BLAS to one thread (:func:`quiet_numpy_blas`; the engine's own work is torch's) whenever it manages threads.

Without that contention, how many torch threads suit a hop depends on the model, the batch and the machine: small
windows are tens of thousands of small operators, where a second thread buys little; batches of windows and large
models gain from every core.

``speed.threads`` (:class:`~metis_rt.models.hop_speed.HopSpeed`):

* ``"auto"`` (default): on a CPU, :func:`measured_plan` times a *probe* — real engine steps of synthetic windows
  (:mod:`metis_rt.streaming.thread_probe`: single operators in a loop would mislead, see there) — at a few batch
  sizes, under each candidate count: 1, half the cores, all cores but one (of torch's default when metis-rt was
  imported: :func:`thread_candidates`; a 2-core machine therefore runs 1 thread without probing). Candidates
  alternate over a few repeats and the fastest median wins; a larger count must beat a smaller one by ``MARGIN``
  (fewer threads leave cores to the server's other work and keep the choice stable on a tie). The result
  is a :class:`ThreadPlan`: a count per amount of work (window frames in an engine step), applied before every step.
  It is remembered per model architecture, settings, device and dtype, for the process and on disk
  (:func:`plan_file`) for this machine's CPU and torch: a few seconds at the first start, none after.
  On CUDA the GPU does the work and torch's setting is left as it is.
* ``"default"``: torch's default count, numpy's BLAS untouched (the code path before issue 20).
* an integer: exactly that many.

``torch.set_num_threads`` is process-wide: the engine thread owns the models, so the process's intra-op pool is
theirs. The thread count does not change what the models compute beyond float rounding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

DEFAULT_THREADS = torch.get_num_threads()  # torch's choice for this process, before anything changed it
MARGIN = 0.10  # a larger thread count wins only when it is at least this much faster
REPEATS = 5  # interleaved timed repeats per candidate (after one untimed warm-up each)
SLOW_PROBE_S = 2.0  # a probe slower than this is timed once per candidate, and larger batches are not probed
WINDOW_FRAMES = 100  # rows of one default window at 50 Hz (1600 ms left context + 400 ms new)
PROBE_BATCHES = (1, 8)  # windows per probe step: the work sizes a plan distinguishes
PLAN_FILE = "thread-plans.json"
# Part of every plan's key: plans kept by an earlier version were measured under other conditions (version 1: with
# numpy's BLAS spinning beside torch, see above; version 2: before the oneDNN-packed weights) and are measured again.
PLAN_VERSION = 3

Probe = Callable[[], float]  # runs one engine step, returns its seconds


@dataclass(frozen=True)
class ThreadPlan:
    """A thread count per amount of work: ``steps`` = ((frames, threads), ...) by increasing frames; a step of F
    window frames (all its windows' rows, references included) takes the count of the largest entry <= F. A
    measured plan switches halfway (the geometric mean) between the two probe sizes that chose differently."""

    steps: tuple[tuple[int, int], ...]

    def threads_for(self, frames: int) -> int:
        chosen = self.steps[0][1]
        for at_least, threads in self.steps:
            if frames >= at_least:
                chosen = threads
        return chosen

    def apply(self, frames: int) -> int:
        threads = self.threads_for(frames)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads

    def describe(self) -> str:
        if len({t for _, t in self.steps}) == 1:
            return str(self.steps[0][1])
        return ", ".join(f"{t} from {f} frames" for f, t in self.steps)


_chosen: dict[str, ThreadPlan] = {}
_blas_limited = False  # quiet_numpy_blas() has run


def thread_candidates(default: int = DEFAULT_THREADS) -> list[int]:
    """1, half and all but one of ``default`` cores. One core stays with the rest of the process: a server's event
    loop (network, resampling, messages) runs beside the engine, and a torch team that shares its cores with it waits
    at every barrier. On machine A (2 cores) an engine alone steps faster on 2 threads, but the live server on 2
    threads stepped slower at one stream and carried fewer streams than on 1 (bench/RESULTS.md, "Third pass")."""
    return sorted({1, max(1, default // 2), max(1, default - 1)})


def resolve_threads(
    setting: int | str, device: torch.device, measure: Callable[[], ThreadPlan] | None = None
) -> ThreadPlan | None:
    """The thread plan ``setting`` asks for on ``device`` (None: leave torch's setting alone); ``measure`` makes
    the ``"auto"`` plan on a CPU. A plan other than ``"default"`` on a CPU also quiets numpy's BLAS
    (:func:`quiet_numpy_blas`) before anything is measured."""
    if setting == "default":
        return ThreadPlan(((0, DEFAULT_THREADS),))
    if torch.device(device).type == "cpu":
        quiet_numpy_blas()
    if isinstance(setting, int):
        return ThreadPlan(((0, setting),))
    if torch.device(device).type != "cpu" or measure is None:
        return None
    return measure()


def quiet_numpy_blas() -> None:
    """Hold numpy's BLAS (OpenBLAS and the like, not torch's) to one thread for the process, so that its spinning
    workers do not take the cores torch's threads need; once per process."""
    global _blas_limited
    if not _blas_limited:
        threadpool_limits(limits=1, user_api="blas")
        _blas_limited = True


def measured_plan(
    key: str,
    probe_for: Callable[[int], tuple[Probe, int]],
    candidates: list[int] | None = None,
    cache: Path | None = None,
) -> ThreadPlan:
    """The fastest thread count per work size for the models and settings ``key`` names (:func:`plan_key`).

    ``probe_for(batch)`` returns (a probe running one step of ``batch`` windows, the window frames of that step).
    Batches are probed in increasing size; once a probe is slow (large models on a CPU) the larger sizes keep the
    last choice: more work only moves the best count towards more threads. Remembered for the process and in
    ``cache`` (default :func:`plan_file`), so a machine measures once per model and settings; delete the file to
    measure again.
    """
    candidates = candidates or thread_candidates()
    if len(candidates) == 1:  # nothing to choose (one or two cores): no probe, nothing kept on disk
        return ThreadPlan(((0, candidates[0]),))
    if key not in _chosen:
        cache = plan_file() if cache is None else cache
        stored = _read_plans(cache).get(key)
        if _valid_steps(stored):
            _chosen[key] = ThreadPlan(tuple((int(f), int(t)) for f, t in stored))
        else:
            _chosen[key] = _measure(probe_for, candidates)
            _write_plan(cache, key, _chosen[key])
    return _chosen[key]


def _measure(probe_for: Callable[[int], tuple[Probe, int]], candidates: list[int]) -> ThreadPlan:
    steps: list[tuple[int, int]] = []
    seen, last_frames = [], 0
    for batch in PROBE_BATCHES:
        probe, frames = probe_for(batch)
        medians, slow = time_candidates(probe, candidates)
        # more work never gets fewer threads: a larger batch is the same operators on more rows, so a count that
        # pays on the smaller one pays on it too; a smaller pick there is the machine's noise (bench/RESULTS.md)
        threads = max(pick(medians), steps[-1][1] if steps else 1)
        seen.append(f"{frames} frames: {describe(medians)}")
        if not steps or steps[-1][1] != threads:  # switch halfway (geometrically) between two measured sizes
            steps.append((0 if not steps else math.isqrt(last_frames * frames), threads))
        last_frames = frames
        if slow:
            break
    plan = ThreadPlan(tuple(steps))
    log.info("CPU threads for the models: %s (probe: %s)", plan.describe(), "; ".join(seen))
    return plan


def pick(medians: dict[int, float], margin: float = MARGIN) -> int:
    """The smallest count whose median no larger count beats by more than ``margin``."""
    best = min(medians)
    for count in sorted(medians):
        if medians[count] < medians[best] * (1 - margin):
            best = count
    return best


def time_candidates(probe: Probe, candidates: list[int]) -> tuple[dict[int, float], bool]:
    """(median probe seconds per thread count, whether the probe was slow); candidates interleaved so that a load
    change hits all alike; a slow probe is timed once per candidate."""
    before = torch.get_num_threads()
    samples: dict[int, list[float]] = {c: [] for c in candidates}
    try:
        slow = False
        for count in candidates:  # warm-up: first-call allocations, lazily built tables
            torch.set_num_threads(count)
            took = probe()
            slow = slow or took > SLOW_PROBE_S
        for _ in range(1 if slow else REPEATS):
            for count in candidates:
                torch.set_num_threads(count)
                samples[count].append(probe())
    finally:
        torch.set_num_threads(before)
    return {c: float(np.median(v)) for c, v in samples.items()}, slow


def describe(medians: dict[int, float]) -> str:
    return ", ".join(f"{c} thread{'s' if c > 1 else ''}: {1000 * s:.1f} ms" for c, s in sorted(medians.items()))


def architecture_key(comps) -> tuple:
    """What the models' speed depends on: every parameter's shape, the stage-1 models loaded, device, dtype, and
    which transformer stacks multiply from packed weights (:meth:`DiffusionTransformer.fuse`)."""
    generative = list(comps.generative_models().values())
    parts = [comps.ssl, comps.acoustic_codec, *generative]
    shapes = tuple((i, name, tuple(p.shape)) for i, part in enumerate(parts) for name, p in part.named_parameters())
    packed = tuple(model.diff_estimator.packed() for model in generative)
    return (str(comps.device), str(comps.ssl.mean.dtype), shapes, tuple(comps.stage1), packed)


def plan_key(*parts) -> str:
    """A stable key for a plan: ``parts`` (architecture, settings) plus this machine's CPU, cores and torch."""
    machine = (platform.machine(), cpu_model(), os.cpu_count(), DEFAULT_THREADS, torch.__version__)
    return hashlib.sha256(repr((PLAN_VERSION, machine, parts)).encode()).hexdigest()[:32]


def plan_file() -> Path:
    """Where measured plans are kept: ``$METIS_RT_CACHE_DIR/thread-plans.json`` (default ``~/.cache/metis-rt``)."""
    return Path(os.environ.get("METIS_RT_CACHE_DIR") or Path.home() / ".cache" / "metis-rt") / PLAN_FILE


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _valid_steps(stored) -> bool:
    try:
        return bool(stored) and all(int(f) >= 0 and int(t) >= 1 for f, t in stored)
    except (TypeError, ValueError):
        return False


def _read_plans(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measure (and rewrite)
    return data if isinstance(data, dict) else {}


def _write_plan(path: Path, key: str, plan: ThreadPlan) -> None:
    plans = _read_plans(path)
    plans[key] = [list(step) for step in plan.steps]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(plans, indent=1))
        tmp.replace(path)  # atomic: a concurrent process never reads half a file
    except OSError as exc:
        log.warning("could not keep the measured thread plan in %s: %s", path, exc)
