"""Streams that survive the loss of a worker, over real sockets: two in-process servers with the same tiny model and
resume key. A stream moved mid-way (its socket lost, or its worker drained) continues on the other server and its
output equals the uninterrupted stream's, sample for sample; refused tokens get typed error events."""

# ruff: noqa: F401, F811  (the processor and speech fixtures come from test_server)
import asyncio
import dataclasses
import json
import threading
import time

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from metis_rt.clients.file import FileStreamOptions, stream_file
from metis_rt.server import resume_token
from metis_rt.server.app import MetisServer
from metis_rt.server.config import ServerConfig
from metis_rt.server.resume_token import ResumeKeys, ResumeSettings
from metis_rt.streaming.config import load_stream_config

from .realparts import ServerThread
from .test_server import FAST, events_and_audio, pcm, processor, speech, start_msg

KEYS = ResumeKeys((b"k" * 32,))
CHECKPOINT_S = 0.2
OPTS = FileStreamOptions(packet_ms=20, reconnect_max_s=10, backoff_seed=1)


def _server(processor, keys=KEYS, deterministic=True, geometry=None):
    proc, official = processor
    stream_cfg = dataclasses.replace(load_stream_config(), steps={"se": FAST})
    if geometry is not None:
        stream_cfg = dataclasses.replace(stream_cfg, geometry=geometry)
    cfg = ServerConfig(port=0, max_sessions=4, admission="fixed", stats_interval_s=0.1)
    resume = None if keys is None else ResumeSettings(keys, max_age_s=60, checkpoint_interval_s=CHECKPOINT_S)
    server = MetisServer(proc, official, stream_cfg, cfg, tasks=("se",), deterministic=deterministic, resume=resume)
    return ServerThread(server, 60)


@pytest.fixture(scope="module")
def pair(processor):
    a, b = _server(processor), _server(processor)
    yield a, b
    for s in (a, b):
        if s.thread.is_alive():
            s.stop()


@pytest.fixture(scope="module")
def uninterrupted(pair, speech):
    x, sr = speech
    out, report = asyncio.run(stream_file(pair[1].url, x, sample_rate=sr, options=OPTS))
    assert report["moves"] == 0 and len(out) == len(x)
    return out


def _when(server_thread, condition, action, timeout_s=60):
    """Run ``action`` on the server's loop once ``condition(connection)`` holds for one of its connections."""

    def watch():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            conns = [c for c in list(server_thread.server.connections) if condition(c)]
            if conns:
                server_thread.loop.call_soon_threadsafe(action, conns[0])
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_stream_whose_socket_is_lost_resumes_on_the_other_worker_exactly(pair, speech, uninterrupted):
    (a, b), (x, sr) = pair, speech
    watcher = _when(a, lambda c: c.checkpoints_sent >= 2, lambda c: c.ws.transport.abort())
    # paced in real time, so that the loss falls mid-stream however fast the worker runs (a fast-paced 2.2 s file
    # can end before its second checkpoint)
    paced = dataclasses.replace(OPTS, realtime=True)
    out, report = asyncio.run(stream_file([a.url, b.url], x, sample_rate=sr, options=paced))
    watcher.join()
    assert report["moves"] == 1 and report["restarts"] == 0
    assert len(out) == len(x)
    np.testing.assert_array_equal(out, uninterrupted)
    last = report["server_stats"]  # stats of the resumed stream count the move and the time without a worker
    assert last["resumes"] == 1 and last["resume_gap_ms"] > 0


def test_drain_sends_a_final_checkpoint_then_1012_and_the_stream_continues_elsewhere(
    processor,
    speech,
    pair,
    uninterrupted,
):
    (x, sr), (_, b) = speech, pair
    drained = _server(processor)
    try:
        _drain_and_resume(drained, b, x, sr, uninterrupted)
    finally:
        drained.stop()


