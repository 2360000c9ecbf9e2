"""The server's MQTT control with a real mosquitto on loopback: commands steer live sessions through the
session.update path, retained state follows every change, stats flow, and audio never waits on the broker.

The server runs a processor whose output is 0.5 x the dry input, so levels tell the settings apart: processed
0.5x, mix 0.5 -> 0.75x, bypass -> 1.0x. Output sample k is processed input sample k (same rate), so input and
output compare sample for sample. Pure config/CLI/mapping checks come first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections import defaultdict

import aiomqtt
import numpy as np
import pytest
from websockets.asyncio.client import connect

from metis_rt.config import load_official_config
from metis_rt.control.commands import SetBypass, SetMix, SetSteps, SetTask, SetVoice, Topics
from metis_rt.errors import ConfigError
from metis_rt.server import protocol as proto
from metis_rt.server.config import ServerConfig, default_node, mqtt_settings
from metis_rt.server.main import build_parser, main, mqtt_password, server_config
from metis_rt.server.mqtt import update_from_command
from metis_rt.streaming.processor import IdentityProcessor
from metis_rt.streaming.window import WindowResult

from .conftest import EXAMPLES_DIR
from .realparts import Broker, free_port
from .test_server import RunningServer, start_msg

NODE = "gpu1"
TOPICS = Topics("metis", NODE)
RATE = 16000
PACKET = 320  # 20 ms frames
PACE = 2.0  # the client sends at twice real time (the 0.5x engine keeps up easily): short tests, same code path
MAX_STREAM_S = 30.0  # a stream never sends more than this
CHUNK = RATE * 240 // 1000
SETTLE = 3 * CHUNK  # output after an update that may still carry the old gain (hop in flight, ramp)
MEASURE = RATE // 2
GUARD = RATE // 10  # resampler start-up at the beginning, padding at the end
LEVEL_TOLERANCE = 0.02
MAX_OUTPUT_GAP_S = 1.0  # output frames come every ~120 ms at this pace; a stall on the broker would be seconds
STEP_S = 10.0  # bound of every single wait
TEST_S = 45.0  # bound of one whole test


class HalfProcessor(IdentityProcessor):
    """Processed output = 0.5 x dry input."""

    def run(self, jobs):
        return [WindowResult(r.semantic, r.acoustic, 0.5 * r.wav_24k) for r in super().run(jobs)]


def lowpassed_noise(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise below 4 kHz (the 16 -> 24 -> 16 kHz dry path passes it unchanged), RMS 0.1."""
    x = np.random.default_rng(seed).standard_normal(int(seconds * RATE))
    spectrum = np.fft.rfft(x)
    spectrum[np.fft.rfftfreq(len(x), 1 / RATE) > 4000] = 0
    y = np.fft.irfft(spectrum, len(x))
    return (0.1 * y / y.std()).astype(np.float32)


NOISE = lowpassed_noise(MAX_STREAM_S)


def gain(out: np.ndarray, x: np.ndarray, start: int, stop: int) -> float:
    assert stop - start >= RATE // 4, f"too little output to measure: [{start}, {stop})"
    return float(np.sqrt(np.mean(out[start:stop] ** 2) / np.mean(x[start:stop] ** 2)))


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_S))


# ----------------------------------------------------------------------------- pure: mapping, config, CLI
def test_commands_map_to_session_updates():
    assert update_from_command(SetBypass(True)) == proto.SessionUpdate({"bypass": True})
    assert update_from_command(SetMix(0.25)) == proto.SessionUpdate({"mix": 0.25})
    assert update_from_command(SetTask("vc")) == proto.SessionUpdate({}, task="vc")
    assert update_from_command(SetVoice("alice")) == proto.SessionUpdate({}, voice="alice")
    steps = update_from_command(SetSteps(stage1=3, s2a=(2,) * 12))
    assert steps == proto.SessionUpdate({"stage1_steps": 3, "s2a_steps": (2,) * 12})
    with pytest.raises(proto.ProtocolError, match="stage1_steps must be an integer in"):
        update_from_command(SetSteps(stage1=500))  # MQTT accepts any count; a session's limits still apply


