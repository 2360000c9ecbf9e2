"""A real MetisServer over the identity processor (no model: the server's own plumbing only), for the server
benches when the CPU cannot run even the tiny models in real time. Prints ``ready on port N`` like ``metis-rt serve``.

  python bench/identity_server.py [--max-sessions 16] [--step-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metis_rt.config import load_official_config  # noqa: E402
from metis_rt.server.app import MetisServer  # noqa: E402
from metis_rt.server.config import ServerConfig  # noqa: E402
from metis_rt.streaming.config import load_stream_config  # noqa: E402
from metis_rt.streaming.processor import IdentityProcessor  # noqa: E402


class PacedIdentity(IdentityProcessor):
    """The identity processor taking ``step_ms`` per hop (a device of a known speed)."""

    def __init__(self, step_ms: float):
        super().__init__()
        self.step_s = step_ms / 1000

    def run(self, jobs):
        if self.step_s:
            time.sleep(self.step_s * len(jobs))
        return super().run(jobs)


async def serve(server: MetisServer) -> None:
    server.install_signal_handlers()
    await server.run("127.0.0.1", 0, on_ready=lambda port: print(f"ready on port {port}", flush=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-sessions", type=int, default=16)
    ap.add_argument("--step-ms", type=float, default=0.0, help="simulated compute per hop")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = dataclasses.replace(ServerConfig(port=0), max_sessions=args.max_sessions)
    processor = PacedIdentity(args.step_ms)
    server = MetisServer(processor, load_official_config(), load_stream_config(), cfg, tasks=("se", "tse", "vc"))
    asyncio.run(serve(server))


if __name__ == "__main__":
    main()
