"""Admission at the HTTP edge (issue 19, item 1): a worker that takes no new stream answers the WebSocket upgrade
with 503 and ``Retry-After`` before upgrading, ``/readyz`` says whether it takes new streams, ``/healthz`` stays
liveness. Real servers on loopback (identity processor), raw HTTP over sockets.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import pytest
from websockets.sync.client import connect

from metis_rt.config import load_official_config
from metis_rt.server import http
from metis_rt.server.app import MetisServer
from metis_rt.server.config import ServerConfig
from metis_rt.streaming.config import load_stream_config
from metis_rt.streaming.processor import IdentityProcessor

from .test_server_hardening import Served, started

WAIT_S = 10.0


def raw_request(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET over a plain socket: (status, headers with lower-case names, body)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed before the response head: {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        found = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
        if int(status_line.split()[1]) != 101:
            while len(body) < int(found.get("content-length", 0)):
                chunk = sock.recv(4096)
                assert chunk, "connection closed inside the body"
                body += chunk
    return int(status_line.split()[1]), found, body


def upgrade(port: int, extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
    return raw_request(port, http.STREAM_PATH, {**headers, **(extra or {})})


def readyz(port: int) -> tuple[int, dict]:
    status, _headers, body = raw_request(port, "/readyz")
    return status, json.loads(body)


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def one_session():
    """A worker that carries one session (fixed admission: capacity is max_sessions, whatever the step times)."""
    with Served(max_sessions=1, admission="fixed", busy_retry_after_s=2.5, tokens=("t0k",)) as s:
        yield s


AUTH = {"Authorization": "Bearer t0k"}


def test_a_full_worker_refuses_the_upgrade_with_503_and_retry_after(one_session):
    port = one_session.server.port
    assert readyz(port) == (200, {"ready": True, "reason": None, "sessions": 0, "unstarted": 0, "capacity_sessions": 1})
    with connect(one_session.url, additional_headers=AUTH) as ws:
        started(ws)
        status, headers, body = upgrade(port, AUTH)
        assert status == 503 and headers["retry-after"] == "3", (status, headers)  # 2.5 s, rounded up
        assert b"full" in body and "sec-websocket-accept" not in headers  # refused before the upgrade
        status, ready = readyz(port)
        assert status == 503 and ready["ready"] is False and ready["reason"] == "full" and ready["sessions"] == 1
        health, _headers, health_body = raw_request(port, "/healthz")
        assert health == 200 and json.loads(health_body)["sessions"] == 1  # liveness: still 200 while full
        assert upgrade(port)[0] == 401  # a wrong token stays 401 (a balancer must not retry it elsewhere)
    wait_for(lambda: readyz(port)[0] == 200, "ready again once the session ended")
    assert upgrade(port, AUTH)[0] == 101
    _status, _headers, metrics = raw_request(port, "/metrics")
    assert 'metis_upgrades_refused_total{reason="full"} 1' in metrics.decode()


def test_a_connection_about_to_start_a_session_holds_its_slot(one_session):
    port = one_session.server.port
    wait_for(lambda: readyz(port)[0] == 200, "ready before the test")
    with connect(one_session.url, additional_headers=AUTH):  # upgraded, no session.start yet
        wait_for(lambda: one_session.server.unstarted == 1, "the connection counted as unstarted")
        status, ready = readyz(port)
        assert status == 503 and ready["reason"] == "full" and ready["unstarted"] == 1
        assert upgrade(port, AUTH)[0] == 503
    wait_for(lambda: readyz(port)[0] == 200, "ready once the unstarted connection left")


def test_a_draining_worker_is_not_ready_and_refuses_upgrades(one_session):
    port, server = one_session.server.port, one_session.server
    wait_for(lambda: readyz(port)[0] == 200, "ready before the test")
    server.draining = True
    try:
        status, ready = readyz(port)
        assert status == 503 and ready["reason"] == "draining"
        status, headers, _body = upgrade(port, AUTH)
        assert status == 503 and headers["retry-after"] == "3"
        assert raw_request(port, "/healthz")[0] == 200
    finally:
        server.draining = False
    assert readyz(port)[0] == 200


def test_a_server_not_yet_listening_reports_starting():
    server = MetisServer(
        IdentityProcessor(), load_official_config(), load_stream_config(), ServerConfig(port=0), tasks=("se",)
    )
    assert server.readiness()[0] == "starting"
    server.ready = True
    assert server.readiness()[0] is None


def test_the_edge_routes_readiness_without_a_server():
    refused = []
    state = {"reason": "full"}
    probes = http.Probes(dict, str, lambda: (state["reason"], {}), refused.append, retry_after_s=0.2)

    def request(path, **headers):
        return http.Request(path, http.Headers({"Host": "127.0.0.1:1", **headers}))

    reply = http.route(request("/v1/stream"), http.EdgePolicy(), probes)
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "1" and refused == ["full"]
    assert http.route(request("/readyz"), http.EdgePolicy(), probes).status_code == 503
    assert http.route(request("/healthz"), http.EdgePolicy(), probes).status_code == 200
    assert http.route(request("/readyz", Host="evil.example"), http.EdgePolicy(), probes).status_code == 421
    state["reason"] = None
    assert http.route(request("/v1/stream"), http.EdgePolicy(), probes) is None and refused == ["full"]
    assert http.route(request("/readyz"), http.EdgePolicy(), probes).status_code == 200