def test_mqtt_settings_from_config():
    assert mqtt_settings(ServerConfig()) is None
    s = mqtt_settings(ServerConfig(mqtt="mqtt://metis@broker.lan:1884/lab/metis", mqtt_node="gpu1"), "pw")
    assert (s.broker.host, s.broker.port, s.broker.prefix, s.node) == ("broker.lan", 1884, "lab/metis", "gpu1")
    assert (s.broker.username, s.broker.password) == ("metis", "pw")  # from METIS_RT_MQTT_PASSWORD
    s = mqtt_settings(ServerConfig(mqtt="mqtt://metis:inurl@h"), "env")
    assert s.broker.password == "inurl"  # the URL's own password wins
    assert mqtt_settings(ServerConfig(mqtt="mqtt://h"), "env").broker.password is None  # no user: not used
    assert mqtt_settings(ServerConfig(mqtt="mqtt://h")).node == default_node()
    assert default_node("gpu box/1+#") == "gpu-box-1" and default_node("///") == "metis-server"
    assert default_node("node-7.lan") == "node-7.lan"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mqtt": "http://h"}, "expected mqtt://host"),
        ({"mqtt": "mqtt://h:99999"}, "invalid port"),
        ({"mqtt": "mqtt://h/a/+"}, "wildcards"),
        ({"mqtt": "mqtt://h", "mqtt_node": "a/b"}, "mqtt_node"),
        ({"mqtt": "mqtt://h", "mqtt_insecure": True}, "only apply to TLS"),
        ({"mqtt": "mqtts://h", "mqtt_ca_file": "/nonexistent/ca.pem"}, "not a readable file"),
        ({"mqtt": "mqtt://h", "mqtt_reconnect_max_s": 0}, "must be positive"),
    ],
)
def test_bad_mqtt_config_is_a_clear_config_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        mqtt_settings(ServerConfig(**changes))


def test_cli_flags_and_password_from_the_environment(monkeypatch, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    argv = ["--mqtt", "mqtts://metis@h/lab", "--mqtt-node", "gpu1", "--mqtt-ca-file", str(ca), "--mqtt-insecure"]
    cfg = server_config(build_parser().parse_args(argv))
    assert (cfg.mqtt, cfg.mqtt_node, cfg.mqtt_ca_file, cfg.mqtt_insecure) == (
        "mqtts://metis@h/lab",
        "gpu1",
        str(ca),
        True,
    )
    assert server_config(build_parser().parse_args([])).mqtt is None  # configs/server.yaml: off
    monkeypatch.setenv("METIS_RT_MQTT_PASSWORD", "s3cret")
    assert mqtt_password() == "s3cret"


def test_bad_broker_url_stops_serve_before_loading_models(tmp_path, capsys):
    assert main(["--mqtt", "http://broker", "--model-dir", str(tmp_path / "none")]) == 2
    assert "broker URL 'http://broker'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real broker and server
@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voices")
    shutil.copy(EXAMPLES_DIR / "reference.wav", folder / "alice.wav")
    return folder


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("broker"))
    b.start()
    yield b
    b.stop()


def start_server(url: str, voices, **changes) -> RunningServer:
    return RunningServer(
        HalfProcessor(),
        load_official_config(),
        voices_dir=str(voices),
        mqtt=url,
        mqtt_node=NODE,
        stats_interval_s=0.25,
        **changes,
    )


@pytest.fixture(scope="module")
def server(broker, voices):
    s = start_server(broker.url, voices)
    yield s
    s.stop()


