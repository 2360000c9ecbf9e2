"""MQTT control plane: pure URL/topic/payload checks, then a real mosquitto on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from metis_rt.control.commands import (
    BrokerConfig,
    BrokerUrlError,
    CommandError,
    SetBypass,
    SetMix,
    SetSteps,
    SetTask,
    SetVoice,
    Topics,
    parse_broker_url,
    parse_command,
)
from metis_rt.control.mqtt import MqttControl

from .realparts import MOSQUITTO, Broker, free_port

REPO_DIR = Path(__file__).resolve().parents[1]
NODE = "laptop"
STEP_S = 5.0  # bound of every single wait on the broker
TEST_S = 25.0  # bound of one whole broker test


# ----------------------------------------------------------------------------- broker URLs
def test_parse_broker_url_defaults_and_credentials():
    assert parse_broker_url("mqtt://127.0.0.1") == BrokerConfig(host="127.0.0.1", port=1883, prefix="metis")
    cfg = parse_broker_url("mqtts://al%40x:p%3Ass@broker.lan/home/metis/", ca_file="/ca.pem")
    assert (cfg.host, cfg.port, cfg.tls, cfg.prefix) == ("broker.lan", 8883, True, "home/metis")
    assert (cfg.username, cfg.password, cfg.ca_file) == ("al@x", "p:ss", "/ca.pem")
    assert parse_broker_url("mqtt://u@h:1999/p").port == 1999
    assert parse_broker_url("mqtt://u@h:1999/p").password is None


@pytest.mark.parametrize(
    "url",
    ["http://h", "mqtt://", "mqtt://h:99999", "mqtt://h:abc", "mqtt://h/a/+/b", "mqtt://h/#", "mqtt://h?x=1", "h:1883"],
)
def test_parse_broker_url_rejects(url):
    with pytest.raises(BrokerUrlError):
        parse_broker_url(url)


# ----------------------------------------------------------------------------- topics
def test_topics_build_and_parse():
    t = Topics("metis", NODE)
    assert t.command(None, "bypass") == "metis/laptop/set/bypass"
    assert t.command("abc", "mix") == "metis/laptop/session/abc/set/mix"
    assert t.state(None) == "metis/laptop/state" and t.state("abc") == "metis/laptop/session/abc/state"
    assert t.stats("abc") == "metis/laptop/session/abc/stats"
    assert (t.status, t.error, t.subscription) == ("metis/laptop/status", "metis/laptop/error", "metis/laptop/#")
    assert t.parse("metis/laptop/set/voice") == (None, "voice")
    assert t.parse("metis/laptop/session/s-1/set/steps") == ("s-1", "steps")
    for own in ("metis/laptop/status", "metis/laptop/error", "metis/laptop/state", "metis/laptop/session/a/stats"):
        assert t.is_output(own)
    assert not t.is_output("metis/laptop/set/mix")


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("other/laptop/set/mix", "not under"),
        ("metis/laptop/set/volume", "unknown setting 'volume'"),
        ("metis/laptop/set", "unknown topic"),
        ("metis/laptop/session//set/mix", "unknown topic"),
        ("metis/laptop/session/a/set/mix/x", "unknown topic"),
        ("metis/laptop/foo", "unknown topic"),
    ],
)
def test_topics_parse_rejects(topic, reason):
    with pytest.raises(CommandError, match=reason):
        Topics("metis", NODE).parse(topic)


@pytest.mark.parametrize("node", ["", "a/b", "a+", "#"])
def test_topics_reject_bad_node(node):
    with pytest.raises(CommandError, match="node name"):
        Topics("metis", node)


# ----------------------------------------------------------------------------- payloads
@pytest.mark.parametrize(
    ("setting", "payload", "expected"),
    [
        ("bypass", b"true", SetBypass(True)),
        ("bypass", b"TRUE", SetBypass(True)),
        ("bypass", b"1", SetBypass(True)),
        ("bypass", b" On\n", SetBypass(True)),
        ("bypass", b"false", SetBypass(False)),
        ("bypass", b"0", SetBypass(False)),
        ("bypass", b"OFF", SetBypass(False)),
        ("bypass", b'"on"', SetBypass(True)),
        ("mix", b"0", SetMix(0.0)),
        ("mix", b"0.25", SetMix(0.25)),
        ("mix", b"1", SetMix(1.0)),
        ("task", b"se", SetTask("se")),
        ("task", b"TSE", SetTask("tse")),
        ("task", b'"vc"', SetTask("vc")),
        ("voice", b"alice", SetVoice("alice")),
        ("voice", b'"bob smith"', SetVoice("bob smith")),
        ("voice", b"42", SetVoice("42")),
        ("steps", b'{"stage1": 8}', SetSteps(stage1=8)),
        ("steps", b'{"s2a": [1,1,1,1,1,1,1,1,1,1,1,2]}', SetSteps(s2a=(1,) * 11 + (2,))),
        ("steps", b'{"stage1": 1, "s2a": [3,3,3,3,3,3,3,3,3,3,3,3]}', SetSteps(1, (3,) * 12)),
    ],
)
def test_parse_command_valid(setting, payload, expected):
    assert parse_command(setting, payload) == expected


@pytest.mark.parametrize(
    ("setting", "payload", "reason"),
    [
        ("bypass", b"yes", "expected true/false"),
        ("bypass", b"", "empty"),
        ("bypass", b"\xff\xfe", "not UTF-8"),
        ("bypass", b"2", "expected true/false"),
        ("mix", b"1.5", "between 0 and 1"),
        ("mix", b"-0.1", "between 0 and 1"),
        ("mix", b"NaN", "between 0 and 1"),
        ("mix", b"half", "between 0 and 1"),
        ("mix", b"true", "between 0 and 1"),
        ("task", b"asr", "one of se, tse, vc"),
        ("task", b"1", "one of se, tse, vc"),
        ("voice", b"a/b", "without slashes"),
        ("voice", b'""', "without slashes"),
        ("voice", b"x" * 200, "without slashes"),
        ("steps", b"8", "expected JSON like"),
        ("steps", b"{}", "expected JSON like"),
        ("steps", b'{"stage2": 3}', "unknown key"),
        ("steps", b'{"stage1": 0}', "stage1 got 0"),
        ("steps", b'{"stage1": true}', "stage1 got True"),
        ("steps", b'{"stage1": 2.5}', "stage1 got 2.5"),
        ("steps", b'{"s2a": [1,1,1]}', "list of 12 integers"),
        ("steps", b'{"s2a": [1,1,1,1,1,1,1,1,1,1,1,0]}', "list of 12 integers"),
        ("volume", b"1", "unknown setting"),
    ],
)
def test_parse_command_invalid(setting, payload, reason):
    with pytest.raises(CommandError, match=reason):
        parse_command(setting, payload)


# ----------------------------------------------------------------------------- real broker


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def _run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_S))


def _client(broker: Broker, name: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, identifier=f"test-{name}")


async def _next(client: aiomqtt.Client, topic: str | None = None) -> aiomqtt.Message:
    """The next message (on ``topic`` if given), bounded by ``STEP_S``."""

    async def first() -> aiomqtt.Message:
        async for message in client.messages:
            if topic is None or message.topic.value == topic:
                return message
        raise AssertionError("subscriber disconnected")

    return await asyncio.wait_for(first(), STEP_S)


@contextlib.asynccontextmanager
async def _running(broker: Broker, on_command, **kwargs):
    control = MqttControl(BrokerConfig("127.0.0.1", broker.port), NODE, on_command, **kwargs)
    task = asyncio.create_task(control.run(), name="mqtt-control")
    try:
        await control.wait_connected(STEP_S)
        yield control
    finally:
        await control.stop(STEP_S)
        await asyncio.wait_for(task, STEP_S)


def _collector() -> tuple[asyncio.Queue, callable]:
    received: asyncio.Queue = asyncio.Queue()
    return received, lambda session_id, command: received.put_nowait((session_id, command))


def test_command_reaches_handler_typed(broker):
    async def body():
        received, on_command = _collector()
        async with _running(broker, on_command), _client(broker, "pub") as pub:
            await pub.publish("metis/laptop/set/bypass", b"on", qos=1)
            await pub.publish("metis/laptop/session/abc/set/steps", b'{"stage1": 4}', qos=1)
            assert await asyncio.wait_for(received.get(), STEP_S) == (None, SetBypass(True))
            assert await asyncio.wait_for(received.get(), STEP_S) == ("abc", SetSteps(stage1=4))

    _run(body())


def test_invalid_payload_and_unknown_topic_get_errors_and_no_callback(broker):
    async def body():
        received, on_command = _collector()
        async with _running(broker, on_command), _client(broker, "sub") as sub:
            await sub.subscribe("metis/laptop/error", qos=1)
            await sub.publish("metis/laptop/set/mix", b"1.5", qos=1)
            error = json.loads((await _next(sub)).payload)
            assert error["topic"] == "metis/laptop/set/mix" and error["payload"] == "1.5"
            assert "between 0 and 1" in error["reason"]
            await sub.publish("metis/laptop/frobnicate", b"x", qos=1)
            assert "unknown topic" in json.loads((await _next(sub)).payload)["reason"]
            await sub.publish("metis/laptop/set/mix", b"0.5", qos=1)  # in order after the invalid ones
            assert await asyncio.wait_for(received.get(), STEP_S) == (None, SetMix(0.5))
            assert received.empty()

    _run(body())


def test_handler_exception_is_answered_and_loop_survives(broker):
    async def body():
        received, _ = _collector()

        async def on_command(session_id, command):
            if isinstance(command, SetVoice) and command.voice == "boom":
                raise ValueError("no such voice 'boom'")
            received.put_nowait((session_id, command))

        async with _running(broker, on_command), _client(broker, "sub") as sub:
            await sub.subscribe("metis/laptop/error", qos=1)
            await sub.publish("metis/laptop/set/voice", b"boom", qos=1)
            assert "no such voice" in json.loads((await _next(sub)).payload)["reason"]
            await sub.publish("metis/laptop/set/task", b"vc", qos=1)
            assert await asyncio.wait_for(received.get(), STEP_S) == (None, SetTask("vc"))

    _run(body())


def test_status_online_while_running_offline_after_stop(broker):
    async def body():
        async with _client(broker, "sub") as sub:
            async with _running(broker, lambda *_: None):
                await sub.subscribe("metis/laptop/status", qos=1)
                message = await _next(sub)
                assert (message.payload, message.retain) == (b"online", True)
            assert (await _next(sub)).payload == b"offline"
        async with _client(broker, "late") as late:
            await late.subscribe("metis/laptop/status", qos=1)
            message = await _next(late)
            assert (message.payload, message.retain) == (b"offline", True)

    _run(body())


CHILD = """
import asyncio, sys
from metis_rt.control.commands import BrokerConfig
from metis_rt.control.mqtt import MqttControl
control = MqttControl(BrokerConfig("127.0.0.1", int(sys.argv[1])), "laptop", lambda *_: None)
asyncio.run(control.run())
"""


def test_last_will_offline_when_killed(broker):
    async def body():
        async with _client(broker, "sub") as sub:
            await sub.subscribe("metis/laptop/status", qos=1)
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(broker.port)], cwd=REPO_DIR)
            try:
                assert (await _next(sub)).payload == b"online"
            finally:
                child.send_signal(signal.SIGKILL)  # no clean disconnect: the broker sends the will
                child.wait(STEP_S)
            message = await _next(sub)
            assert message.payload == b"offline"

    _run(body())


async def _retained(broker: Broker, name: str, topic_filter: str) -> dict[str, bytes]:
    """Every retained message under ``topic_filter``, read up to a marker published afterwards."""
    marker = f"test-marker/{name}"
    found: dict[str, bytes] = {}
    async with _client(broker, name) as c:
        await c.subscribe(topic_filter, qos=1)
        await c.subscribe(marker, qos=1)
        await c.publish(marker, b"end", qos=1)
        while (message := await _next(c)).topic.value != marker:
            found[message.topic.value] = message.payload
    return found


def test_state_retained_stats_sent_and_session_cleared(broker):
    async def body():
        async with _running(broker, lambda *_: None) as control, _client(broker, "sub") as sub:
            await sub.subscribe("metis/laptop/session/s1/#", qos=1)
            control.publish_state("s1", {"mix": 0.5, "task": "vc"})
            control.publish_state(None, {"bypass": False})
            assert json.loads((await _next(sub, "metis/laptop/session/s1/state")).payload)["task"] == "vc"
            control.publish_stats("s1", {"rtf": 0.3})
            stats = await _next(sub, "metis/laptop/session/s1/stats")
            assert json.loads(stats.payload) == {"rtf": 0.3} and not stats.retain
            found = await _retained(broker, "late", "metis/laptop/#")
            assert json.loads(found["metis/laptop/session/s1/state"]) == {"mix": 0.5, "task": "vc"}
            assert json.loads(found["metis/laptop/state"]) == {"bypass": False}
            assert "metis/laptop/session/s1/stats" not in found
            control.clear_session("s1")
            assert (await _next(sub, "metis/laptop/session/s1/state")).payload == b""
            found = await _retained(broker, "later", "metis/laptop/#")
            assert "metis/laptop/session/s1/state" not in found and "metis/laptop/state" in found

    _run(body())


def test_broker_restart_reconnects_and_republishes(broker):
    async def body():
        received, on_command = _collector()
        async with _running(broker, on_command, reconnect_initial_s=0.05, reconnect_max_s=0.3) as control:
            control.publish_state(None, {"mix": 0.5})
            broker.stop()
            start = time.perf_counter()
            for i in range(1000):  # while the broker is down, nothing blocks the caller
                control.publish_state("s2", {"step": i})
                control.publish_stats("s2", {"step": i})
            control.publish_state(None, {"mix": 0.7})
            assert time.perf_counter() - start < 0.5
            broker.start()
            found: dict[str, bytes] = {}
            async with _client(broker, "after") as sub:
                await sub.subscribe("metis/laptop/#", qos=1)
                wanted = {"metis/laptop/status", "metis/laptop/state", "metis/laptop/session/s2/state"}
                while not wanted <= found.keys():  # retained copies exist only if the component republished
                    message = await _next(sub)
                    found[message.topic.value] = message.payload
                assert found["metis/laptop/status"] == b"online"
                assert json.loads(found["metis/laptop/state"]) == {"mix": 0.7}
                assert json.loads(found["metis/laptop/session/s2/state"]) == {"step": 999}
                await sub.publish("metis/laptop/set/bypass", b"false", qos=1)
                assert await asyncio.wait_for(received.get(), STEP_S) == (None, SetBypass(False))
            assert control.connections >= 2

    _run(body())


def test_stats_dropped_while_disconnected_and_state_recorded():
    async def body():
        control = MqttControl(BrokerConfig("127.0.0.1", free_port()), NODE, lambda *_: None)
        control.publish_stats(None, {"rtf": 0.5})
        control.publish_state("a", {"mix": 1.0})
        control.clear_session("a")
        assert control.dropped_transient == 1 and not control.connected

    _run(body())


@pytest.fixture
def tls_broker(tmp_path):
    """mosquitto with a self-signed certificate for 127.0.0.1 and user ``metis`` / ``s3cret``."""
    if not Path(MOSQUITTO).exists() or not shutil.which("openssl") or not shutil.which("mosquitto_passwd"):
        pytest.fail("needs mosquitto, mosquitto_passwd and openssl (apt-get install mosquitto openssl)")
    cert, key, passwords = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "passwords"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=STEP_S,
    )
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "metis", "s3cret"], check=True, timeout=STEP_S)
    key.chmod(0o600)
    passwords.chmod(0o600)
    me = pwd.getpwuid(os.geteuid()).pw_name  # as root, mosquitto would switch to user "mosquitto" and not read tmp_path
    extra = f"user {me}\nallow_anonymous false\npassword_file {passwords}\ncertfile {cert}\nkeyfile {key}\n"
    b = Broker(tmp_path, extra)
    b.start()
    yield b, cert
    b.stop()


def test_tls_with_credentials_connects_and_bad_password_keeps_retrying(tls_broker):
    broker, cert = tls_broker

    async def body():
        for password, should_connect in (("s3cret", True), ("wrong", False)):
            url = f"mqtts://metis:{password}@127.0.0.1:{broker.port}/home/metis"
            control = MqttControl(
                parse_broker_url(url, ca_file=str(cert)), NODE, lambda *_: None, reconnect_initial_s=0.05
            )
            task = asyncio.create_task(control.run())
            try:
                if should_connect:
                    await control.wait_connected(STEP_S)
                else:
                    with pytest.raises(TimeoutError):  # refused: it retries in the background, never crashes
                        await control.wait_connected(1.0)
                    assert not task.done()
            finally:
                await control.stop(STEP_S)
                await asyncio.wait_for(task, STEP_S)
            assert control.connections == int(should_connect)

    _run(body())
