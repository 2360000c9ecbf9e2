"""Two real workers behind a real HAProxy on loopback (issue 19, item 5), running the shipped deploy/haproxy.cfg.

The workers are ``metis-rt serve`` subprocesses on the tiny se models (CPU, one thread, deterministic, fixed
admission of ``MAX_SESSIONS``), started once for the module; each test starts its own HAProxy (milliseconds), with
the workers' addresses in the environment variables the shipped config reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from .conftest import PARITY_DIR, REPO_DIR
from .realparts import Haproxy, free_port, stop_process
from .test_server import start_msg

HAPROXY_CFG = REPO_DIR / "deploy" / "haproxy.cfg"
RATE = 16000
MAX_SESSIONS = 3
START_S = 120.0  # bound of a worker's start (tiny models; a loaded 2-core machine)
WAIT_S = 15.0  # bound of every other wait


class Worker:
    """``metis-rt serve`` as a subprocess on 127.0.0.1 (tiny se models, CPU)."""

    def __init__(self, tmp_path: Path, name: str):
        self.name, self.port = name, free_port()
        config = tmp_path / f"{name}.yaml"
        config.write_text(f"admission: fixed\nmax_sessions: {MAX_SESSIONS}\n")
        self.log_path = tmp_path / f"{name}.log"
        with self.log_path.open("wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "run_server.py", "--model-dir", str(PARITY_DIR / "se"), "--tasks", "se"]
                + ["--engine", "metis", "--device", "cpu", "--threads", "1", "--deterministic"]
                + ["--port", str(self.port), "--config", str(config)],
                cwd=REPO_DIR,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_S
        while True:
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, f"{self.name} not ready\n{self.log()}"
            with contextlib.suppress(OSError, ValueError):
                if self.readyz()[0] == 200:
                    return
            time.sleep(0.2)

    def readyz(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://{self.address}/readyz", timeout=5) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def sessions(self) -> int:
        return self.readyz()[1]["sessions"]

    def metric(self, line_start: str) -> float:
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=5) as reply:
            lines = reply.read().decode().splitlines()
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(line_start))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("workers")
    pair = [Worker(folder, "w0"), Worker(folder, "w1")]  # both start at once
    try:
        for worker in pair:
            worker.wait_ready()
        yield pair
    finally:
        for worker in pair:
            worker.stop()


def balancer(tmp_path: Path, workers: list[Worker], **env: str) -> Haproxy:
    addresses = {"METIS_WORKER0": workers[0].address, "METIS_WORKER1": workers[1].address}
    return Haproxy(tmp_path, HAPROXY_CFG, {**addresses, **env})


def wait_until(predicate, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)


def open_stream(url: str, stack: contextlib.ExitStack):
    """A started se session whose first output arrived (the audio made the round trip)."""
    ws = stack.enter_context(connect(url, open_timeout=WAIT_S))
    ws.send(start_msg())
    assert json.loads(ws.recv(timeout=WAIT_S))["type"] == "session.ready"
    ws.send(np.zeros(RATE, dtype="<f4").tobytes())  # 1 s: beyond the algorithmic latency
    deadline = time.monotonic() + WAIT_S
    while not isinstance(ws.recv(timeout=max(0.1, deadline - time.monotonic())), bytes):
        pass
    return ws


def server_state(proxy: Haproxy, name: str) -> str:
    return proxy.stats()[f"metis_workers/{name}"]["status"]


def test_streams_spread_over_both_workers(workers, tmp_path):
    proxy = balancer(tmp_path, workers)
    try:
        wait_until(lambda: server_state(proxy, "gpu0") == server_state(proxy, "gpu1") == "UP", "both checked UP")
        with contextlib.ExitStack() as stack:
            for _ in range(4):
                open_stream(f"ws://127.0.0.1:{proxy.port}/v1/stream", stack)
            assert [w.sessions() for w in workers] == [2, 2]  # leastconn: the one with fewer streams takes the next
        wait_until(lambda: [w.sessions() for w in workers] == [0, 0], "sessions ended")
    finally:
        proxy.stop()


def test_a_full_worker_is_marked_down_by_readyz_and_comes_back(workers, tmp_path):
    full, other = workers
    proxy = balancer(tmp_path, workers)  # checks /readyz every second, down after two failures
    try:
        wait_until(lambda: server_state(proxy, "gpu0") == "UP", "gpu0 checked UP")
        with contextlib.ExitStack() as stack:
            for _ in range(MAX_SESSIONS):  # straight to the worker, not through HAProxy
                open_stream(f"ws://{full.address}/v1/stream", stack)
            assert full.readyz()[0] == 503
            wait_until(lambda: server_state(proxy, "gpu0") == "DOWN", "the full worker marked DOWN")
            assert server_state(proxy, "gpu1") == "UP"
        wait_until(lambda: server_state(proxy, "gpu0") == "UP", "the worker back UP once it has room")
    finally:
        proxy.stop()


def test_a_full_workers_new_stream_lands_on_the_other_through_the_retry(workers, tmp_path):
    full, other = workers
    # checks far apart: what steers the streams here is the 503 and "retry-on 503" alone, not the health check
    proxy = balancer(tmp_path, workers, METIS_CHECK_INTER="10m")
    refused_before = full.metric('metis_upgrades_refused_total{reason="full"}')
    try:
        with contextlib.ExitStack() as stack:
            for _ in range(MAX_SESSIONS):
                open_stream(f"ws://{full.address}/v1/stream", stack)
            assert server_state(proxy, "gpu0").startswith("UP")  # HAProxy still sends it streams
            for _ in range(2):  # leastconn sends at least one of them to the full worker first (fewest streams)
                open_stream(f"ws://127.0.0.1:{proxy.port}/v1/stream", stack)
            assert (full.sessions(), other.sessions()) == (MAX_SESSIONS, 2)
            assert full.metric('metis_upgrades_refused_total{reason="full"}') > refused_before
            row = proxy.stats()["metis_workers/gpu0"]
            assert int(row["wretr"]) + int(row["wredis"]) >= 1, row  # HAProxy retried, the client never saw a 503
        wait_until(lambda: [w.sessions() for w in workers] == [0, 0], "sessions ended")
    finally:
        proxy.stop()