class Stream:
    """One WebSocket session streaming noise at PACE x real time; collects output (with arrival times) and events."""

    def __init__(self, ws, session_id: str):
        self.ws, self.id = ws, session_id
        self.x = NOISE
        self.sent = 0
        self.out: list[np.ndarray] = []
        self.received = 0
        self.arrivals: list[float] = []
        self.seen: list[dict] = []  # every event
        self.events: asyncio.Queue = asyncio.Queue()  # (event, output samples received before it), stats left out
        self._more = asyncio.Event()
        self._stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    async def send(self) -> None:
        while not self._stop.is_set() and self.sent + PACKET <= len(self.x):
            await self.ws.send(self.x[self.sent : self.sent + PACKET].tobytes())
            self.sent += PACKET
            await asyncio.sleep(PACKET / RATE / PACE)  # the client's pace, not a check of timing

    async def receive(self) -> None:
        async for message in self.ws:  # until the server closes
            if isinstance(message, bytes):
                samples = np.frombuffer(message, "<f4")
                self.out.append(samples)
                self.received += len(samples)
                self.arrivals.append(time.monotonic())
                self._more.set()
            else:
                event = json.loads(message)
                self.seen.append(event)
                if event["type"] != "stats":
                    self.events.put_nowait((event, self.received))

    async def output(self, samples: int) -> None:
        """Wait until at least ``samples`` output samples arrived."""
        async with asyncio.timeout(STEP_S):
            while self.received < samples:
                self._more.clear()
                await self._more.wait()

    async def event(self, kind: str) -> tuple[dict, int]:
        event, at = await asyncio.wait_for(self.events.get(), STEP_S)
        assert event["type"] == kind, event
        return event, at

    async def end(self) -> np.ndarray:
        """Stop sending, end the session and return all its output once the server closed."""
        self._stop.set()
        await asyncio.wait_for(self.tasks[0], STEP_S)
        await self.ws.send(json.dumps({"type": "session.end"}))
        await asyncio.wait_for(self.tasks[1], STEP_S)
        return np.concatenate(self.out)


@contextlib.asynccontextmanager
async def streaming(server: RunningServer):
    async with connect(server.url) as ws:
        await ws.send(start_msg("se", RATE, "f32le"))
        ready = json.loads(await asyncio.wait_for(ws.recv(), STEP_S))
        assert ready["type"] == "session.ready", ready
        stream = Stream(ws, ready["session_id"])
        stream.tasks = [asyncio.create_task(stream.send()), asyncio.create_task(stream.receive())]
        try:
            yield stream
        finally:
            for task in stream.tasks:
                task.cancel()
            await asyncio.gather(*stream.tasks, return_exceptions=True)


class Watcher:
    """Everything published under the node, queued per topic in arrival order."""

    def __init__(self, client: aiomqtt.Client):
        self.client = client
        self.topics: dict[str, asyncio.Queue] = defaultdict(asyncio.Queue)

    async def read(self) -> None:
        async for message in self.client.messages:
            self.topics[message.topic.value].put_nowait(message)

    async def next(self, topic: str) -> aiomqtt.Message:
        return await asyncio.wait_for(self.topics[topic].get(), STEP_S)

    async def next_json(self, topic: str):
        return json.loads((await self.next(topic)).payload)

    async def publish(self, topic: str, payload: bytes) -> None:
        await self.client.publish(topic, payload, qos=1)


@contextlib.asynccontextmanager
async def watching(broker: Broker, name: str = "watcher"):
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"test-{name}-{time.monotonic_ns()}") as client:
        await client.subscribe(f"metis/{NODE}/#", qos=1)
        watcher = Watcher(client)
        reader = asyncio.create_task(watcher.read())
        try:
            assert (await watcher.next(TOPICS.status)).payload == b"online"  # the server is connected
            yield watcher
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def retained(broker: Broker, topic: str) -> bytes | None:
    """The retained payload of ``topic`` now (None if there is none), read up to a marker published after it."""
    marker = f"test-marker/{time.monotonic_ns()}"
    found = None
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"test-retained-{time.monotonic_ns()}") as c:
        await c.subscribe(topic, qos=1)
        await c.subscribe(marker, qos=1)
        await c.publish(marker, b"end", qos=1)
        async with asyncio.timeout(STEP_S):
            async for message in c.messages:
                if message.topic.value == marker:
                    return found
                found = message.payload
    return found


