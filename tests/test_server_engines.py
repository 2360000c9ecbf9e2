"""The server with the CPU engine: sessions on DeepFilterNet3 (chosen, or auto without weights), exact latency in
session.ready, streamed output = the offline result, strength, engines in /healthz, bad engine/strength values."""

from __future__ import annotations

import dataclasses
import json
import urllib.request

import numpy as np
import pytest
from websockets.sync.client import connect

from metis_rt.audio.files import load_for_model
from metis_rt.denoisers import open_denoiser
from metis_rt.server.app import MetisServer
from metis_rt.server.config import ServerConfig
from metis_rt.server.main import build_parser, build_server
from metis_rt.streaming.config import StepsConfig, load_stream_config
from metis_rt.streaming.frame_session import denoise

from .conftest import EXAMPLES_DIR
from .realparts import ServerThread
from .test_server import events_and_audio, pcm, start_msg

FAST = StepsConfig(stage1=2, s2a=(3, 2) + (1,) * 10)
DFN_LATENCY_48K = 1440 + 480  # the denoiser's delay + one frame


def speech(rate: int) -> np.ndarray:
    x = load_for_model(EXAMPLES_DIR / "speech_noisy.wav", rates=(rate,), min_seconds=1.0)[rate]
    return x[: int(1.6 * rate)].astype(np.float32)


@pytest.fixture(scope="module")
def cpu_server(tmp_path_factory):
    """``metis-rt serve`` as built on a machine without weights (auto): DeepFilterNet3 serves se."""
    empty = tmp_path_factory.mktemp("no-weights")
    args = build_parser().parse_args(["--model-dir", str(empty), "--port", "0"])
    server = build_server(args)
    thread = ServerThread(server, 60)
    yield server, thread.url
    thread.stop()


@pytest.fixture(scope="module")
def both_server(combined_model_dir):
    from metis_rt.pipeline.components import load_components, resolve_config_for_tasks
    from metis_rt.streaming.processor import MetisWindowProcessor

    cfg, official = resolve_config_for_tasks(combined_model_dir, ["se", "tse", "vc"])
    processor = MetisWindowProcessor(load_components(combined_model_dir, ["se"], cfg))
    stream_cfg = dataclasses.replace(load_stream_config(), steps={"se": FAST})
    server = MetisServer(
        processor,
        official,
        stream_cfg,
        ServerConfig(port=0),
        tasks=("se",),
        deterministic=True,
        frame_engines=("deepfilternet3", "rnnoise"),
    )
    thread = ServerThread(server, 120)
    yield server, thread.url
    thread.stop()


def run_session(url, x, rate, packet_ms, *, updates=(), **start):
    """One session: start, audio in packets (``updates`` sent after the first packet), end; (ready, events, audio)."""
    with connect(url, max_size=2**24) as ws:
        ws.send(start_msg("se", rate, **start))
        ready = json.loads(ws.recv(timeout=60))
        assert ready["type"] == "session.ready", ready
        packet = max(1, int(rate * packet_ms / 1000))
        for i in range(0, len(x), packet):
            ws.send(pcm(x[i : i + packet], "f32le"))
            if i == 0:
                for update in updates:
                    ws.send(json.dumps({"type": "session.update", **update}))
        ws.send(json.dumps({"type": "session.end"}))
        events, audio = events_and_audio(ws, "f32le")
    return ready, events, audio


def test_auto_without_weights_serves_se_on_deepfilternet3_exactly_as_offline(cpu_server):
    server, url = cpu_server
    assert server.tasks == ("se",) and server.catalogue.health() == {"se": ["deepfilternet3", "rnnoise"]}
    x = speech(48000)
    offline = denoise(open_denoiser("deepfilternet3"), x, 48000)
    for packet_ms in (10, 37, 500):
        ready, events, audio = run_session(url, x, 48000, packet_ms)
        assert ready["engine"] == "deepfilternet3"
        assert ready["latency_samples"] == DFN_LATENCY_48K and ready["algorithmic_latency_ms"] == 40.0
        assert not [e for e in events if e["type"] == "error"]
        assert len(audio) == len(x)
        np.testing.assert_array_equal(audio, offline)


