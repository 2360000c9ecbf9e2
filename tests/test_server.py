"""The real-time server on loopback with the tiny models: sessions per task, packet invariance, durations, every
bad-input case of the protocol, limits, tokens, HTTP endpoints."""

import base64
import dataclasses
import json
import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from metis_rt.audio.stream_resampler import StreamResampler
from metis_rt.pipeline.components import load_components, resolve_config_for_tasks
from metis_rt.server.app import MetisServer
from metis_rt.server.config import ServerConfig
from metis_rt.streaming.config import StepsConfig, load_stream_config
from metis_rt.streaming.processor import MetisWindowProcessor

from .conftest import EXAMPLES_DIR
from .realparts import ServerThread

FAST = StepsConfig(stage1=2, s2a=(3, 2) + (1,) * 10)


@pytest.fixture(scope="module")
def processor(combined_model_dir):
    cfg, official = resolve_config_for_tasks(combined_model_dir, ["se", "tse", "vc"])
    return MetisWindowProcessor(load_components(combined_model_dir, ["se", "tse", "vc"], cfg)), official


class RunningServer:
    def __init__(self, processor, official, voices_dir=None, **changes):
        stream_cfg = load_stream_config()
        stream_cfg = dataclasses.replace(stream_cfg, steps={t: FAST for t in ("se", "tse", "vc")})
        tokens = changes.pop("tokens", ())
        tasks = changes.pop("tasks", ("se", "tse", "vc"))
        cfg = dataclasses.replace(ServerConfig(port=0, voices_dir=voices_dir), **changes)
        self.server = MetisServer(processor, official, stream_cfg, cfg, tasks=tasks, tokens=tokens, deterministic=True)
        self._thread = ServerThread(self.server, 60)
        self.url, self.thread = self._thread.url, self._thread.thread

    def stop(self):
        self._thread.stop()


def _server(processor, **kw):
    proc, official = processor
    return RunningServer(proc, official, **kw)


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voices")
    shutil.copy(EXAMPLES_DIR / "reference.wav", folder / "alice.wav")
    return folder


@pytest.fixture(scope="module")
def server(processor, voices_dir):
    # admission by max_sessions alone: these tests exercise concurrency; measured admission has its own tests
    s = _server(processor, voices_dir=str(voices_dir), max_sessions=20, admission="fixed")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def speech():
    x, sr = sf.read(EXAMPLES_DIR / "speech_noisy.wav", dtype="float32")
    return x[: int(2.2 * sr)], sr


def start_msg(task="se", rate=16000, fmt="f32le", **extra):
    return json.dumps(
        {
            "type": "session.start",
            "protocol": 1,
            "task": task,
            "sample_rate": rate,
            "format": fmt,
            "channels": 1,
            **extra,
        }
    )


def pcm(x, fmt):
    if fmt == "pcm_s16le":
        return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    return x.astype("<f4").tobytes()


def events_and_audio(ws, fmt, until_close=True, until_type=None):
    """Read frames until the connection closes (or an event of ``until_type``): (events, audio samples)."""
    events, audio = [], []
    try:
        while True:
            msg = ws.recv(timeout=60)
            if isinstance(msg, bytes):
                dtype = "<i2" if fmt == "pcm_s16le" else "<f4"
                a = np.frombuffer(msg, dtype=dtype).astype(np.float32)
                audio.append(a / 32768 if fmt == "pcm_s16le" else a)
            else:
                events.append(json.loads(msg))
                if until_type and events[-1]["type"] == until_type:
                    break
    except ConnectionClosed:
        assert until_close
    return events, np.concatenate(audio) if audio else np.zeros(0, np.float32)


def stream_session(url, x, rate, packet_ms, task="se", fmt="f32le", **start_extra):
    with connect(url, max_size=2**24) as ws:
        ws.send(start_msg(task, rate, fmt, **start_extra))
        ready = json.loads(ws.recv(timeout=60))
        assert ready["type"] == "session.ready", ready
        packet = int(rate * packet_ms / 1000)
        for i in range(0, len(x), packet):
            ws.send(pcm(x[i : i + packet], fmt))
        ws.send(json.dumps({"type": "session.end"}))
        events, audio = events_and_audio(ws, fmt)
        assert ws.close_code == 1000
    return ready, events, audio


