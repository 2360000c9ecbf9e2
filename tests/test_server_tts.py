"""TTS sessions and stage-1 families on the real server (loopback, the tiny models of ``combined_model_dir``):
text in -> audio out with time to first audio, Metis-Omni sessions, every bad-input case leaving the session usable,
the request queue's overload policy, and the pure parsing of the new messages."""

import asyncio
import base64
import contextlib
import dataclasses
import json
import shutil
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from metis_rt.control.commands import SetTask
from metis_rt.errors import ConfigError, MissingWeightsError
from metis_rt.pipeline.components import load_components, resolve_config_for_tasks
from metis_rt.server import protocol as proto
from metis_rt.server.app import MetisServer
from metis_rt.server.config import ServerConfig
from metis_rt.server.main import build_parser, build_server, plan_models
from metis_rt.server.mqtt import update_from_command
from metis_rt.streaming.config import StepsConfig, load_stream_config
from metis_rt.streaming.processor import MetisWindowProcessor
from metis_rt.text.tokenizer import MAX_TEXT_CHARS, PhoneTokenizer

from .conftest import EXAMPLES_DIR
from .realparts import ServerThread

FAST = StepsConfig(stage1=2, s2a=(3, 2) + (1,) * 10)
TTS_STAGE1_STEPS, TTS_S2A_STEPS = 2, (1,) * 12
MAX_PENDING = 2
# The transcript's length sets the speaking rate (frames per byte of text): a long one keeps the audio short.
TRANSCRIPT = (
    "This reference recording holds a few words spoken clearly by one speaker, and this long transcript makes "
    "the tiny test voice speak quickly."
)
TWO_SENTENCES = "The first sentence is spoken here. And then the second sentence follows it."
SHORT = "Hello there, how are you?"
REFERENCE_B64 = base64.b64encode((EXAMPLES_DIR / "reference.wav").read_bytes()).decode()
WAIT_S = 60


@pytest.fixture(scope="module")
def models(combined_model_dir):
    cfg, official = resolve_config_for_tasks(combined_model_dir, ["se", "tse", "vc"])
    comps = load_components(combined_model_dir, ["se", "tse", "vc", "tts", "omni"], cfg)
    return MetisWindowProcessor(comps), official, PhoneTokenizer.load(combined_model_dir)


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voices")
    shutil.copy(EXAMPLES_DIR / "reference.wav", folder / "alice.wav")
    (folder / "alice.txt").write_text(TRANSCRIPT + "\n", encoding="utf-8")
    shutil.copy(EXAMPLES_DIR / "reference.wav", folder / "bob.wav")  # no transcript
    return folder


class TtsServer:
    """A MetisServer in a thread on 127.0.0.1:0 (as tests/test_server.py's RunningServer, with TTS and Omni)."""

    def __init__(self, models, voices_dir, tasks=("se", "tse", "vc", "tts"), stage1=("task", "omni"), **changes):
        processor, official, tokenizer = models
        stream_cfg = dataclasses.replace(load_stream_config(), steps={t: FAST for t in ("se", "tse", "vc")})
        cfg = ServerConfig(
            port=0,
            voices_dir=str(voices_dir),
            tts_stage1_steps=TTS_STAGE1_STEPS,
            tts_s2a_steps=TTS_S2A_STEPS,
            tts_max_pending=MAX_PENDING,
        )
        cfg = dataclasses.replace(cfg, **changes)
        self.server = MetisServer(
            processor, official, stream_cfg, cfg, tasks=tasks, stage1=stage1, tokenizer=tokenizer, deterministic=True
        )
        self._thread = ServerThread(self.server, 120)
        self.url, self.loop = self._thread.url, self._thread.loop

    def stop(self):
        self._thread.stop()


@pytest.fixture(scope="module")
def server(models, voices_dir):
    s = TtsServer(models, voices_dir)
    yield s
    s.stop()


# ----------------------------------------------------------------------------- client helpers
def tts_start(**fields) -> str:
    return json.dumps({"type": "session.start", "protocol": 1, "task": "tts", **fields})


def speak(text, **fields) -> str:
    return json.dumps({"type": "tts.speak", "text": text, **fields})


@contextlib.contextmanager
def open_tts(url, **fields):
    """A connected TTS session (voice alice unless ``fields`` say otherwise): yields (ws, session.ready)."""
    with connect(url, max_size=2**24) as ws:
        ws.send(tts_start(**({"voice": "alice"} | fields)))
        ready = json.loads(ws.recv(timeout=WAIT_S))
        assert ready["type"] == "session.ready", ready
        yield ws, ready