def _drain_and_resume(drained, b, x, sr, uninterrupted):
    half = len(x) // 2
    with connect(drained.url, max_size=2**24) as ws:
        ws.send(start_msg("se", sr))
        assert json.loads(ws.recv(timeout=60))["type"] == "session.ready"
        for i in range(0, half, sr // 50):
            ws.send(pcm(x[i : min(half, i + sr // 50)], "f32le"))
        events, first_audio = events_and_audio(ws, "f32le", until_type="session.checkpoint")
        drained.loop.call_soon_threadsafe(drained.server.begin_drain)
        frames = []
        while True:
            try:
                frames.append(ws.recv(timeout=60))
            except Exception:
                break
        assert ws.close_code == 1012
    assert drained.server.draining
    texts = [json.loads(f) for f in frames if isinstance(f, str)]
    final = [e for e in texts if e["type"] == "session.checkpoint"][-1]
    assert texts[-1] is final  # the final checkpoint is the last event before the close
    received = np.concatenate([first_audio] + [np.frombuffer(f, "<f4") for f in frames if isinstance(f, bytes)])
    assert len(received) >= final["output_samples"]
    assert final["input_samples_acked"] == half  # everything sent before the drain is in the final state

    with pytest.raises(InvalidStatus) as refused:  # a draining worker admits no one: 503 before the upgrade
        connect(drained.url)
    assert refused.value.response.status_code == 503 and "Retry-After" in refused.value.response.headers

    with connect(b.url, max_size=2**24) as ws:
        ws.send(json.dumps({"type": "session.resume", "protocol": 1, "token": final["token"]}))
        resumed = json.loads(ws.recv(timeout=60))
        assert resumed["type"] == "session.resumed", resumed
        assert (resumed["input_samples_acked"], resumed["output_samples"]) == (half, final["output_samples"])
        assert resumed["resume_gap_ms"] >= 0
        for i in range(half, len(x), sr // 50):
            ws.send(pcm(x[i : i + sr // 50], "f32le"))
        ws.send(json.dumps({"type": "session.end"}))
        _, rest = events_and_audio(ws, "f32le")
    out = np.concatenate([received[: final["output_samples"]], rest])
    assert len(out) == len(x)
    np.testing.assert_array_equal(out, uninterrupted)


def _resume_error(url, token):
    with connect(url) as ws:
        ws.send(json.dumps({"type": "session.resume", "protocol": 1, "token": token}))
        event = json.loads(ws.recv(timeout=60))
        ws.send(start_msg("se", 16000))  # the connection stays usable: a fresh start works
        ready = json.loads(ws.recv(timeout=60))
    return event, ready


def test_refused_tokens_get_typed_error_events_and_a_fresh_start_works(processor, pair):
    a = pair[0]
    fingerprint = a.server.resumer.fingerprint
    other_key = ResumeKeys((b"o" * 32,))
    now = time.time()
    good = resume_token.sign(b"state", KEYS, fingerprint=fingerprint, now=now)
    body, mac = good.split(".")
    cases = {
        "malformed": "not a token",
        "bad_signature": resume_token.sign(b"state", other_key, fingerprint=fingerprint, now=now),
        "expired": resume_token.sign(b"state", KEYS, fingerprint=fingerprint, now=now - 3600),
        "foreign_model": resume_token.sign(b"state", KEYS, fingerprint="another model", now=now),
        "resume_refused": good,  # signed and fresh, but its state is not a stream's
    }
    cases["bad_signature_tampered"] = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    for code, token in cases.items():
        event, ready = _resume_error(a.url, token)
        assert event["type"] == "error" and event["code"] == code.removesuffix("_tampered"), (code, event)
        assert ready["type"] == "session.ready"


def test_a_foreign_model_is_refused_and_a_server_without_key_resumes_nothing(processor, pair, speech):
    (x, sr), (a, _) = speech, pair
    other = dataclasses.replace(load_stream_config().geometry, chunk_ms=200)
    foreign = _server(processor, geometry=other)
    keyless = _server(processor, keys=None)
    try:
        with connect(a.url, max_size=2**24) as ws:
            ws.send(start_msg("se", sr))
            json.loads(ws.recv(timeout=60))
            ws.send(pcm(x, "f32le"))
            events, _ = events_and_audio(ws, "f32le", until_type="session.checkpoint")
            token = events[-1]["token"]
        event, _ = _resume_error(foreign.url, token)
        assert event["code"] == "foreign_model"
        event, _ = _resume_error(keyless.url, token)
        assert event["code"] == "resume_unavailable"
    finally:
        foreign.stop()
        keyless.stop()