# ----------------------------------------------------------------------------- sessions
@pytest.mark.parametrize("task", ["se", "tse", "vc"])
def test_full_session_per_task_output_duration_equals_input(server, speech, task):
    x, sr = speech
    extra = {}
    if task == "tse":
        extra["reference"] = {"data": base64.b64encode((EXAMPLES_DIR / "reference.wav").read_bytes()).decode()}
    if task == "vc":
        extra["voice"] = "alice"
    ready, events, audio = stream_session(server.url, x, sr, 40, task=task, **extra)
    assert ready["algorithmic_latency_ms"] == 415.0 and ready["chunk_ms"] == 240
    assert len(audio) == len(x)  # output duration = input duration (same rate)
    assert np.isfinite(audio).all() and audio.std() > 0
    assert not [e for e in events if e["type"] == "error"]


def test_packet_size_does_not_change_output(server, speech):
    x, sr = speech
    _, _, a = stream_session(server.url, x, sr, 10, fmt="pcm_s16le")
    _, _, b = stream_session(server.url, x, sr, 73, fmt="pcm_s16le")
    assert len(a) == len(b) == len(x)
    assert np.array_equal(a, b)


def test_other_rates_in_and_out(server, speech):
    x16, sr = speech
    x48 = np.repeat(x16, 3)  # crude 48 kHz signal: the server resamples whatever arrives
    _, _, out = stream_session(server.url, x48, 48000, 20, output_sample_rate=22050)
    assert abs(len(out) - len(x48) * 22050 / 48000) <= 1


def test_flush_then_continue_and_update(server, speech):
    x, sr = speech
    with connect(server.url) as ws:
        ws.send(start_msg())
        assert json.loads(ws.recv(timeout=60))["type"] == "session.ready"
        ws.send(pcm(x[:16000], "f32le"))
        ws.send(json.dumps({"type": "flush"}))
        events, audio = events_and_audio(ws, "f32le", until_close=False, until_type="flushed")
        assert len(audio) == 16000  # everything sent so far came back before "flushed"
        ws.send(json.dumps({"type": "session.update", "options": {"bypass": True, "mix": 0.5}}))
        events, _ = events_and_audio(ws, "f32le", until_close=False, until_type="session.updated")
        assert events[-1]["options"] == {"bypass": True, "mix": 0.5}
        ws.send(pcm(x[:8000], "f32le"))
        ws.send(json.dumps({"type": "session.end"}))
        _, audio = events_and_audio(ws, "f32le")
        assert len(audio) == 8000
        # bypass: the dry input, delayed; it went 16 -> 24 kHz (dry path) -> 16 kHz (output) through the resamplers
        up, down = StreamResampler(16000, 24000), StreamResampler(24000, 16000)
        dry24 = np.concatenate([up.push(x[:8000]), up.flush()])
        expected = np.concatenate([down.push(dry24), down.flush()])
        assert np.abs(audio[-4000:] - expected[4000:8000]).max() < 1e-5


def test_stats_events_arrive_every_second(server, speech):
    x, sr = speech
    with connect(server.url) as ws:
        ws.send(start_msg())
        ws.recv(timeout=60)
        for i in range(0, len(x), 1600):
            ws.send(pcm(x[i : i + 1600], "f32le"))
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        stats = []
        while time.monotonic() < deadline and not stats:
            msg = ws.recv(timeout=5)
            if isinstance(msg, str) and json.loads(msg)["type"] == "stats":
                stats.append(json.loads(msg))
    assert {"rtf", "hop_compute_ms", "queue_ms", "dropped_ms", "latency_ms"} <= set(stats[0])


def test_sixteen_concurrent_sessions(server, speech):
    x, sr = speech
    results = [None] * 16

    def one(i):
        results[i] = stream_session(server.url, np.roll(x, 800 * i), sr, 40)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for r in results:
        assert r is not None
        _, events, audio = r
        # unpaced input from 16 threads on a loaded CPU may legitimately be cut (overload policy); every cut sample
        # is reported (in overload warnings, the last one before the close), so the accounting is exact
        dropped_ms = sum(e["dropped_ms"] for e in events if e["type"] == "warning" and e["code"] == "overload")
        assert len(audio) == len(x) - round(dropped_ms * sr / 1000)
        assert not [e for e in events if e["type"] == "error"]
    assert max(server.server.engine.batch_sizes) > 1  # sessions really shared engine steps