def collect(ws, fmt="pcm_s16le", until=("tts.done",), count=1):
    """Read until ``count`` events of the ``until`` types: (events, audio, arrival time of each frame)."""
    events, audio, times = [], [], []
    dtype = proto.FORMATS[fmt]
    while count:
        message = ws.recv(timeout=WAIT_S)
        if isinstance(message, bytes):
            times.append(time.perf_counter())
            samples = np.frombuffer(message, dtype=dtype).astype(np.float32)
            audio.append(samples / proto.PCM16_SCALE if fmt == "pcm_s16le" else samples)
        else:
            events.append(json.loads(message))
            count -= events[-1]["type"] in until
    return events, np.concatenate(audio) if audio else np.zeros(0, np.float32), times


def errors(events):
    return [e for e in events if e["type"] == "error"]


def assert_still_speaks(ws, fmt="pcm_s16le"):
    ws.send(speak(SHORT, id="after"))
    events, audio, _ = collect(ws, fmt)
    assert not errors(events) and events[-1]["id"] == "after" and len(audio) > 0


# ----------------------------------------------------------------------------- text in, audio out
def test_text_in_audio_out_with_time_to_first_audio(server):
    with open_tts(server.url, output_sample_rate=16000, format="f32le") as (ws, ready):
        assert ready["task"] == "tts" and ready["stage1"] == "task" and ready["output_sample_rate"] == 16000
        assert ready["max_pending"] == MAX_PENDING and ready["voice"] == "alice" and ready["language"] == "en"
        sent = time.perf_counter()
        ws.send(speak(TWO_SENTENCES, id="r1"))
        events, audio, times = collect(ws, "f32le")
        done_at = time.perf_counter()
    done = events[-1]
    assert not errors(events) and done["type"] == "tts.done" and done["id"] == "r1"
    assert done["sentences"] == 2 and not done["cancelled"]
    assert abs(len(audio) * 1000 / 16000 - done["audio_ms"]) < 0.01  # every frame of the request came
    assert np.isfinite(audio).all() and audio.std() > 0
    # time to first audio: measured by the server (receipt -> first frame sent) and, honestly, by this client
    client_first_ms, client_total_ms = (times[0] - sent) * 1000, (done_at - sent) * 1000
    assert 0 < done["first_audio_ms"] <= done["total_ms"] <= client_total_ms
    assert done["first_audio_ms"] <= client_first_ms  # same clock: stamped as the server began to send it
    # the first sentence leaves before the second is computed: audio arrives well before the request completes
    assert client_first_ms < client_total_ms and done["first_audio_ms"] < done["total_ms"]
    per_sentence_ms = done["compute_ms"] / done["sentences"]
    assert (times[-1] - times[0]) * 1000 > 0.3 * per_sentence_ms
    print(
        f"\nTTS 2 sentences: server first_audio {done['first_audio_ms']:.0f} ms / total {done['total_ms']:.0f} ms "
        f"(compute {done['compute_ms']:.0f} ms, audio {done['audio_ms']:.0f} ms); client first frame "
        f"{client_first_ms:.0f} ms / tts.done {client_total_ms:.0f} ms"
    )


def test_uploaded_reference_defaults_and_flush_then_end(server):
    upload = {"voice": None, "reference": {"data": REFERENCE_B64}, "reference_text": TRANSCRIPT}
    with open_tts(server.url, sample_rate=48000, **upload) as (ws, ready):
        assert ready["format"] == "pcm_s16le" and ready["output_sample_rate"] == 48000 and ready["voice"] is None
        ws.send(speak(SHORT, id=7))
        ws.send(json.dumps({"type": "flush"}))
        events, audio, _ = collect(ws, until=("flushed",))
        assert [e["type"] for e in events] == ["tts.done", "flushed"] and events[0]["id"] == 7
        assert abs(len(audio) * 1000 / 48000 - events[0]["audio_ms"]) < 0.01
        ws.send(speak(SHORT, id=8))
        ws.send(json.dumps({"type": "session.end"}))  # the queued request is spoken, then the close
        events, audio = [], 0
        with pytest.raises(ConnectionClosed):
            while True:
                message = ws.recv(timeout=WAIT_S)
                if isinstance(message, bytes):
                    audio += len(message) // 2
                else:
                    events.append(json.loads(message))
        assert ws.close_code == 1000
    assert [e["type"] for e in events] == ["tts.done"] and abs(audio * 1000 / 48000 - events[0]["audio_ms"]) < 0.01


