"""Simulating a live stream from a file through the engine (``metis-rt process --stream``, benchmarks).

Two pacings: ``realtime=False`` feeds the next packet as soon as the engine is idle (no drops; measures compute), and
``realtime=True`` feeds packets on the wall clock as a microphone would (drops happen if the engine is too slow;
measures end-to-end latency).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from metis_rt.streaming.base import Stream as StreamSession
from metis_rt.streaming.engine import Engine


@dataclass(frozen=True)
class StreamReport:
    input_s: float
    output_s: float
    algorithmic_latency_ms: float
    hops: int
    hop_compute_ms_p50: float
    hop_compute_ms_p99: float
    real_time_factor: float  # compute per hop / chunk duration (median)
    latency_ms_p50: float  # arrival of a chunk's first sample -> its output (wall clock)
    latency_ms_p99: float
    dropped_ms: float
    wall_s: float
    realtime: bool

    def lines(self) -> list[str]:
        return [
            f"audio: {self.input_s:.2f} s in, {self.output_s:.2f} s out; {self.hops} hops in {self.wall_s:.1f} s",
            f"algorithmic latency: {self.algorithmic_latency_ms:.1f} ms",
            f"compute per hop: p50 {self.hop_compute_ms_p50:.1f} ms, p99 {self.hop_compute_ms_p99:.1f} ms "
            f"(real-time factor {self.real_time_factor:.2f})",
            f"end-to-end latency: p50 {self.latency_ms_p50:.1f} ms, p99 {self.latency_ms_p99:.1f} ms"
            if self.realtime
            else "end-to-end latency: not measured (input not paced in real time; use --realtime)",
            f"dropped: {self.dropped_ms:.0f} ms",
        ]


def simulate(
    engine: Engine, session: StreamSession, wav: np.ndarray, packet_ms: float, realtime: bool = False
) -> tuple[np.ndarray, StreamReport]:
    """Push ``wav`` (at the session's input rate) in packets; returns (output, report). The engine must run."""
    rate = session.spec.input_rate
    packet = max(1, round(rate * packet_ms / 1000))
    outputs, started = [], time.perf_counter()
    compute_ms: list[float] = []
    latency_ms: list[float] = []
    hops_seen = 0
    for i in range(0, len(wav), packet):
        if realtime:
            _sleep_until(started + i / rate)
        session.push(wav[i : i + packet])
        if not realtime:
            engine.wait_idle()
        outputs.append(session.read_output())
        hops_seen = _collect(session, hops_seen, compute_ms, latency_ms)
    session.finish()
    engine.wait_idle()
    outputs.append(session.read_output())
    _collect(session, hops_seen, compute_ms, latency_ms)
    out = np.concatenate(outputs)
    m = session.metrics
    p = lambda v, q: float(np.percentile(v, q)) if v else 0.0  # noqa: E731
    report = StreamReport(
        input_s=len(wav) / rate,
        output_s=len(out) / session.spec.output_rate,
        algorithmic_latency_ms=session.latency_ms,
        hops=m.hops,
        hop_compute_ms_p50=p(compute_ms, 50),
        hop_compute_ms_p99=p(compute_ms, 99),
        real_time_factor=p(compute_ms, 50) / m.chunk_ms,
        latency_ms_p50=p(latency_ms, 50),
        latency_ms_p99=p(latency_ms, 99),
        dropped_ms=m.dropped_ms,
        wall_s=time.perf_counter() - started,
        realtime=realtime,
    )
    return out, report


def _collect(session: StreamSession, seen: int, compute: list[float], latency: list[float]) -> int:
    """Copy the metrics of hops finished since ``seen`` (the session keeps only recent ones)."""
    m = session.metrics
    new = m.hops - seen
    if new > 0:
        compute.extend(list(m.compute_ms)[-new:])
        latency.extend(list(m.latency_ms)[-min(new, len(m.latency_ms)) :])
    return m.hops


def _sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