# ----------------------------------------------------------------------------- bad input
def test_invalid_json_unknown_type_and_bad_start_keep_the_connection(server, speech):
    with connect(server.url) as ws:
        for bad, code in [
            ("{not json", "invalid_json"),
            ('{"type": "dance"}', "unknown_type"),
            (start_msg(rate=4000), "invalid_sample_rate"),
            (start_msg(task="l2s"), "invalid_task"),
            (start_msg(task="tse"), "reference_required"),
            (start_msg(fmt="mp3"), "invalid_format"),
            (start_msg(voice="nobody", task="vc"), "unknown_voice"),
        ]:
            ws.send(bad)
            event = json.loads(ws.recv(timeout=60))
            assert event == {"type": "error", "code": code, "message": event["message"]}, bad
        ws.send(start_msg())  # a corrected start still works on the same connection
        assert json.loads(ws.recv(timeout=60))["type"] == "session.ready"


def test_audio_before_start_is_an_error_then_1008(server):
    with connect(server.url) as ws:
        ws.send(b"\x00\x00" * 160)
        assert json.loads(ws.recv(timeout=10))["code"] == "audio_before_start"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1008


def test_bad_frames_are_counted_and_the_session_continues(server, speech):
    x, sr = speech
    with connect(server.url) as ws:
        ws.send(start_msg(fmt="pcm_s16le"))
        ws.recv(timeout=60)
        ws.send(pcm(x[:8000], "pcm_s16le"))
        ws.send(b"\x01\x02\x03")  # odd byte count
        ws.send(b"\x00\x00" * 20000)  # 1.25 s > 1 s
        ws.send(pcm(x[8000:16000], "pcm_s16le"))
        ws.send(json.dumps({"type": "session.end"}))
        events, audio = events_and_audio(ws, "pcm_s16le")
    codes = [e["code"] for e in events if e["type"] == "error"]
    assert codes == ["invalid_frame", "frame_too_long"]
    assert len(audio) == 16000  # the valid audio all came back


def test_nan_frame_is_rejected(server):
    with connect(server.url) as ws:
        ws.send(start_msg())
        ws.recv(timeout=60)
        ws.send(np.array([0.0, np.nan], dtype="<f4").tobytes())
        assert json.loads(ws.recv(timeout=10))["code"] == "invalid_frame"


def test_oversize_message_closes_1009(processor):
    s = _server(processor, max_message_bytes=4096)
    try:
        with connect(s.url, max_size=None) as ws:
            ws.send(start_msg())
            ws.recv(timeout=60)
            ws.send(b"\x00" * 8192)
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=10)
            assert ws.close_code == 1009
    finally:
        s.stop()


def test_idle_timeout_closes(processor):
    s = _server(processor, idle_timeout_s=0.5)
    try:
        with connect(s.url) as ws:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            assert ws.close_code == 1000 and "idle" in ws.close_reason
    finally:
        s.stop()


# ----------------------------------------------------------------------------- limits and auth
def test_busy_beyond_max_sessions_and_disconnect_frees_the_slot(processor):
    s = _server(processor, max_sessions=3)
    try:
        with connect(s.url) as first, connect(s.url) as second, connect(s.url) as third:
            first.send(start_msg())
            assert json.loads(first.recv(timeout=60))["type"] == "session.ready"
            # the capacity falls between the upgrades and session.start (measured admission can do that): the
            # slot is gone when the third asks for it, so it gets busy on the open connection
            s.server.cfg = dataclasses.replace(s.server.cfg, max_sessions=2)
            second.send(start_msg())
            assert json.loads(second.recv(timeout=60))["type"] == "session.ready"
            third.send(start_msg())
            busy = json.loads(third.recv(timeout=10))
            assert busy["type"] == "busy" and busy["retry_after_s"] > 0
            with pytest.raises(ConnectionClosed):
                third.recv(timeout=10)
            assert third.close_code == 1013
            with pytest.raises(InvalidStatus) as refused:  # full: refused before the upgrade (issue 19)
                connect(s.url, open_timeout=10)
            assert refused.value.response.status_code == 503 and refused.value.response.headers["Retry-After"]
            first.send(pcm(np.zeros(4000, np.float32), "f32le"))
            first.close_socket()  # a client that vanishes mid-stream
            deadline = time.monotonic() + 10
            while len(s.server.connections) > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            with connect(s.url) as fourth:
                fourth.send(start_msg())
                assert json.loads(fourth.recv(timeout=60))["type"] == "session.ready"
    finally:
        s.stop()


