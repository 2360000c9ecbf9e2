"""Admission from measured engine step times: how many streaming sessions the engine carries in real time.

Pure arithmetic over the engine's recent steps (``Engine.step_ms`` and ``Engine.batch_sizes``); the server refuses a
session (``busy``) when admitting it would take the engine past its real-time budget, so admitted sessions keep
their audio instead of all losing some (docs/security.md, "Capacity").

Model: one step of ``b`` hops costs ``fixed + per_hop * b`` ms (fitted to the recent steps; with a single batch
size seen, all of a step's time is charged per hop, which over-estimates the cost: a cautious start). ``n``
sessions need ``ceil(n / max_batch)`` steps per chunk; they fit when that work takes at most ``utilisation`` of
the chunk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

UTILISATION = 0.85  # share of each chunk the engine may spend computing (the rest absorbs jitter)
MIN_STEPS = 8  # recent steps needed before the estimate is trusted (before that: max_sessions alone)


@dataclass(frozen=True)
class StepCost:
    fixed_ms: float  # per step, whatever its size
    per_hop_ms: float  # per hop in the batch

    def chunk_work_ms(self, sessions: int, max_batch: int) -> float:
        steps = math.ceil(sessions / max_batch)
        return steps * self.fixed_ms + sessions * self.per_hop_ms


def step_cost(step_ms: Sequence[float], batch_sizes: Sequence[int]) -> StepCost | None:
    """The fitted cost of a step, or None with fewer than MIN_STEPS measurements."""
    if len(step_ms) < MIN_STEPS or len(step_ms) != len(batch_sizes):
        return None
    times, sizes = np.asarray(step_ms, dtype=np.float64), np.asarray(batch_sizes, dtype=np.float64)
    groups = sorted(set(batch_sizes))
    medians = np.array([np.median(times[sizes == g]) for g in groups])
    if len(groups) >= 2:
        per_hop, fixed = np.polyfit(np.array(groups, dtype=np.float64), medians, 1)
        if per_hop > 0 and fixed >= 0:
            return StepCost(float(fixed), float(per_hop))
    return StepCost(0.0, float(np.max(medians / np.array(groups))))  # all charged per hop: cautious


def capacity(cost: StepCost | None, chunk_ms: float, max_batch: int, limit: int) -> int:
    """Sessions the engine carries in real time (at least 1, at most ``limit``); ``limit`` when not measured."""
    if cost is None:
        return limit
    budget = UTILISATION * chunk_ms
    n = 1
    while n < limit and cost.chunk_work_ms(n + 1, max_batch) <= budget:
        n += 1
    return n
