"""Resume gap over forced moves: streams behind HAProxy (deploy/haproxy.cfg) whose worker is killed, again and again.

Two workers (tiny se models on the CPU, a shared resume key) behind HAProxy on loopback; ``--streams`` streams of
noise at real-time pace through it (``tests/resuming_client.py``). Each round kills (SIGKILL) or drains (SIGTERM)
the worker holding the most streams, waits until every moved stream has output on the other worker, then starts
the worker again on its port. Gap of a move: from the last output frame on the old worker to the first on the new
one. At the end every stream is flushed and its output must be exactly as long as its input.

  python bench/resume_gap.py [--moves 20] [--streams 4] [--signal kill|term]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.realparts import Haproxy  # noqa: E402
from tests.resuming_client import RATE, ResumingStream  # noqa: E402
from tests.test_balancer import HAPROXY_CFG, Worker, server_state, session_ids  # noqa: E402

SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}


async def wait_for(predicate, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def rounds(proxy: Haproxy, workers: list[Worker], streams: list[ResumingStream], args) -> None:
    moves = 0
    while moves < args.moves:
        await wait_for(lambda: all(s.checkpoint is not None and s.outputs_on_connection for s in streams), "output")
        held = [await asyncio.to_thread(session_ids, w) for w in workers]
        victim = int(np.argmax([len(h) for h in held]))
        moved = [s for s in streams if s.session_ids[-1] in held[victim]]
        before = {id(s): len(s.gaps_s) for s in moved}
        workers[victim].proc.send_signal(SIGNALS[args.signal])
        await asyncio.to_thread(workers[victim].proc.wait, 30)
        await wait_for(lambda m=moved, b=before: all(len(s.gaps_s) > b[id(s)] for s in m), "moved streams' output")
        moves += len(moved)
        print(f"move round: {len(moved)} stream(s) off worker {victim}; gaps", [f"{s.gaps_s[-1]:.3f}" for s in moved])
        fresh = Worker(workers[victim].folder, workers[victim].name, port=workers[victim].port)
        await asyncio.to_thread(fresh.wait_ready)
        workers[victim] = fresh
        # the next kill waits until HAProxy's health checks have the fresh worker UP again (two workers dying
        # before the balancer saw the first one return leave it no server: its own 503). The survivor may read
        # DOWN meanwhile: holding every stream, it is full, and /readyz says so.
        await wait_for(lambda v=victim: server_state(proxy, f"gpu{v}") == "UP", "the fresh worker UP")


async def run(url: str, proxy: Haproxy, workers: list[Worker], args) -> list[ResumingStream]:
    seconds = args.seconds
    streams = [
        ResumingStream(url, np.random.default_rng(i).standard_normal(int(seconds * RATE)).astype(np.float32) * 0.1, 99)
        for i in range(args.streams)
    ]
    tasks = [asyncio.create_task(s.run()) for s in streams]
    await rounds(proxy, workers, streams, args)
    await asyncio.gather(*tasks)
    return streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=20, help="forced moves of a stream, at least")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--signal", choices=sorted(SIGNALS), default="kill")
    parser.add_argument("--seconds", type=float, default=240.0, help="length of each stream (must outlast the moves)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        workers = [Worker(folder, "w0"), Worker(folder, "w1")]
        for worker in workers:
            worker.wait_ready()
        env = {"METIS_WORKER0": workers[0].address, "METIS_WORKER1": workers[1].address}
        proxy = Haproxy(folder, HAPROXY_CFG, env)
        try:
            streams = asyncio.run(run(f"ws://127.0.0.1:{proxy.port}/v1/stream", proxy, workers, args))
        finally:
            proxy.stop()
            for worker in workers:
                worker.stop()
    gaps_ms = np.array([g * 1000 for s in streams for g in s.gaps_s])
    exact = all(len(s.result()) == len(s.x) and s.dropped_ms == 0 for s in streams)
    print(f"{len(gaps_ms)} moves ({args.signal}), {args.streams} streams")
    p50, p99 = np.percentile(gaps_ms, [50, 99])
    print(f"resume gap ms: p50 {p50:.0f}, p99 {p99:.0f}, max {gaps_ms.max():.0f}")
    print(f"output length equals input length for every stream, nothing dropped: {exact}")


if __name__ == "__main__":
    main()