def test_tokens_are_enforced(processor):
    s = _server(processor, tokens=("s3cret",))
    try:
        for url, headers in [(s.url, None), (s.url + "?token=wrong", None)]:
            with pytest.raises(InvalidStatus) as info:
                connect(url, additional_headers=headers)
            assert info.value.response.status_code == 401
        for url, headers in [(s.url + "?token=s3cret", None), (s.url, {"Authorization": "Bearer s3cret"})]:
            with connect(url, additional_headers=headers) as ws:
                ws.send(start_msg())
                assert json.loads(ws.recv(timeout=60))["type"] == "session.ready"
    finally:
        s.stop()


def test_http_endpoints(server):
    base = f"http://127.0.0.1:{server.server.port}"
    health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=10).read())
    assert health["ready"] and health["tasks"] == ["se", "tse", "vc"] and health["voices"] == ["alice"]
    metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    assert "metis_sessions_active" in metrics and "metis_engine_step_ms" in metrics
    page = urllib.request.urlopen(base + "/", timeout=10)
    assert page.headers["Content-Type"].startswith("text/html") and b"metis-rt" in page.read()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + "/nope", timeout=10)
    assert info.value.code == 404


# ----------------------------------------------------------------------------- task switching
def update_msg(**fields):
    return json.dumps({"type": "session.update", **fields})


def test_switch_se_to_vc_with_a_voice_keeps_streaming(server, speech):
    x, sr = speech
    with connect(server.url) as ws:
        ws.send(start_msg())
        ready = json.loads(ws.recv(timeout=60))
        ws.send(pcm(x[:sr], "f32le"))
        old = []
        while sum(map(len, old)) < sr // 4:  # some output of the se stream first
            message = ws.recv(timeout=60)
            if isinstance(message, bytes):
                old.append(np.frombuffer(message, "<f4"))
        ws.send(update_msg(task="vc", voice="alice"))
        events, _ = events_and_audio(ws, "f32le", until_close=False, until_type="session.updated")
        assert events[-1] == {
            "type": "session.updated",
            "options": {},
            "voice": "alice",
            "task": "vc",
            "stage1_steps": FAST.stage1,  # the steps in force after the switch: the new task's defaults
            "s2a_steps": list(FAST.s2a),
        }
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.server.port}/metrics", timeout=10).read()
        assert f'session="{ready["session_id"]}",task="vc"' in metrics.decode()
        for i in range(sr, len(x), 800):
            ws.send(pcm(x[i : i + 800], "f32le"))
        ws.send(json.dumps({"type": "session.end"}))
        events, new = events_and_audio(ws, "f32le")
    assert not [e for e in events if e["type"] == "error"]
    # the vc stream starts afresh at the switch: all input sent after it comes back (plus at most a late old hop)
    assert len(x) - sr <= len(new) <= len(x)
    assert np.isfinite(new).all() and new[-(len(x) - sr) :].std() > 0


def test_task_switch_errors_leave_the_session_working(processor, voices_dir, speech):
    x, sr = speech
    s = _server(processor, voices_dir=str(voices_dir), tasks=("se", "vc"))
    try:
        with connect(s.url) as ws:
            ws.send(start_msg())
            assert json.loads(ws.recv(timeout=60))["type"] == "session.ready"
            for fields, code in [
                ({"task": "tse", "voice": "alice"}, "task_unavailable"),
                ({"task": "vc"}, "voice_required"),
                ({"task": "vc", "voice": "nobody"}, "unknown_voice"),
                ({"task": "asr"}, "invalid_task"),
                ({"task": "vc", "colour": "red"}, "invalid_message"),
            ]:
                ws.send(update_msg(**fields))
                event = json.loads(ws.recv(timeout=60))
                assert (event["type"], event["code"]) == ("error", code), fields
            ws.send(update_msg(voice="alice"))  # on se: kept for a later switch
            assert json.loads(ws.recv(timeout=60)) == {
                "type": "session.updated",
                "options": {},
                "voice": "alice",
                "task": None,
                "stage1_steps": FAST.stage1,
                "s2a_steps": list(FAST.s2a),
            }
            ws.send(update_msg(task="vc"))  # uses the stored voice
            assert json.loads(ws.recv(timeout=60))["task"] == "vc"
            for i in range(0, len(x), 800):
                ws.send(pcm(x[i : i + 800], "f32le"))
            ws.send(json.dumps({"type": "session.end"}))
            events, audio = events_and_audio(ws, "f32le")
        assert not [e for e in events if e["type"] == "error"]
        assert len(audio) == len(x) and audio.std() > 0  # switched before any audio: nothing was lost
    finally:
        s.stop()