# ----------------------------------------------------------------------------- Metis-Omni
def test_omni_sessions_for_se_and_tts(server):
    x, sr = sf.read(EXAMPLES_DIR / "speech_noisy.wav", dtype="float32")
    x = x[: int(1.2 * sr)]
    with connect(server.url) as ws:
        start = {"type": "session.start", "protocol": 1, "task": "se", "sample_rate": sr, "format": "f32le"}
        ws.send(json.dumps(start | {"stage1": "omni"}))
        ready = json.loads(ws.recv(timeout=WAIT_S))
        assert ready["type"] == "session.ready" and ready["stage1"] == "omni"
        for i in range(0, len(x), 640):
            ws.send(x[i : i + 640].astype("<f4").tobytes())
        ws.send(json.dumps({"type": "session.end"}))
        out, events = [], []
        with pytest.raises(ConnectionClosed):
            while True:
                message = ws.recv(timeout=WAIT_S)
                if isinstance(message, bytes):
                    out.append(np.frombuffer(message, "<f4"))
                else:
                    events.append(json.loads(message))
    out = np.concatenate(out)
    assert not errors(events) and len(out) == len(x) and np.isfinite(out).all() and out.std() > 0
    with open_tts(server.url, stage1="omni") as (ws, ready):
        assert ready["stage1"] == "omni"
        ws.send(speak(SHORT))
        events, audio, _ = collect(ws)
    assert not errors(events) and events[-1]["id"] is None and len(audio) > 0
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.server.port}/healthz", timeout=10).read())
    assert health["tasks"] == ["se", "tse", "vc", "tts"] and health["stage1"] == ["task", "omni"]
    assert health["tts_voices"] == ["alice"] and health["voices"] == ["alice", "bob"]


def test_stage1_the_server_did_not_load_is_an_error(models, voices_dir):
    s = TtsServer(models, voices_dir, tasks=("se",), stage1=("task",))
    try:
        with connect(s.url) as ws:
            base = {"type": "session.start", "protocol": 1, "task": "se", "sample_rate": 16000, "format": "f32le"}
            for fields, code in [
                ({"stage1": "omni"}, "stage1_unavailable"),
                ({"stage1": "turbo"}, "invalid_stage1"),
                ({"task": "tts", "voice": "alice"}, "task_unavailable"),
                ({"task": "l2s"}, "invalid_task"),
            ]:
                ws.send(json.dumps(base | fields))
                event = json.loads(ws.recv(timeout=WAIT_S))
                assert (event["type"], event["code"]) == ("error", code), fields
            ws.send(json.dumps(base))
            ready = json.loads(ws.recv(timeout=WAIT_S))
            assert ready["type"] == "session.ready" and ready["stage1"] == "task"
    finally:
        s.stop()


# ----------------------------------------------------------------------------- bad input
def test_bad_requests_are_errors_and_the_session_keeps_working(server):
    with open_tts(server.url) as (ws, _):
        for message, code in [
            (speak("", id="e1"), "invalid_text"),
            (speak("   ", id="e2"), "invalid_text"),
            (speak("a" * (MAX_TEXT_CHARS + 1), id="e3"), "invalid_text"),
            (speak(SHORT, id="e4", language="xx"), "unsupported_language"),
            (speak(42, id="e5"), "invalid_text"),
            (json.dumps({"type": "tts.speak", "id": "e6"}), "invalid_text"),
            (speak("... !!!", id="e7"), "invalid_text"),  # nothing pronounceable
            (speak(SHORT, id="e8", colour="red"), "invalid_message"),
        ]:
            ws.send(message)
            event = json.loads(ws.recv(timeout=WAIT_S))
            assert (event["type"], event["code"]) == ("error", code), message[:80]
            assert event["id"] == json.loads(message)["id"] and event["message"]
        ws.send(np.zeros(1600, "<i2").tobytes())  # audio into a TTS session
        event = json.loads(ws.recv(timeout=WAIT_S))
        assert (event["type"], event["code"]) == ("error", "audio_not_used") and "id" not in event
        ws.send(json.dumps({"type": "session.update", "options": {"mix": 0.5}}))
        assert json.loads(ws.recv(timeout=WAIT_S))["code"] == "invalid_options"
        ws.send(json.dumps({"type": "session.update", "task": "se"}))
        assert json.loads(ws.recv(timeout=WAIT_S))["code"] == "task_switch_unsupported"
        ws.send(json.dumps({"type": "session.update", "language": "xx"}))
        assert json.loads(ws.recv(timeout=WAIT_S))["code"] == "unsupported_language"
        ws.send(json.dumps({"type": "session.update", "voice": "bob"}))
        assert json.loads(ws.recv(timeout=WAIT_S))["code"] == "voice_text_required"
        assert_still_speaks(ws)


