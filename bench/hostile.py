"""The long hostile-input run (issue 18): thousands of seeded hostile cases against a real server process (tiny
reference-layout models, task se) while paced legit sessions stream alongside, then a never-reading flood whose
memory must stay bounded.

Reports: cases, crashes, hangs, unhandled exceptions (1011 closes, HTTP 5xx, ERROR lines in the server log),
long echoes, paced sessions exact / run, and the server's RSS before and after a flood of ``--flood-mib`` MiB of
1 MiB junk messages from clients that never read (written limit: docs/security.md, "Memory per connection").

  python bench/hostile.py [--processor tiny|identity] [--cases 3000] [--seed 18] [--paced 2] [--flood-mib 320]

``--processor tiny`` runs the tests' fewer decoding steps, or the model directory's own streaming settings under
``--default-steps`` (what a deployment runs).
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
from tests.hostile import START, HostileRun  # noqa: E402

FLOOD_MESSAGE_BYTES = 1 << 20


def flood(url: str, mib: int, clients: int = 4) -> None:
    """``clients`` connections share ``mib`` MiB of ``{"type": "qqq..."}`` messages; none ever reads."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    junk = json.dumps({"type": "q" * (FLOOD_MESSAGE_BYTES - 12)})

    def one() -> None:
        try:
            with connect(url, max_size=2**24, close_timeout=1) as ws:
                ws.send(json.dumps(START))
                for _ in range(mib // clients):
                    ws.send(junk)
        except (ConnectionClosed, OSError):
            pass

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--paced", type=int, default=2, help="paced legit sessions alongside (each 20 s, repeated)")
    ap.add_argument("--flood-mib", type=int, default=320)
    ap.add_argument("--flood-rounds", type=int, default=1, help="repeat the flood (RSS after each)")
    ap.add_argument("--processor", choices=["tiny", "identity"], default="tiny", help="see bench/server_process.py")
    ap.add_argument("--default-steps", action="store_true", help="tiny: the model's streaming settings, not fewer")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "hostile.json")
    args = ap.parse_args()
    load_at_start = os.getloadavg()
    server = ServerProcess(args.processor, fast_steps=not args.default_steps)
    started = time.perf_counter()
    try:
        rss_start = server.rss_mb()
        total, batches = None, 0
        while total is None or total.cases < args.cases:  # batches of cases, each with fresh paced sessions
            batch = min(500, args.cases - (total.cases if total else 0))
            run = HostileRun(server.url, seed=args.seed + batches, cases=batch, paced_sessions=args.paced, paced_s=20)
            result = run.run()
            batches += 1
            if total is None:
                total = result
            else:
                for name in ("cases", "ok", "unhandled", "hangs", "crashes", "long_echo", "paced_exact"):
                    setattr(total, name, getattr(total, name) + getattr(result, name))
                total.paced_sessions += result.paced_sessions
                total.failures += result.failures
                for k, v in result.kinds.items():
                    total.kinds[k] = total.kinds.get(k, 0) + v
            print(f"{total.cases} cases, rss {server.rss_mb():.0f} MB, alive {server.alive()}", flush=True)
        rss_before_flood = server.rss_mb()
        rss_after_floods = []  # the same flood again and again: held memory must plateau, not grow
        for _ in range(args.flood_rounds):
            flood(server.url, args.flood_mib)
            time.sleep(2)
            rss_after_floods.append(round(server.rss_mb(), 1))
        rss_after_flood = rss_after_floods[-1] if rss_after_floods else rss_before_flood
        health = server.health()
        closed_not_reading = server.metric("metis_clients_closed_not_reading_total")
        alive = server.alive()
    finally:
        log = server.stop()
    errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    report = {
        "machine": machine_info(),
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "processor": args.processor,
        "decoding_steps": "the model's streaming settings" if args.default_steps else "the tests' fewer steps",
        **total.as_dict(),
        "server_alive_at_end": alive,
        "server_log_error_lines": len(errors),
        "server_log_errors": errors[:10],
        "rss_mb": {
            "start": round(rss_start, 1),
            "before_flood": round(rss_before_flood, 1),
            "after_flood_closed": round(rss_after_flood, 1),
            "after_each_flood": rss_after_floods,
        },
        "flood_mib": args.flood_mib,
        "closed_not_reading": closed_not_reading,
        "health_after": {k: health[k] for k in ("sessions", "capacity_sessions", "capacity_measured")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