def test_healthz_lists_engines_per_task(cpu_server, both_server):
    for (_, url), engines in [
        (cpu_server, {"se": ["deepfilternet3", "rnnoise"]}),
        (both_server, {"se": ["metis", "deepfilternet3", "rnnoise"]}),
    ]:
        health_url = url.replace("ws://", "http://").replace("/v1/stream", "/healthz")
        health = json.loads(urllib.request.urlopen(health_url, timeout=10).read())
        assert health["engines"] == engines
        assert health["engine_latency_ms"]["deepfilternet3"] == 40.0


def test_a_session_picks_deepfilternet3_on_a_metis_server(both_server):
    _, url = both_server
    x = speech(16000)
    ready, _, audio = run_session(url, x, 16000, 37, engine="deepfilternet3")
    assert ready["engine"] == "deepfilternet3"
    assert len(audio) == len(x)
    np.testing.assert_array_equal(audio, denoise(open_denoiser("deepfilternet3"), x, 16000))
    ready, _, audio = run_session(url, x[:16000], 16000, 100)  # auto: the server loaded Metis for se
    assert ready["engine"] == "metis" and len(audio) == 16000


def test_strength_at_start_and_by_update(cpu_server):
    _, url = cpu_server
    x = speech(48000)
    _, _, audio = run_session(url, x, 48000, 20, options={"strength": 0})
    np.testing.assert_allclose(audio, x, atol=1e-4)  # no reduction: the input, delay compensated
    _, events, audio = run_session(url, x, 48000, 20, options={"strength": 0}, updates=[{"options": {"strength": 100}}])
    assert [e["options"] for e in events if e["type"] == "session.updated"] == [{"strength": 100.0}]
    assert len(audio) == len(x) and float(np.abs(audio[-24000:] - x[-24000:]).max()) > 0.05  # denoising again


@pytest.mark.parametrize(
    ("start", "code"),
    [
        ({"engine": "dfn4"}, "invalid_engine"),
        ({"engine": 3}, "invalid_engine"),
        ({"engine": "deepfilternet3", "task": "tse", "voice": "alice"}, "engine_unavailable"),
        ({"options": {"strength": 150}}, "invalid_options"),
        ({"options": {"strength": -1}}, "invalid_options"),
        ({"options": {"strength": "loud"}}, "invalid_options"),
        ({"options": {"strength": True}}, "invalid_options"),
        ({"options": {"stage1_steps": 2}}, "invalid_options"),
    ],
)
def test_bad_start_gets_a_typed_error_and_the_connection_can_retry(cpu_server, start, code):
    _, url = cpu_server
    with connect(url, max_size=2**24) as ws:
        fields = {k: v for k, v in start.items() if k != "task"}
        ws.send(start_msg(start.get("task", "se"), 48000, **fields))
        event = json.loads(ws.recv(timeout=60))
        assert (event["type"], event["code"]) == ("error", code), event
        ws.send(start_msg("se", 48000))
        assert json.loads(ws.recv(timeout=60))["type"] == "session.ready"


def test_metis_only_engine_for_se_is_refused_on_a_cpu_server(cpu_server):
    _, url = cpu_server
    with connect(url) as ws:
        ws.send(start_msg("se", 48000, engine="metis"))
        event = json.loads(ws.recv(timeout=60))
        assert event["code"] == "engine_unavailable" and "deepfilternet3" in event["message"]


def test_bad_updates_get_errors_and_the_stream_goes_on(cpu_server, both_server):
    x = speech(48000)
    bad = [
        {"options": {"strength": 101}},
        {"options": {"strength": None}},
        {"options": {"s2a_steps": [1] * 12}},
        {"task": "vc"},
        {"voice": "alice"},
    ]
    _, events, audio = run_session(cpu_server[1], x, 48000, 20, updates=bad)
    errors = [e["code"] for e in events if e["type"] == "error"]
    assert errors == ["invalid_options", "invalid_options", "invalid_options", "engine_unavailable", "invalid_voice"]
    assert len(audio) == len(x)
    np.testing.assert_array_equal(audio, denoise(open_denoiser("deepfilternet3"), x, 48000))  # nothing changed
    # strength on a Metis session: refused, the session goes on
    _, events, audio = run_session(both_server[1], x[:32000], 16000, 100, updates=[{"options": {"strength": 10}}])
    assert [e["code"] for e in events if e["type"] == "error"] == ["invalid_options"]
    assert len(audio) == 32000
