"""Hardening of the server against hostile clients, hostile web pages and heavy load (issue 18), on loopback.

Each test names the item it covers: 1 bounded memory per client, 2 reference uploads do not stall streams,
3 decompression bombs, 4 no unhandled exceptions, 5 exact types, 6 every drop reported, 7 the browser-world edge
(Origin, Host, tokens, TLS, unstarted connections, session ids), 8 admission from measured step times. Most use
an identity processor (fast, exact: output sample k is input sample k); the hostile-input suite
(``test_hostile_inputs_*``) throws a seeded, bounded set of malformed messages at a real server.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import logging
import socket
import ssl
import subprocess
import time
import tracemalloc
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from metis_rt.config import load_official_config
from metis_rt.errors import AudioInputError, ConfigError
from metis_rt.server import admission, http
from metis_rt.server import protocol as proto
from metis_rt.server.app import MetisServer, check_exposure
from metis_rt.server.config import ServerConfig
from metis_rt.server.outbox import Outbox
from metis_rt.server.voices import decode_reference
from metis_rt.streaming.config import EngineConfig, load_stream_config
from metis_rt.streaming.engine import Engine
from metis_rt.streaming.processor import IdentityProcessor

from .hostile import HostileRun
from .realparts import ServerThread
from .test_server import events_and_audio, pcm, start_msg

RATE = 16000
WAIT_S = 30.0  # bound of every single wait


class SlowProcessor(IdentityProcessor):
    """The identity processor, ``hop_s`` seconds per hop (a device that carries few sessions)."""

    def __init__(self, hop_s: float):
        super().__init__()
        self.hop_s = hop_s

    def run(self, jobs):
        time.sleep(self.hop_s * len(jobs))
        return super().run(jobs)


class Served:
    """A MetisServer on 127.0.0.1:0 in a thread, over ``processor`` (default: identity), task se (+ tse, vc)."""

    def __init__(self, processor=None, engine: EngineConfig | None = None, tokens=(), **changes):
        stream_cfg = load_stream_config()
        if engine is not None:
            stream_cfg = dataclasses.replace(stream_cfg, engine=engine)
        cfg = dataclasses.replace(ServerConfig(port=0), **changes)
        self.server = MetisServer(
            processor or IdentityProcessor(),
            load_official_config(),
            stream_cfg,
            cfg,
            tasks=("se", "tse", "vc"),
            tokens=tokens,
            deterministic=True,
        )
        self.thread = ServerThread(self.server, 60)
        self.url = self.thread.url
        self.base = f"http://127.0.0.1:{self.server.port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.thread.stop()


@pytest.fixture(scope="module")
def served():
    with Served(stats_interval_s=3600.0) as s:  # no stats ticks: what a test sees comes from the event it tests
        yield s


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def wav_bytes(x: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt)
    return buf.getvalue()


def reference_start(data: bytes, task: str = "vc") -> str:
    return start_msg(task, reference={"data": base64.b64encode(data).decode()})


def started(ws, message: str | None = None) -> dict:
    ws.send(message or start_msg())
    ready = json.loads(ws.recv(timeout=WAIT_S))
    assert ready["type"] == "session.ready", ready
    return ready


def server_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ----------------------------------------------------------------------------- 1: bounded memory per client
def test_outbox_bounds_events_and_bytes_and_reports_overflow_once():
    calls = []
    out = Outbox(max_audio=4, max_events=3, max_bytes=1000)
    out.on_overflow = lambda: calls.append(1)
    for _ in range(3):
        out.put('{"type":"error"}')
    assert not out.overflowed and out.events == 3
    out.put('{"type":"error"}')  # the fourth event: the client is not reading
    assert out.overflowed and out.closed and calls == [1] and not out.items
    out.put("more")  # ignored once closed
    assert calls == [1]
    big = Outbox(max_audio=4, max_events=100, max_bytes=1000)
    big.put(b"\x00" * 600)
    big.put(b"\x00" * 600)  # 1200 bytes of frames waiting > 1000
    assert big.overflowed and big.bytes == 0


def test_error_replies_quote_at_most_a_short_excerpt_of_client_text(served):
    with connect(served.url, max_size=2**24) as ws:
        started(ws)
        for bad in [{"type": "q" * 2**20}, {"type": "session.update", "voice": "v" * 5000}, {"type": "x", "y" * 9: 1}]:
            ws.send(json.dumps(bad))
            reply = ws.recv(timeout=WAIT_S)
            assert len(reply) < 400 and json.loads(reply)["type"] == "error", reply[:400]


def test_a_client_that_stops_reading_is_closed_and_counted():
    """The client streams audio and never reads; its socket buffers fill and a frame waits send_timeout_s."""
    with Served(send_timeout_s=1.0, idle_timeout_s=60.0) as s:
        sock = socket.create_connection(("127.0.0.1", s.server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        x = noise(1.0)
        with connect(s.url, sock=sock, max_size=2**24) as ws:
            ws.send(start_msg("se", 8000, "pcm_s16le", output_sample_rate=48000))
            deadline = time.monotonic() + 120
            try:
                while s.server.counters.closed_not_reading == 0 and time.monotonic() < deadline:
                    ws.send(pcm(x[:8000], "pcm_s16le"))  # 1 s in, 6 x the bytes out (48 kHz)
                    time.sleep(0.02)
            except (ConnectionClosed, OSError):
                pass
        deadline = time.monotonic() + WAIT_S
        while s.server.counters.closed_not_reading == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.server.counters.closed_not_reading == 1
        metrics = urllib.request.urlopen(s.base + "/metrics", timeout=10).read().decode()
        assert "metis_clients_closed_not_reading_total 1" in metrics
        deadline = time.monotonic() + WAIT_S
        while s.server.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not s.server.connections  # the slot is free again


# ----------------------------------------------------------------------------- 2, 3: references
def test_a_reference_declaring_one_hertz_is_refused_before_decoding(served):
    data = wav_bytes(noise(30 / RATE), 1)  # 30 samples "at 1 Hz": 30 s if believed
    with pytest.raises(AudioInputError, match="declares 1 Hz"):
        decode_reference(data, proto.MAX_REFERENCE_S)
    with connect(served.url) as ws:
        ws.send(reference_start(data))
        error = json.loads(ws.recv(timeout=WAIT_S))
        assert (error["type"], error["code"]) == ("error", "invalid_reference") and "1 Hz" in error["message"]
        started(ws)  # the connection stays usable


def test_reference_preparation_waits_for_ready_hops():
    """The engine runs a call (a reference preparation) only when no hop is ready (or it waited too long)."""
    order = []

    class Recording(IdentityProcessor):
        def run(self, jobs):
            order.append("hop")
            return super().run(jobs)

    from metis_rt.streaming.geometry import Geometry
    from metis_rt.streaming.session import SessionSpec, StreamSession

    cfg = load_stream_config()
    engine = Engine(Recording(), cfg.engine)
    settings = None
    session = StreamSession(
        1, SessionSpec("se", RATE, RATE, settings), Geometry.from_config(cfg.geometry), cfg.engine, 12, None
    )
    engine.add(session)
    session.push(noise(2.0))  # several hops ready
    future = engine.submit(lambda: order.append("call"))
    engine.start()
    try:
        future.result(WAIT_S)
        assert engine.wait_idle(WAIT_S)
    finally:
        engine.stop()
    assert order[0] == "hop" and order.index("call") == len(order) - 1  # every ready hop first


def test_a_long_compressed_reference_is_refused_without_decoding_it():
    silence = np.zeros(48000 * 600, dtype=np.float32)  # 10 minutes of silence: a small FLAC
    data = wav_bytes(silence, 48000, "FLAC")
    assert len(data) < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(AudioInputError, match="600.0 s long"):
            decode_reference(data, proto.MAX_REFERENCE_S)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # decoding it all would take 115 MB of float32


def test_a_header_claiming_2_to_the_36_samples_is_a_clear_error():
    data = bytearray(wav_bytes(noise(2.0), RATE, "FLAC"))
    assert data[:4] == b"fLaC"
    # STREAMINFO: 8 bytes in; bytes 18..25 pack rate (20 bits), channels-1 (3), bits-1 (5), total samples (36)
    packed = int.from_bytes(data[18:26], "big") | (2**36 - 1)
    data[18:26] = packed.to_bytes(8, "big")
    with pytest.raises(AudioInputError, match="long; at most"):
        decode_reference(bytes(data), proto.MAX_REFERENCE_S)


# ----------------------------------------------------------------------------- 4, 5: every input gets an answer
START = json.loads(start_msg())
HOSTILE_BEFORE_START = [
    ({**START, "task": []}, "invalid_task"),
    ({**START, "format": {}}, "invalid_format"),
    ({**START, "stage1": ["omni"]}, "invalid_stage1"),
    ({**START, "voice": "v" * 256, "task": "vc"}, "invalid_voice"),
    ({**START, "protocol": True}, "unsupported_protocol"),
    ({**START, "protocol": 1.0}, "unsupported_protocol"),
    ({**START, "channels": True}, "invalid_channels"),
    ({**START, "sample_rate": 10**4000}, "invalid_sample_rate"),
    ({**START, "options": {"mix": 10**300}}, "invalid_options"),
]
HOSTILE_TEXT = [
    ("[" * 100_000 + "]" * 100_000, "invalid_json"),
    ('{"type": "session.start", "protocol": ' + "9" * 5000 + "}", "invalid_json"),
    ('{"type": "flush", "a": ' + "{" * 50 + "}" * 50 + "}", "invalid_json"),
]
HOSTILE_AFTER_START = [
    ({"type": "session.update", "task": []}, "invalid_task"),
    ({"type": "session.update", "voice": "v" * 256}, "invalid_voice"),
    ({"type": "session.update", "voice": {"a": 1}}, "invalid_voice"),
    ({"type": "session.update", "options": {"s2a_steps": [True] * 12}}, "invalid_options"),
    ({"type": "session.update", "task": "tse", "voice": "../../etc/passwd"}, "invalid_voice"),
]


def test_hostile_messages_get_typed_errors_and_the_connection_goes_on(served, caplog):
    caplog.set_level(logging.INFO)
    with connect(served.url, max_size=2**24) as ws:
        for message, code in [(json.dumps(m), c) for m, c in HOSTILE_BEFORE_START] + HOSTILE_TEXT:
            ws.send(message)
            event = json.loads(ws.recv(timeout=WAIT_S))
            assert (event["type"], event["code"]) == ("error", code), message[:200]
            assert len(event["message"]) < 300
        started(ws)
        for message, code in HOSTILE_AFTER_START:
            ws.send(json.dumps(message))
            event = json.loads(ws.recv(timeout=WAIT_S))
            assert (event["type"], event["code"]) == ("error", code), message
    assert not server_errors(caplog)


def test_protocol_types_are_exact():
    for fields, code in [({"protocol": True}, "unsupported_protocol"), ({"protocol": 1.0}, "unsupported_protocol")]:
        with pytest.raises(proto.ProtocolError) as info:
            proto.parse_client_message(json.dumps({**START, **fields}))
        assert info.value.code == code
    with pytest.raises(proto.ProtocolError, match="mono"):
        proto.parse_client_message(json.dumps({**START, "channels": True}))
    assert proto.parse_client_message(json.dumps({**START, "channels": 1})).task == "se"


def test_unknown_voice_errors_do_not_list_the_server_voices(tmp_path):
    sf.write(tmp_path / "private-alice.wav", noise(2.0), RATE)
    with Served(voices_dir=str(tmp_path)) as s, connect(s.url) as ws:
        ws.send(start_msg("vc", voice="nobody"))
        event = json.loads(ws.recv(timeout=WAIT_S))
        assert event["code"] == "unknown_voice" and "private-alice" not in event["message"]


def test_odd_http_requests_get_4xx_not_500(served, caplog):
    caplog.set_level(logging.INFO)
    for path, status in [("/" + "a" * 4000, 404), ("/..%2f..%2fetc/passwd", 404), ("/%00", 404)]:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(served.base + path, timeout=10)
        assert info.value.code == status, path
    assert not server_errors(caplog)


def test_a_non_ascii_query_token_is_a_401_not_a_crash(caplog):
    caplog.set_level(logging.INFO)
    with Served(tokens=("s3cret",)) as s:
        with pytest.raises(InvalidStatus) as info:
            connect(s.url + "?token=%C3%A9")
        assert info.value.response.status_code == 401
    assert not server_errors(caplog)


# ----------------------------------------------------------------------------- 6: every drop reported
def test_drops_just_before_flush_are_reported_and_the_output_accounts_for_them():
    # stats never tick (1 h): only the flush can report; input beyond 250 ms past the next window is cut (rule B)
    engine = dataclasses.replace(EngineConfig(), max_buffer_ms=250)
    with Served(stats_interval_s=3600.0, engine=engine) as s, connect(s.url) as ws:
        started(ws)
        x = noise(3.0)
        for i in range(0, len(x), RATE):
            ws.send(pcm(x[i : i + RATE], "f32le"))  # 1 s frames: beyond the buffer at once
        ws.send(json.dumps({"type": "flush"}))
        events, audio = events_and_audio(ws, "f32le", until_close=False, until_type="flushed")
    warnings = [e for e in events if e["type"] == "warning" and e["code"] == "overload"]
    dropped_ms = sum(w["dropped_ms"] for w in warnings)
    assert dropped_ms > 0 and events[-1]["type"] == "flushed"
    assert len(audio) == len(x) - round(dropped_ms * RATE / 1000)


# ----------------------------------------------------------------------------- 7: the browser-world edge
def _upgrade_status(url: str, headers: dict) -> int:
    try:
        with connect(url, additional_headers=headers, open_timeout=WAIT_S):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def test_origin_and_host_are_checked(served):
    port = served.server.port
    assert _upgrade_status(served.url, {"Origin": "https://evil.example"}) == 403
    assert _upgrade_status(served.url, {"Origin": "null"}) == 403
    assert _upgrade_status(served.url, {"Origin": f"http://127.0.0.1:{port}"}) == 101  # its own page
    assert _upgrade_status(served.url, {"Origin": "http://localhost:3000"}) == 101  # a loopback page
    assert _upgrade_status(served.url, {}) == 101  # not a browser: the clients, the bridge
    request = urllib.request.Request(served.base + "/healthz", headers={"Host": f"rebound.example:{port}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 421  # DNS rebinding: the page's name is not ours
    request = urllib.request.Request(served.base + "/healthz", headers={"Host": f"localhost:{port}"})
    assert json.loads(urllib.request.urlopen(request, timeout=10).read())["ready"]


def test_allow_origin_and_allow_host_extend_the_lists():
    with Served(allow_origins=("https://app.example",), allow_hosts=("box.lan",)) as s:
        assert _upgrade_status(s.url, {"Origin": "https://app.example"}) == 101
        assert _upgrade_status(s.url, {"Origin": "https://other.example"}) == 403
        request = urllib.request.Request(s.base + "/healthz", headers={"Host": "box.lan"})
        assert urllib.request.urlopen(request, timeout=10).status == 200


def test_edge_policy_is_pure_and_exact():
    def request(**headers):
        return http.Request("/v1/stream", http.Headers(headers))

    policy = http.EdgePolicy()
    assert http.origin_allowed(request(Host="127.0.0.1:8765", Origin="http://127.0.0.1:8765"), policy)
    assert http.origin_allowed(request(Host="127.0.0.1:8765", Origin="http://[::1]:9000"), policy)
    assert not http.origin_allowed(request(Host="127.0.0.1:8765", Origin="http://127.0.0.1.evil.example"), policy)
    assert http.host_allowed(request(Host="192.168.1.7:8765"), policy)  # an IP literal cannot be rebound
    assert not http.host_allowed(request(Host="evil.example"), policy)
    assert not http.host_allowed(request(), policy)
    assert http.redact("GET /v1/stream?token=s3cret&x=1 Authorization: Bearer abc") == (
        "GET /v1/stream?token=***&x=1 Authorization: Bearer ***"
    )


def test_a_non_loopback_bind_needs_a_token_or_insecure():
    with pytest.raises(ConfigError, match="without a token"):
        check_exposure("0.0.0.0", frozenset(), insecure=False)
    check_exposure("0.0.0.0", frozenset({"t"}), insecure=False)
    check_exposure("0.0.0.0", frozenset(), insecure=True)
    for loopback in ("127.0.0.1", "localhost", "::1"):
        check_exposure(loopback, frozenset(), insecure=False)


def test_tokens_stay_out_of_the_log(caplog):
    caplog.set_level(logging.DEBUG)
    with Served(tokens=("s3cret-token",)) as s:
        with connect(s.url + "?token=s3cret-token") as ws:
            started(ws)
        with connect(s.url, additional_headers={"Authorization": "Bearer s3cret-token"}) as ws:
            started(ws)
    server_lines = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client")]
    assert any("GET /v1/stream" in line for line in server_lines)  # websockets logs request lines at DEBUG
    assert not [line for line in server_lines if "s3cret-token" in line]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_serves_wss_and_https(certificate):
    cert, key = certificate
    context = ssl.create_default_context(cafile=str(cert))
    with Served(tls_cert=str(cert), tls_key=str(key)) as s:
        url = s.url.replace("ws://", "wss://")
        with connect(url, ssl=context) as ws:
            started(ws)
        health = urllib.request.urlopen(s.base.replace("http://", "https://") + "/healthz", context=context)
        assert json.loads(health.read())["ready"]


def test_connections_that_never_start_are_timed_out_and_capped():
    with Served(handshake_timeout_s=0.5, idle_timeout_s=60.0, max_unstarted=2) as s:
        with connect(s.url) as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=WAIT_S)
            assert ws.close_code == 1008 and "session.start" in ws.close_reason
        s.server.cfg = dataclasses.replace(s.server.cfg, handshake_timeout_s=60.0)
        with connect(s.url) as a, connect(s.url) as b:
            deadline = time.monotonic() + WAIT_S
            while s.server.unstarted < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            with connect(s.url) as third:
                with pytest.raises(ConnectionClosed):
                    third.recv(timeout=WAIT_S)
                assert third.close_code == 1013
            started(a)  # the first two still work
            started(b)
        assert s.server.counters.refused_unstarted == 1 and s.server.counters.handshake_timeouts == 1


def test_session_ids_are_random(served):
    ids = []
    for _ in range(2):
        with connect(served.url) as ws:
            ids.append(started(ws)["session_id"])
    assert ids[0] != ids[1] and all(len(i) == 24 and int(i, 16) >= 0 for i in ids)


# ----------------------------------------------------------------------------- 8: admission from step times
def test_capacity_arithmetic():
    assert admission.step_cost([10.0] * 7, [1] * 7) is None  # too few steps
    cost = admission.step_cost([60.0] * 10, [1] * 10)
    assert cost == admission.StepCost(0.0, 60.0)
    assert admission.capacity(cost, 240, 16, 16) == 3  # 3 x 60 = 180 <= 0.85 x 240 = 204 < 240
    fitted = admission.step_cost([20.0, 30.0, 40.0] * 4, [1, 2, 3] * 4)
    assert fitted.fixed_ms == pytest.approx(10.0) and fitted.per_hop_ms == pytest.approx(10.0)
    assert admission.capacity(fitted, 240, 32, 100) == 19  # one step: 10 + 19 x 10 = 200 <= 204
    assert admission.capacity(fitted, 240, 16, 100) == 18  # 19 need two steps: 2 x 10 + 190 > 204
    assert admission.capacity(None, 240, 16, 5) == 5  # not measured: max_sessions
    assert admission.capacity(admission.StepCost(0.0, 1000.0), 240, 16, 5) == 1  # at least one


def test_admission_refuses_what_the_engine_cannot_carry():
    """Hops cost >= 60 ms each on a 240 ms chunk: at most 3 sessions fit in real time, whatever max_sessions."""
    with Served(SlowProcessor(0.06), max_sessions=8) as s:
        with connect(s.url) as first:
            started(first)
            for _ in range(4):  # 4 s: 15 hops
                first.send(pcm(noise(1.0), "f32le"))
            deadline = time.monotonic() + WAIT_S
            while len(s.server.engine.step_ms) < admission.MIN_STEPS and time.monotonic() < deadline:
                time.sleep(0.05)
            health = json.loads(urllib.request.urlopen(s.base + "/healthz", timeout=10).read())
            assert health["capacity_measured"] and 1 <= health["capacity_sessions"] <= 3
            capacity = health["capacity_sessions"]
            with contextlib.ExitStack() as stack:
                for _ in range(capacity - 1):
                    started(stack.enter_context(connect(s.url)))
                with pytest.raises(InvalidStatus) as refused:  # at capacity: 503 before the upgrade (issue 19)
                    connect(s.url, open_timeout=WAIT_S)
                assert refused.value.response.status_code == 503
        metrics = urllib.request.urlopen(s.base + "/metrics", timeout=10).read().decode()
        assert f"metis_capacity_sessions {capacity}" in metrics
        assert 'metis_upgrades_refused_total{reason="full"} 1' in metrics


# ----------------------------------------------------------------------------- the seeded hostile suite
def test_hostile_inputs_seeded_suite(served, caplog):
    """A bounded, seeded mix of items 1-7 (bench/hostile.py: the long run) while a paced session streams alongside:
    no error in the server log, every text message answered, the paced session's output exact."""
    caplog.set_level(logging.INFO)
    result = HostileRun(served.url, seed=18, cases=150, paced_sessions=1, paced_s=6.0).run()
    assert result.unhandled == 0 and result.hangs == 0 and result.crashes == 0, result.failures[:5]
    assert result.paced_exact == result.paced_sessions == 1
    assert not server_errors(caplog)
