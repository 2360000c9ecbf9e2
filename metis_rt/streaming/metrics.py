"""Per-session streaming metrics (pure bookkeeping, bounded memory)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

RECENT_HOPS = 100


@dataclass
class SessionMetrics:
    chunk_ms: float
    hops: int = 0
    dropped_ms: float = 0.0  # input cut out because the engine fell behind
    dropped_output_ms: float = 0.0  # output discarded because nobody read it
    backlog_ms: float = 0.0  # input waiting beyond the next window, at the last hop
    compute_ms: deque = field(default_factory=lambda: deque(maxlen=RECENT_HOPS))  # engine step time per hop
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=RECENT_HOPS))  # arrival -> emission per chunk

    def record_hop(self, compute_s: float, latency_ms: float | None, backlog_ms: float) -> None:
        self.hops += 1
        self.compute_ms.append(compute_s * 1000)
        if latency_ms is not None:
            self.latency_ms.append(latency_ms)
        self.backlog_ms = backlog_ms

    def snapshot(self) -> dict[str, float]:
        """Recent figures: p50/p99 compute per hop, real-time factor, latency, queue, drops."""

        def pct(values, q):
            return float(np.percentile(np.asarray(values), q)) if values else 0.0

        return {
            "hops": self.hops,
            "hop_compute_ms_p50": pct(self.compute_ms, 50),
            "hop_compute_ms_p99": pct(self.compute_ms, 99),
            "rtf": pct(self.compute_ms, 50) / self.chunk_ms,
            "latency_ms_p50": pct(self.latency_ms, 50),
            "latency_ms_p99": pct(self.latency_ms, 99),
            "queue_ms": self.backlog_ms,
            "dropped_ms": self.dropped_ms,
            "dropped_output_ms": self.dropped_output_ms,
        }
