"""The bridge's published state and stats through a real server on loopback: the steps in force are reported
(not null), and the median latency is the server's (not 0.0)."""

from __future__ import annotations

import asyncio
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from metis_rt.bridge.app import stats_payload
from metis_rt.bridge.backends import BridgeSettings
from metis_rt.bridge.remote import RemoteBackend
from metis_rt.control.commands import SetMix, SetSteps
from metis_rt.pipeline.components import load_components, resolve_config_for_tasks
from metis_rt.server.app import MetisServer
from metis_rt.server.config import ServerConfig
from metis_rt.streaming.config import StepsConfig, load_stream_config
from metis_rt.streaming.processor import MetisWindowProcessor

from .realparts import ServerThread

SERVER_STEPS = StepsConfig(stage1=2, s2a=(3, 2) + (1,) * 10)


@pytest.fixture(scope="module")
def server_url(combined_model_dir):
    cfg, official = resolve_config_for_tasks(combined_model_dir, ["se"])
    processor = MetisWindowProcessor(load_components(combined_model_dir, ["se"], cfg))
    stream_cfg = dataclasses.replace(load_stream_config(), steps={"se": SERVER_STEPS})
    server = MetisServer(processor, official, stream_cfg, ServerConfig(port=0), tasks=("se",), deterministic=True)
    thread = ServerThread(server, 60)
    yield thread.url
    thread.stop()


def test_remote_state_reports_the_steps_the_server_runs(server_url):
    async def body():
        backend = RemoteBackend(server_url, BridgeSettings("se"), 16000, 16000, lambda x: None)
        await backend.start()
        running = asyncio.create_task(backend.run())  # the receiving loop that hears the server's answers
        try:
            started = backend.settings.as_state()
            await backend.apply(SetSteps(stage1=3))
            after_steps = backend.settings.as_state()
            await backend.apply(SetMix(0.5))
            after_mix = backend.settings.as_state()
        finally:
            await backend.close()
            await running
        return started, after_steps, after_mix

    started, after_steps, after_mix = asyncio.run(asyncio.wait_for(body(), 60))
    assert started["stage1_steps"] == 2 and started["s2a_steps"] == [3, 2] + [1] * 10
    assert after_steps["stage1_steps"] == 3 and after_steps["s2a_steps"] == [3, 2] + [1] * 10
    assert after_mix["mix"] == 0.5 and after_mix["s2a_steps"] == [3, 2] + [1] * 10


def test_stats_payload_takes_the_servers_median_latency():
    server_stats = {"type": "stats", "rtf": 0.4, "hop_compute_ms": 90.0, "queue_ms": 0.0, "dropped_ms": 0.0}
    backend = SimpleNamespace(
        stats=lambda: {**server_stats, "latency_ms": 612.4, "hops": 9},
        latency_ms=415.0,
        dropped_input_samples=0,
        processing="raw",  # the stream is moving: the raw microphone plays
        moves=1,
    )
    playout = SimpleNamespace(
        depth_ms=40.0, jitter=SimpleNamespace(underruns=0, played_samples=48000), rate=48000, fade=None
    )
    counters = SimpleNamespace(xruns=0, captured_samples=48000)
    payload = stats_payload(backend, playout, counters, 48000)
    assert payload["latency_ms_p50"] == 612.4
    assert payload["processing"] == "raw" and payload["moves"] == 1
    backend.stats = lambda: {}
    assert stats_payload(backend, playout, counters, 48000)["latency_ms_p50"] is None  # nothing measured yet
    np.testing.assert_equal(stats_payload(backend, playout, counters, 48000)["rtf"], 0.0)