def test_voices_without_transcript_and_references_without_text(server):
    with connect(server.url) as ws:
        for fields, code in [
            ({"voice": "bob"}, "voice_text_required"),
            ({"reference": {"data": REFERENCE_B64}}, "reference_text_required"),
            ({}, "reference_required"),
            ({"voice": "nobody", "reference_text": "Hi."}, "unknown_voice"),
            ({"voice": "alice", "language": "xx"}, "unsupported_language"),
            ({"voice": "alice", "options": {"bypass": True}}, "invalid_options"),
        ]:
            ws.send(tts_start(**fields))
            event = json.loads(ws.recv(timeout=WAIT_S))
            assert (event["type"], event["code"]) == ("error", code), fields
        ws.send(tts_start(voice="bob", reference_text=TRANSCRIPT))  # a transcript given by the client
        assert json.loads(ws.recv(timeout=WAIT_S))["voice"] == "bob"
        ws.send(json.dumps({"type": "session.update", "voice": "alice", "language": "en"}))
        assert json.loads(ws.recv(timeout=WAIT_S)) == {
            "type": "session.updated",
            "voice": "alice",
            "language": "en",
            "options": {},
            "task": None,
        }
        assert_still_speaks(ws)


def test_queue_overflow_rejects_the_request_and_says_so(server):
    with open_tts(server.url) as (ws, _):
        total = MAX_PENDING + 3
        for i in range(total):
            ws.send(speak(SHORT, id=i))
        done, rejected, events = [], [], []
        while len(done) + len(rejected) < total:  # each request: one tts.done or one error
            message = ws.recv(timeout=WAIT_S)
            if isinstance(message, str):
                events.append(json.loads(message))
                (rejected if events[-1]["type"] == "error" else done).append(events[-1]["id"])
        assert all(e["code"] == "tts_queue_full" and "dropped" in e["message"] for e in errors(events))
        assert sorted(done + rejected) == list(range(total)) and len(rejected) >= 2
        assert done == sorted(done)  # spoken in order
        assert_still_speaks(ws)


def test_cancel_drops_the_queue_and_stops_after_the_sentence(server):
    with open_tts(server.url) as (ws, _):
        ws.send(speak(f"{TWO_SENTENCES} A third sentence comes at the very end.", id="long"))
        ws.send(speak(SHORT, id="q1"))
        ws.send(speak(SHORT, id="q2"))
        ws.send(json.dumps({"type": "tts.cancel"}))
        events, _, _ = collect(ws, until=("tts.done",))
        cancelled = next(e for e in events if e["type"] == "tts.cancelled")
        assert cancelled["dropped"] == ["q1", "q2"]
        assert events[-1]["id"] == "long" and events[-1]["cancelled"] and events[-1]["sentences"] < 3
        assert_still_speaks(ws)


def test_streaming_sessions_refuse_tts_messages_and_mqtt_cannot_switch_tts(server):
    with connect(server.url) as ws:
        start = {"type": "session.start", "protocol": 1, "task": "se", "sample_rate": 16000, "format": "f32le"}
        ws.send(json.dumps(start))
        assert json.loads(ws.recv(timeout=WAIT_S))["type"] == "session.ready"
        for message, code in [
            (speak(SHORT), "tts_only"),
            (json.dumps({"type": "session.update", "task": "tts"}), "task_switch_unsupported"),
            (json.dumps({"type": "session.update", "language": "en"}), "invalid_message"),
        ]:
            ws.send(message)
            assert json.loads(ws.recv(timeout=WAIT_S))["code"] == code
    with open_tts(server.url) as (ws, ready):
        conn = server.server.sessions[ready["session_id"]]
        state = asyncio.run_coroutine_threadsafe(_state(conn), server.loop).result(10)
        assert state["task"] == "tts" and state["voice"] == "alice" and state["stage1"] == "task"
        mqtt_switch = conn.apply_update(update_from_command(SetTask("se")))  # the MQTT command path
        with pytest.raises(proto.ProtocolError) as info:
            asyncio.run_coroutine_threadsafe(mqtt_switch, server.loop).result(10)
        assert info.value.code == "task_switch_unsupported"
        assert_still_speaks(ws)


async def _state(conn):
    return conn.state()