def test_bypass_and_mix_over_mqtt_change_the_output_level(broker, server):
    async def body():
        async with watching(broker) as w, streaming(server) as s:
            state = await w.next_json(TOPICS.state(s.id))
            assert state["session_id"] == s.id and (state["task"], state["bypass"], state["mix"]) == ("se", False, 1.0)
            assert (state["sample_rate"], state["output_sample_rate"], state["voice"]) == (RATE, RATE, None)
            assert server.server.health()["mqtt"] == {"node": NODE, "connected": True}
            await s.output(RATE // 2)
            await w.publish(TOPICS.command(s.id, "mix"), b"0.5")
            event, mixed_at = await s.event("session.updated")
            steps = {"stage1_steps": event.get("stage1_steps"), "s2a_steps": event.get("s2a_steps")}  # those in force
            assert event == {"type": "session.updated", "options": {"mix": 0.5}, "voice": None, "task": None, **steps}
            assert isinstance(steps["stage1_steps"], int) and len(steps["s2a_steps"]) == 12
            assert (await w.next_json(TOPICS.state(s.id)))["mix"] == 0.5
            await s.output(mixed_at + SETTLE + MEASURE)
            await w.publish(TOPICS.command(s.id, "bypass"), b"true")
            event, bypassed_at = await s.event("session.updated")
            assert event["options"] == {"bypass": True}
            state = await w.next_json(TOPICS.state(s.id))
            assert (state["bypass"], state["mix"]) == (True, 0.5)
            assert json.loads(await retained(broker, TOPICS.state(s.id))) == state
            await s.output(bypassed_at + SETTLE + MEASURE)
            stats = await w.next_json(TOPICS.stats(s.id))
            assert set(stats) == {
                *("rtf", "hop_compute_ms", "queue_ms", "dropped_ms", "latency_ms", "hops"),
                *("resumes", "resume_gap_ms"),  # a resumed stream's moves (0 and 0.0 here)
            }
            assert stats["hops"] > 0
            out = await s.end()
            assert (await w.next(TOPICS.state(s.id))).payload == b""  # cleared when the session ended
            assert await retained(broker, TOPICS.state(s.id)) is None
        assert len(out) == s.sent  # every sample came back
        x = s.x
        assert gain(out, x, GUARD, mixed_at) == pytest.approx(0.5, abs=LEVEL_TOLERANCE)
        assert gain(out, x, mixed_at + SETTLE, bypassed_at) == pytest.approx(0.75, abs=LEVEL_TOLERANCE)
        assert gain(out, x, bypassed_at + SETTLE, len(out) - GUARD) == pytest.approx(1.0, abs=LEVEL_TOLERANCE)

    run(body())


def test_invalid_commands_are_answered_on_the_error_topic_and_change_nothing(broker, server):
    async def body():
        async with watching(broker) as w, streaming(server) as s:
            initial = await w.next_json(TOPICS.state(s.id))
            await s.output(RATE // 4)
            for topic, payload, reason in [
                (TOPICS.command(s.id, "mix"), b"2", "expected a number between 0 and 1"),
                (TOPICS.command(s.id, "bypass"), b"maybe", "expected true/false"),
                (TOPICS.command("999", "mix"), b"0.5", f"no session '999' on this server; live sessions: ['{s.id}']"),
                (TOPICS.command(None, "bypass"), b"true", f"publish to metis/{NODE}/session/<id>/set/<setting>"),
                (TOPICS.command(s.id, "steps"), b'{"stage1": 500}', "invalid_options: stage1_steps must be"),
                (TOPICS.command(s.id, "voice"), b"nobody", "unknown_voice: no voice 'nobody' on this server"),
            ]:
                await w.publish(topic, payload)
                error = await w.next_json(TOPICS.error)
                assert (error["topic"], error["payload"]) == (topic, payload.decode())
                assert reason in error["reason"], error
            assert json.loads(await retained(broker, TOPICS.state(s.id))) == initial
            assert w.topics[TOPICS.state(s.id)].empty()  # no state change was published
            out = await s.end()
        assert not [e for e in s.seen if e["type"] not in ("stats",)]  # the client saw no update and no error
        assert len(out) == s.sent
        assert gain(out, s.x, GUARD, len(out) - GUARD) == pytest.approx(0.5, abs=LEVEL_TOLERANCE)

    run(body())


def test_task_switch_over_mqtt_needs_a_voice_then_works(broker, server):
    async def body():
        async with watching(broker) as w, streaming(server) as s:
            await w.next_json(TOPICS.state(s.id))
            await s.output(RATE // 2)
            await w.publish(TOPICS.command(s.id, "task"), b"vc")
            assert "voice_required: task 'vc' needs a reference voice" in (await w.next_json(TOPICS.error))["reason"]
            await w.publish(TOPICS.command(s.id, "voice"), b"alice")
            event, _ = await s.event("session.updated")
            assert (event["voice"], event["task"]) == ("alice", None)
            state = await w.next_json(TOPICS.state(s.id))
            assert (state["task"], state["voice"], state["has_reference"]) == ("se", "alice", True)  # kept for later
            await w.publish(TOPICS.command(s.id, "task"), b"vc")
            event, switched_at = await s.event("session.updated")
            assert event["task"] == "vc"
            assert (await w.next_json(TOPICS.state(s.id)))["task"] == "vc"
            await s.output(switched_at + RATE)  # the new stream produces (after about one latency)
            await s.ws.send(json.dumps({"type": "session.update", "options": {"stage1_steps": 3}}))
            event, _ = await s.event("session.updated")  # a change from the WebSocket side is published too
            state = await w.next_json(TOPICS.state(s.id))
            assert (state["task"], state["stage1_steps"], state["voice"]) == ("vc", 3, "alice")
            out = await s.end()
            assert (await w.next(TOPICS.state(s.id))).payload == b""
        assert not [e for e in s.seen if e["type"] == "error"]
        # the restart drops the input that was still waiting for its hop (about one latency), nothing more
        assert s.sent - RATE < len(out) < s.sent

    run(body())


def test_broker_restart_while_streaming_leaves_audio_uninterrupted(tmp_path, voices):
    b = Broker(tmp_path)
    b.start()
    srv = start_server(b.url, voices, mqtt_reconnect_max_s=0.25)

    async def body():
        async with streaming(srv) as s:
            async with watching(b, "before") as w:
                state = await w.next_json(TOPICS.state(s.id))
                await s.output(RATE // 2)
            await asyncio.to_thread(b.stop)  # off the loop: the client keeps streaming meanwhile
            await s.output(s.received + RATE)  # a second of output while the broker is away
            await asyncio.to_thread(b.start)
            async with watching(b, "after") as w:  # "online" again: republished, mosquitto keeps nothing
                assert await w.next_json(TOPICS.state(s.id)) == state  # the retained state is back too
                await w.publish(TOPICS.command(s.id, "bypass"), b"on")
                _, bypassed_at = await s.event("session.updated")
                assert (await w.next_json(TOPICS.state(s.id)))["bypass"] is True
            assert srv.server.mqtt.control.connections == 2  # it really reconnected
            await s.output(bypassed_at + SETTLE + MEASURE)
            out = await s.end()
        assert len(out) == s.sent  # all output arrived
        assert not [e for e in s.seen if e["type"] in ("warning", "error")]  # nothing dropped, no overload
        assert max(np.diff(s.arrivals)) < MAX_OUTPUT_GAP_S
        block = RATE // 4
        levels = [gain(out, s.x, i, i + block) for i in range(GUARD, bypassed_at - block, block)]
        assert max(abs(level - 0.5) for level in levels) < LEVEL_TOLERANCE, levels  # steady before the command
        assert gain(out, s.x, bypassed_at + SETTLE, len(out) - GUARD) == pytest.approx(1.0, abs=LEVEL_TOLERANCE)

    try:
        run(body())
    finally:
        srv.stop()
        b.stop()


def test_server_streams_while_no_broker_is_reachable(voices):
    srv = start_server(f"mqtt://127.0.0.1:{free_port()}", voices)

    async def body():
        async with streaming(srv) as s:
            await s.output(RATE // 2)
            out = await s.end()
        assert len(out) == s.sent
        assert srv.server.health()["mqtt"] == {"node": NODE, "connected": False}

    try:
        run(body())
    finally:
        srv.stop()


def test_shutdown_clears_open_sessions_and_says_offline(tmp_path, voices):
    b = Broker(tmp_path)
    b.start()
    srv = start_server(b.url, voices)

    async def body():
        async with watching(b) as w, streaming(srv) as s:
            await w.next_json(TOPICS.state(s.id))
            await s.output(RATE // 4)
            await asyncio.to_thread(srv.stop)  # SIGTERM's path; returns when the server thread has ended
            assert (await w.next(TOPICS.state(s.id))).payload == b""
            assert (await w.next(TOPICS.status)).payload == b"offline"
        assert await retained(b, TOPICS.state(s.id)) is None

    try:
        run(body())
    finally:
        if srv.thread.is_alive():
            srv.stop()
        b.stop()
