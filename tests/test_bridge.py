"""Bridge parts without devices: fades, device routing, the local backend's command handling, the CLI's checks.

The end-to-end runs with PulseAudio and mosquitto are in tests/test_bridge_live.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

import numpy as np
import pytest
import soundfile as sf

from metis_rt.bridge import app
from metis_rt.bridge import main as bridge_main
from metis_rt.bridge.backends import BackendError, BridgeSettings, LocalBackend
from metis_rt.bridge.playout import Fader, Playout
from metis_rt.clients import devices as dev
from metis_rt.config import OFFICIAL_MODEL_CONFIG, load_official_config
from metis_rt.control.commands import CommandError, SetBypass, SetMix, SetSteps, SetTask, SetVoice
from metis_rt.server.voices import VoiceLibrary
from metis_rt.streaming.config import load_stream_config

from .bridge_child import GAIN, ScaledDryProcessor
from .conftest import EXAMPLES_DIR


# ----------------------------------------------------------------------------- fades
def test_fader_ramps_linearly_and_holds_the_target():
    f = Fader(fade_samples=10)
    g = f.gains(15)
    np.testing.assert_allclose(g[:10], np.arange(1, 11) / 10, atol=1e-6)
    assert (g[10:] == 1).all() and f.level == 1.0
    f.target = 0.0
    g = f.gains(4)
    np.testing.assert_allclose(g, [0.9, 0.8, 0.7, 0.6], atol=1e-6)
    assert (f.gains(20)[6:] == 0).all() and f.level == 0.0


def test_playout_fades_in_at_start_and_after_an_underrun_and_fades_out():
    p = Playout(rate=1000, capacity_ms=1000, prefill_ms=0, fade_ms=10)  # 10-sample fades
    p.write(np.ones(30, dtype=np.float32))
    out = np.empty(30, dtype=np.float32)
    assert p.read_into(out) == 30
    np.testing.assert_allclose(out[:10], np.arange(1, 11) / 10, atol=1e-6)  # fade in, no jump from silence
    assert (out[10:] == 1).all()
    assert p.read_into(out) == 0 and not out.any()  # ran dry: silence
    p.write(np.ones(40, dtype=np.float32))
    p.read_into(out)
    assert np.max(np.diff(np.concatenate([[0.0], out]))) <= 0.1 + 1e-6  # resumes with a fade, not a step
    p.fade_out()
    assert not p.silent
    p.read_into(out[:5])
    np.testing.assert_allclose(out[:5], [0.9, 0.8, 0.7, 0.6, 0.5], atol=1e-6)
    p.read_into(out)
    assert p.silent and not out[5:].any()


# ----------------------------------------------------------------------------- devices
DEVICES = [
    {"name": "pulse", "max_input_channels": 32, "max_output_channels": 32, "default_samplerate": 44100.0},
    {"name": "default", "max_input_channels": 32, "max_output_channels": 32, "default_samplerate": 44100.0},
    {"name": "BlackHole 2ch", "max_input_channels": 2, "max_output_channels": 2, "default_samplerate": 48000.0},
]


def test_resolve_device_by_name_index_and_pulse_route():
    assert app.resolve_device(DEVICES, "blackhole", "output", 1) == app.DeviceChoice(2)
    assert app.resolve_device(DEVICES, None, "input", 1) == app.DeviceChoice(1)
    assert app.resolve_device(DEVICES, "pulse:my_mic.monitor", "input", 1) == app.DeviceChoice(0, "my_mic.monitor")
    with pytest.raises(dev.AudioDeviceError, match="give a PulseAudio sink"):
        app.resolve_device(DEVICES, "pulse:", "output", 1)
    with pytest.raises(dev.AudioDeviceError, match="libasound2-plugins"):
        app.resolve_device(DEVICES[1:], "pulse:x", "output", 1)


def test_routed_sets_and_restores_the_pulse_target(monkeypatch):
    monkeypatch.setenv("PULSE_SINK", "before")
    monkeypatch.delenv("PULSE_SOURCE", raising=False)
    with app.routed("output", "metis_vmic"):
        assert os.environ["PULSE_SINK"] == "metis_vmic"
    with app.routed("input", "fake.monitor"):
        assert os.environ["PULSE_SOURCE"] == "fake.monitor"
    assert os.environ["PULSE_SINK"] == "before" and "PULSE_SOURCE" not in os.environ
    with app.routed("output", None):
        assert os.environ["PULSE_SINK"] == "before"


# ----------------------------------------------------------------------------- local backend
@pytest.fixture(scope="module")
def official():
    return load_official_config(OFFICIAL_MODEL_CONFIG)


def _local(official, tmp_path, task="se", tasks=("se", "tse", "vc"), reference=None, outputs=None):
    voices_dir = tmp_path / "voices"
    voices_dir.mkdir(exist_ok=True)
    x, sr = sf.read(EXAMPLES_DIR / "reference.wav", dtype="float32")
    sf.write(voices_dir / "alice.wav", x, sr)
    sink = outputs if outputs is not None else []
    return LocalBackend(
        ScaledDryProcessor(),
        official,
        load_stream_config(),
        tasks,
        BridgeSettings(task),
        16000,
        16000,
        sink.append,
        voices=VoiceLibrary(voices_dir),
        reference=reference,
    )


def test_local_backend_applies_commands_and_refuses_bad_ones_without_change(official, tmp_path):
    async def body():
        b = _local(official, tmp_path)
        await b.start()
        try:
            await b.apply(SetMix(0.5))
            await b.apply(SetBypass(True))
            assert b.session.wet == 0.0 and b.settings.mix == 0.5 and b.settings.bypass
            await b.apply(SetBypass(False))
            assert b.session.wet == 0.5
            await b.apply(SetSteps(stage1=2))
            assert b.settings.stage1_steps == 2 and b.session.spec.settings.stage1.steps == 2
            before = b.settings
            with pytest.raises(CommandError, match="needs a voice"):
                await b.apply(SetTask("vc"))
            with pytest.raises(CommandError, match="no voice 'bob'"):
                await b.apply(SetVoice("bob"))
            assert b.settings == before and b.session.spec.task == "se"
            await b.apply(SetVoice("alice"))  # stored on an se stream, used by the switch
            await b.apply(SetTask("vc"))
            assert b.session.spec.task == "vc" and b.session.reference is b.reference
            assert b.settings.task == "vc" and b.settings.voice == "alice" and b.settings.mix == 0.5
            await b.apply(SetTask("se"))
            assert b.session.reference is None
        finally:
            await b.close()

    asyncio.run(asyncio.wait_for(body(), 60))


def test_local_backend_only_switches_to_loaded_tasks_and_streams_output(official, tmp_path):
    async def body():
        outputs: list[np.ndarray] = []
        b = _local(official, tmp_path, tasks=("se",), outputs=outputs)
        await b.start()
        try:
            with pytest.raises(CommandError, match="--tasks se,vc"):
                await b.apply(SetTask("vc"))
            t = np.arange(16000 * 2) / 16000  # well inside the resamplers' passband
            x = (0.1 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.sin(2 * np.pi * 1234 * t)).astype(np.float32)
            for i in range(0, len(x), 320):
                b.push(x[i : i + 320])
            for _ in range(200):
                if sum(map(len, outputs)) >= 16000:
                    break
                await asyncio.sleep(0.05)
            out = np.concatenate(outputs)
            n = len(out)
            np.testing.assert_allclose(out, GAIN * x[:n], atol=2e-3)  # the processed stream, in order
            assert b.stats()["hops"] > 0
        finally:
            await b.close()

    asyncio.run(asyncio.wait_for(body(), 60))


def test_local_backend_needs_a_loaded_task_and_a_voice(official, tmp_path):
    with pytest.raises(BackendError, match="not among the loaded tasks"):
        _local(official, tmp_path, task="vc", tasks=("se",))
    with pytest.raises(BackendError, match="needs a voice"):
        _local(official, tmp_path, task="vc")


def test_settings_state_is_json_ready():
    s = dataclasses.replace(BridgeSettings("se"), s2a_steps=(1,) * 12)
    assert s.as_state() == {
        "task": "se",
        "bypass": False,
        "mix": 1.0,
        "voice": None,
        "stage1_steps": None,
        "s2a_steps": [1] * 12,
        "engine": "auto",  # asked for; a backend replaces it with the engine that runs
        "strength": None,
    }


# ----------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rate", "100"], "--rate"),
        (["--mix", "2"], "--mix"),
        (["--task", "vc"], "needs --voice"),
        (["--mqtt", "http://x"], "scheme"),
        (["--mqtt", "mqtt://127.0.0.1", "--mqtt-node", "a/b"], "node name"),
        (["--prefill-ms", "2000"], "--prefill-ms"),
    ],
)
def test_bridge_usage_errors_are_clear(argv, message, capsys):
    assert bridge_main.main(argv) == bridge_main.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_default_node_is_one_topic_level():
    node = bridge_main.default_node()
    assert node.startswith("bridge-") and "/" not in node and "+" not in node and "#" not in node
