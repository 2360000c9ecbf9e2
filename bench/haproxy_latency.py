"""HAProxy's added latency per frame: WebSocket round trips straight to a worker and through deploy/haproxy.cfg.

The worker here is a WebSocket echo on loopback (it answers ``/readyz`` so HAProxy's checks pass): what is measured
is the tunnel, not the model. One client sends a 20 ms frame of 16 kHz float32 audio (1280 bytes), waits for it
to come back, and repeats; blocks of frames alternate between the direct and the proxied connection, so both see
the same machine load. A round trip crosses HAProxy twice (up and down): the added latency per frame one way is
about half the difference.

  python bench/haproxy_latency.py [--frames 4000] [--block 200]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
import sys
import tempfile
import threading
import time
from http import HTTPStatus
from pathlib import Path

import numpy as np
from websockets.asyncio.server import serve
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.realparts import HAPROXY, Haproxy  # noqa: E402

FRAME_BYTES = 320 * 4  # 20 ms at 16 kHz, float32


class EchoWorker:
    """A WebSocket echo on 127.0.0.1 in a thread; ``/readyz`` answers 200 for HAProxy's checks."""

    def __init__(self):
        self._ready = threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True).start()
        assert self._ready.wait(10), "echo server did not start"

    async def _main(self):
        async def echo(ws):
            async for message in ws:
                await ws.send(message)

        def readyz(conn, request):
            if request.path == "/readyz":
                return conn.respond(HTTPStatus.OK, "ready\n")
            return None

        async with serve(echo, "127.0.0.1", 0, process_request=readyz, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await asyncio.Future()


def round_trips_ms(ws, frames: int, payload: bytes) -> list[float]:
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        ws.send(payload)
        ws.recv(timeout=10)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4000, help="frames per path")
    parser.add_argument("--block", type=int, default=200, help="frames per alternation block")
    args = parser.parse_args()
    worker = EchoWorker()
    address = f"127.0.0.1:{worker.port}"
    with tempfile.TemporaryDirectory() as tmp:
        proxy = Haproxy(
            Path(tmp), REPO / "deploy" / "haproxy.cfg", {"METIS_WORKER0": address, "METIS_WORKER1": address}
        )
        try:
            payload = np.random.default_rng(0).standard_normal(FRAME_BYTES // 4).astype("<f4").tobytes()
            direct, proxied = {"ws": None, "ms": []}, {"ws": None, "ms": []}
            with (
                connect(f"ws://{address}/v1/stream", compression=None) as direct["ws"],
                connect(f"ws://127.0.0.1:{proxy.port}/v1/stream", compression=None) as proxied["ws"],
            ):
                for path in (direct, proxied):
                    round_trips_ms(path["ws"], 100, payload)  # warm up
                for _ in range(args.frames // args.block):
                    for path in (direct, proxied):
                        path["ms"] += round_trips_ms(path["ws"], args.block, payload)
        finally:
            proxy.stop()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, HAProxy {haproxy_version()}")
    print(f"{args.frames} round trips of a {FRAME_BYTES}-byte frame per path, blocks of {args.block} alternating")
    print("| path | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|")
    for name, path in (("direct", direct), ("through HAProxy", proxied)):
        ms = np.asarray(path["ms"])
        print(f"| {name} | {np.percentile(ms, 50):.3f} | {np.percentile(ms, 99):.3f} | {ms.mean():.3f} |")
    added = {q: np.percentile(proxied["ms"], q) - np.percentile(direct["ms"], q) for q in (50, 99)}
    print(f"added per round trip: p50 {added[50]:.3f} ms, p99 {added[99]:.3f} ms (one way: about half)")


def haproxy_version() -> str:
    return subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout.split()[2]


if __name__ == "__main__":
    main()
