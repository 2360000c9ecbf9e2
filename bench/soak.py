"""Soak run (issue 18): several paced sessions at the server's admitted capacity for minutes; the server's RSS is
sampled throughout and every session's output is checked exact (as many samples out as in, no drop, no error).

Sessions run back to back (each ``--session-s`` long, then ``session.end`` and a new one), so the run also churns
sessions. RSS growth = last sample / the sample at ``--settle-s`` (after the first sessions allocated) - 1.

  python bench/soak.py [--processor identity|tiny] [--sessions 6] [--seconds 330] [--out bench/results/soak.json]

``--processor tiny`` serves the tiny reference-layout Metis models on the CPU with the tests' fewer decoding steps,
or with the model directory's own streaming settings under ``--default-steps`` (what a deployment runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.server_process import ServerProcess  # noqa: E402
from bench.streaming import machine_info  # noqa: E402
from tests.hostile import HostileRun  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processor", choices=["tiny", "identity"], default="identity")
    ap.add_argument("--sessions", type=int, default=6, help="sessions wanted; run min(this, admitted capacity)")
    ap.add_argument("--seconds", type=float, default=330.0)
    ap.add_argument("--session-s", type=float, default=20.0)
    ap.add_argument("--settle-s", type=float, default=30.0)
    ap.add_argument("--default-steps", action="store_true", help="tiny: the model's streaming settings, not fewer")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = ap.parse_args()
    extra = ("--max-sessions", str(args.sessions)) if args.processor == "identity" else ("--max-sessions", "16")
    load_at_start = os.getloadavg()
    server = ServerProcess(args.processor, extra, fast_steps=not args.default_steps)
    started = time.perf_counter()
    rss: list[tuple[float, float]] = []
    stop = threading.Event()
    try:
        probe = HostileRun(server.url, seed=0, cases=0, paced_sessions=1, paced_s=5.0).run()  # measures steps
        capacity = server.health()["capacity_sessions"]
        sessions = min(args.sessions, capacity)
        totals = {"run": 0, "exact": 0, "failures": []}
        lock = threading.Lock()

        def worker(i: int) -> None:
            k = 0
            while time.perf_counter() - started < args.seconds:
                run = HostileRun(server.url, seed=0, cases=0, paced_sessions=0, paced_s=args.session_s)
                run._paced(1000 * i + k)  # one paced session, checked exact
                with lock:
                    totals["run"] += 1
                    totals["exact"] += run.result.paced_exact
                    totals["failures"] += run.result.failures
                k += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(sessions)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append((round(time.perf_counter() - started, 1), round(server.rss_mb(), 1)))
            time.sleep(5)
        for t in threads:
            t.join()
        health = server.health()
    finally:
        stop.set()
        log = server.stop()
    settled = next((mb for t, mb in rss if t >= args.settle_s), rss[0][1])
    errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    report = {
        "machine": machine_info(),
        "load_average_at_start": load_at_start,
        "processor": args.processor,
        "decoding_steps": "the model's streaming settings" if args.default_steps else "the tests' fewer steps",
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_at_end": os.getloadavg(),
        "probe_session_exact": probe.paced_exact == 1,
        "admitted_capacity": capacity,
        "concurrent_sessions": sessions,
        "sessions_run": totals["run"],
        "sessions_exact": totals["exact"],
        "failures": totals["failures"][:10],
        "rss_mb_settled": settled,
        "rss_mb_last": rss[-1][1],
        "rss_mb_max": max(mb for _, mb in rss),
        "rss_growth_pct": round(100 * (rss[-1][1] / settled - 1), 2),
        "rss_samples": rss,
        "server_log_error_lines": len(errors),
        "health_after": {k: health[k] for k in ("sessions", "capacity_sessions", "capacity_measured")},
        "steps_note": (
            "identity processor: the server's plumbing without a model (see bench/RESULTS.md)"
            if args.processor == "identity"
            else "tiny: metis-rt serve --engine metis --device cpu over tests/data/parity/se, 1 engine thread"
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rss_samples"}, indent=2))


if __name__ == "__main__":
    main()