# ----------------------------------------------------------------------------- pure parsing
def test_parse_tts_messages():
    parse = proto.parse_client_message
    assert proto.MAX_TEXT_CHARS == MAX_TEXT_CHARS
    assert parse(speak("Hi.", id="a", language="de")) == proto.TtsSpeak("Hi.", "a", "de")
    assert parse(speak("Hi.")) == proto.TtsSpeak("Hi.")
    assert parse(json.dumps({"type": "tts.cancel"})) == proto.TtsCancel()
    start = parse(tts_start(voice="alice"))
    assert (start.task, start.sample_rate, start.output_sample_rate, start.format) == ("tts", 24000, 24000, "pcm_s16le")
    assert start.stage1 is None and start.language is None and start.reference_text is None
    start = parse(tts_start(reference={"data": "UklGRg=="}, reference_text="Hi.", stage1="omni", language="en"))
    assert (start.reference, start.reference_text, start.stage1, start.language) == (b"RIFF", "Hi.", "omni", "en")
    update = proto.parse_update({"type": "session.update", "voice": "bob", "reference_text": "Hi.", "language": "fr"})
    assert (update.voice, update.reference_text, update.language) == ("bob", "Hi.", "fr")
    for text, code, request_id in [
        (speak("", id="x"), "invalid_text", "x"),
        (speak("a" * (MAX_TEXT_CHARS + 1)), "invalid_text", None),
        (speak(["Hi."], id=3), "invalid_text", 3),
        (speak("Hi.", language=""), "unsupported_language", None),
        (speak("Hi.", id=True), "invalid_message", None),
        (speak("Hi.", id="x" * 129), "invalid_message", None),
        (tts_start(), "reference_required", None),
        (tts_start(reference={"data": "UklGRg=="}), "reference_text_required", None),
        (tts_start(voice="a", options={"mix": 0.5}), "invalid_options", None),
        (tts_start(voice="a", stage1="mega"), "invalid_stage1", None),
        (tts_start(voice="a", reference_text=""), "invalid_text", None),
        (json.dumps({"type": "session.start", "protocol": 1, "task": "l2s"}), "invalid_task", None),
        (json.dumps({"type": "session.update", "reference_text": "Hi."}), "voice_required", None),
        (
            json.dumps(
                {"type": "session.start", "protocol": 1, "task": "se", "sample_rate": 16000, "format": "f32le"}
                | {"language": "en"}
            ),
            "invalid_message",
            None,
        ),
    ]:
        with pytest.raises(proto.ProtocolError) as info:
            parse(text)
        assert (info.value.code, info.value.request_id) == (code, request_id), text[:80]
        assert isinstance(info.value.event(), proto.RequestError if request_id is not None else proto.ErrorEvent)
    assert "offline-only" in str(pytest.raises(proto.ProtocolError, parse, tts_start(task="l2s")).value)


def test_plan_models_and_server_build(combined_model_dir, tmp_path):
    assert plan_models("se,tse,vc,tts", "task,omni") == (
        ["se", "tse", "vc", "tts"],
        ["task", "omni"],
        ["se", "tse", "vc", "tts", "omni"],
    )
    assert plan_models("se,tts", "omni") == (["se", "tts"], ["omni"], ["omni"])
    for tasks, stage1 in [("se,l2s", "task"), ("asr", "task"), ("se", "turbo"), ("", "task"), ("se", "")]:
        with pytest.raises(ConfigError):
            plan_models(tasks, stage1)
    args = build_parser().parse_args(["--model-dir", str(combined_model_dir), "--tasks", "se,tts", "--stage1", "omni"])
    server = build_server(args)
    assert set(server.processor.comps.stage1) == {"omni"} and server.stage1 == ("omni",)
    assert server.tts_service is not None and server.tasks == ("se", "tts")
    partial = tmp_path / "models"
    partial.mkdir()
    for item in combined_model_dir.iterdir():
        if item.name != "metis_omni":
            (partial / item.name).symlink_to(item.resolve())
    args = build_parser().parse_args(["--model-dir", str(partial), "--tasks", "se", "--stage1", "task,omni"])
    with pytest.raises(MissingWeightsError) as info:
        build_server(args)
    assert info.value.missing == ["metis_omni/metis_omni.safetensors"]


def test_outbox_close_releases_waiters_and_ignores_puts():
    from metis_rt.server.outbox import Outbox

    async def scenario():
        out = Outbox(4)
        out.put(b"frame")
        waiter = asyncio.ensure_future(out.drained())
        await asyncio.sleep(0)
        assert not waiter.done()
        out.close()  # the socket went away: nobody waits for it
        await asyncio.wait_for(waiter, 1)
        assert out.put(b"more") == 0 and not out.items
        await asyncio.wait_for(out.drained(), 1)

    asyncio.run(scenario())
