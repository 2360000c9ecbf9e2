"""The bridge end to end with real parts: a private PulseAudio daemon and a mosquitto broker on loopback.

A null sink ``fake_mic`` plays the part of the real microphone (the bridge captures ``fake_mic.monitor``); the
bridge creates the virtual microphone ``metis_vmic`` / ``metis_vmic_mic`` and plays into it; ``parec`` records
``metis_vmic_mic`` as a conferencing app would. The bridge runs as a subprocess (``tests/bridge_child.py``) with
``--local`` and a processor whose output is exactly ``GAIN`` times the input, so the recording tells the processed
share frame by frame: processed only = 0.5, mix 0.5 = 0.75, bypass = 1.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
import soundfile as sf

from .bridge_child import GAIN
from .conftest import EXAMPLES_DIR, REPO_DIR
from .realparts import Broker, PulseDaemon, free_port, null_sink, stop_process

NODE = "testbridge"
BASE = f"metis/{NODE}"
RATE = 16000  # what is played and recorded (the devices run at 48 kHz)
FRAME = RATE // 50  # 20 ms analysis frames
CHUNK_MS = 240  # configs/streaming.yaml: bypass and mix ramp over one chunk
STEP_S = 15.0  # bound on each wait
MAX_DRIFT_S = 0.4  # output delay changes tolerated by the analysis (underruns re-prefill 120 ms)
TAIL_S = 4.0  # recording goes on this long after the player ended (latency, buffers, a loaded machine)
TEST_S = 90.0


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    daemon = PulseDaemon(tmp_path_factory.mktemp("bridge_pulse"), [null_sink("fake_mic"), null_sink("headphones")])
    yield daemon
    daemon.stop()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def _speech(tmp_path: Path, long: bool = False) -> tuple[Path, np.ndarray]:
    """8.7 s: the noisy example, then the same backwards (not periodic, so the alignment is unambiguous); ``long``
    adds the example once more (13 s; its repeat is 8.7 s away, far beyond the drift the analysis searches)."""
    x, rate = sf.read(EXAMPLES_DIR / "speech_noisy.wav", dtype="float32")
    assert rate == RATE
    x = np.concatenate([x, x[::-1], x] if long else [x, x[::-1]])
    path = tmp_path / "input.wav"
    sf.write(path, x, RATE, subtype="FLOAT")
    return path, x


class LiveBridge:
    """The bridge subprocess, a recorder on the virtual microphone and a player into the fake microphone."""

    def __init__(
        self,
        pulse: PulseDaemon,
        broker: Broker,
        tmp_path: Path,
        local: bool = True,
        server: str = "",
        extra=(),
        program=("-m", "tests.bridge_child"),
        env=None,
    ):
        self.pulse, self.tmp = pulse, tmp_path
        self.log_path = tmp_path / "bridge.log"
        self.recorders: dict[str, tuple[subprocess.Popen, Path]] = {}
        args = ["--local"] if local else ["--server", server]
        args += list(extra)
        args += ["--input", "pulse:fake_mic.monitor", "--mqtt", broker.url, "--mqtt-node", NODE]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *program, *args, "--duration", str(TEST_S), "-v"],
                cwd=REPO_DIR,
                env={**pulse.env, "HF_HUB_OFFLINE": "1", **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_device(self, timeout_s: float = STEP_S) -> None:
        deadline = time.monotonic() + timeout_s
        while "metis_vmic_mic" not in self.pulse.pactl("list", "short", "sources").stdout:
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "no virtual microphone within the deadline\n" + self.log()
            await asyncio.sleep(0.1)

    async def record(self, source: str = "metis_vmic_mic") -> None:
        """Start recording a source (the virtual microphone, as an app would); returns once samples arrive."""
        path = self.tmp / f"{source}.raw"
        with path.open("wb") as out:
            recorder = subprocess.Popen(
                ["parec", "-d", source, f"--rate={RATE}", "--channels=1", "--format=float32le"]
                + ["--raw", "--latency-msec=20"],
                env=self.pulse.env,
                stdout=out,
            )
        self.recorders[source] = (recorder, path)
        deadline = time.monotonic() + STEP_S
        while path.stat().st_size < RATE // 10 * 4:  # 100 ms recorded (parec can be slow to start)
            assert recorder.poll() is None, "parec exited"
            assert time.monotonic() < deadline, "parec recorded nothing"
            await asyncio.sleep(0.05)

    def play(self, path: Path) -> subprocess.Popen:
        return subprocess.Popen(["paplay", "-d", "fake_mic", str(path)], env=self.pulse.env)

    def recorded(self, source: str = "metis_vmic_mic") -> np.ndarray:
        recorder, path = self.recorders.pop(source)
        stop_process(recorder, signal.SIGINT)
        return np.fromfile(path, dtype="<f4")

    def stop(self) -> int:
        stop_process(self.proc)
        return self.proc.returncode


async def _message(client: aiomqtt.Client, topic: str, timeout: float = STEP_S) -> dict | str:
    async def first():
        async for message in client.messages:
            if message.topic.value == topic:
                text = bytes(message.payload).decode()
                try:
                    return json.loads(text)
                except ValueError:
                    return text
        raise AssertionError("subscriber disconnected")

    return await asyncio.wait_for(first(), timeout)


async def _publish(client: aiomqtt.Client, setting: str, payload: str, scope: str = BASE) -> None:
    await client.publish(f"{scope}/set/{setting}", payload.encode(), qos=1)


async def _wait_until(proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "player did not finish"
        await asyncio.sleep(0.1)


# ----------------------------------------------------------------------------- analysis
def _frame_gains(recorded: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares gain of the recording against ``x`` per 20 ms frame, the relative residual, and which frames
    carry enough signal to say anything. Alignment is found per half second around the global lag (within
    ``MAX_DRIFT_S``); each frame then takes whichever of its own, the previous and the next half second's
    alignment fits it best. So a change of output delay on a loaded machine (an underrun re-prefills, the jitter
    buffer trims a standing delay) costs nothing at any point of a half second, while a gap or lost audio still
    leaves frames that no alignment explains."""
    assert len(recorded) > len(x), f"recording too short: {len(recorded)} < {len(x)} samples"
    n = 1 << int(np.ceil(np.log2(len(recorded) + len(x))))
    corr = np.fft.irfft(np.fft.rfft(recorded, n) * np.conj(np.fft.rfft(x, n)), n)
    lag0 = int(np.argmax(corr[: len(recorded) - len(x) + 1]))
    k = len(x) // FRAME
    segment, drift = RATE // 2, int(MAX_DRIFT_S * RATE)
    lags = []
    for start in range(0, k * FRAME, segment):
        piece = x[start : min(start + segment, k * FRAME)]
        first, last = max(0, lag0 - drift), min(len(recorded) - start - len(piece), lag0 + drift)
        window = recorded[start + first : start + last + len(piece)]
        lags.append(first + int(np.argmax(np.correlate(window, piece, mode="valid"))))
    xs = x[: k * FRAME].reshape(k, FRAME)
    os_ = np.zeros_like(xs)
    for f in range(k):
        i, a = f * FRAME // segment, f * FRAME
        candidates = [recorded[a + lag : a + lag + FRAME] for lag in dict.fromkeys(lags[max(0, i - 1) : i + 2])]
        candidates = [c for c in candidates if len(c) == FRAME]  # a neighbour's alignment may run past the end
        fit = [abs(np.dot(c, xs[f])) / max(float(np.linalg.norm(c)), 1e-9) for c in candidates]  # cosine, up to |x|
        os_[f] = candidates[int(np.argmax(fit))]
    energy = (xs**2).sum(axis=1)
    gains = (xs * os_).sum(axis=1) / np.maximum(energy, 1e-12)
    residual = np.sqrt(((os_ - gains[:, None] * xs) ** 2).sum(axis=1) / np.maximum(energy * gains**2, 1e-12))
    return gains, residual, energy > 0.05 * np.median(energy)


def _smoothed(gains: np.ndarray, valid: np.ndarray, width: int = 7) -> np.ndarray:
    """Running median of the valid frames' gains (``width`` frames = 140 ms, shorter than a ramp)."""
    g = np.where(valid, gains, np.nan)
    padded = np.pad(g, width // 2, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows (silence) stay NaN
        return np.nanmedian(windows, axis=1)


def _runs(levels: np.ndarray, valid: np.ndarray, target: float, tol: float = 0.05) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(valid & (np.abs(levels - target) < tol))


# ----------------------------------------------------------------------------- the tests
def test_bridge_processes_into_the_virtual_mic_and_mqtt_controls_mix_and_bypass(pulse, broker, tmp_path):
    path, x = _speech(tmp_path)

    async def body(bridge: LiveBridge):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-panel") as client:
            await client.subscribe(f"{BASE}/#", qos=1)
            await bridge.wait_for_device()
            assert await _message(client, f"{BASE}/status") == "online"
            state = await _message(client, f"{BASE}/state")
            assert state["task"] == "se" and state["mix"] == 1.0 and state["bypass"] is False
            await bridge.record()
            await bridge.record("headphones.monitor")
            await asyncio.sleep(0.5)
            player = bridge.play(path)
            await asyncio.sleep(1.0)
            for setting, payload, scope, reason in [
                ("mix", "2", BASE, "between 0 and 1"),
                ("bypass", "maybe", BASE, "true/false"),
                ("volume", "1", BASE, "unknown setting"),
                ("mix", "0.5", f"{BASE}/session/7", "bridge with one stream"),
            ]:
                await _publish(client, setting, payload, scope)
                error = await _message(client, f"{BASE}/error")
                assert reason in error["reason"] and error["payload"] == payload, error
            await asyncio.sleep(2.0)
            await _publish(client, "mix", "0.5")
            state = await _message(client, f"{BASE}/state")
            assert state["mix"] == 0.5 and state["bypass"] is False  # the bad payloads changed nothing before
            await asyncio.sleep(3.0)
            await _publish(client, "bypass", "true")
            assert (await _message(client, f"{BASE}/state"))["bypass"] is True
            stats = await _message(client, f"{BASE}/stats")
            assert stats["algorithmic_latency_ms"] > 0 and stats["captured_s"] > 0
            await _wait_until(player, 30)
            await asyncio.sleep(TAIL_S)
        return bridge.recorded(), bridge.recorded("headphones.monitor")

    bridge = LiveBridge(pulse, broker, tmp_path, extra=["--monitor", "pulse:headphones"])
    try:
        recorded, monitored = asyncio.run(asyncio.wait_for(body(bridge), TEST_S))
    finally:
        code = bridge.stop()
    log = bridge.log()
    assert code == 0 and "Traceback" not in log, log
    assert "metis_rt" not in pulse.pactl("list", "short", "modules").stdout  # devices removed on SIGTERM

    gains, residual, valid = _frame_gains(recorded, x)
    level = _smoothed(gains, valid)  # an isolated frame (an underrun's fade-in on a loaded machine) is no level
    wet, mixed, dry = (_runs(level, valid, target) for target in (GAIN, 0.5 * GAIN + 0.5, 1.0))
    # the three settings follow each other, each for seconds, in order
    assert len(wet) > 50 and len(mixed) > 50 and len(dry) > 50, (len(wet), len(mixed), len(dry))
    assert wet.max() < mixed.min() and mixed.max() < dry.min(), (wet, mixed, dry)
    # each switch is a ramp of one chunk: the frames between two levels span at most one chunk (+1 frame each side)
    limit = CHUNK_MS // 20 + 2
    assert mixed.min() - wet.max() <= limit and dry.min() - mixed.max() <= limit, (wet.max(), mixed, dry.min())
    # inside the ramps the output is still the gain-scaled input: no click, no gap, no stray samples
    steady = np.median(residual[valid])
    ramps = np.r_[wet.max() : mixed.min() + 1, mixed.max() : dry.min() + 1]
    ramps = ramps[valid[ramps]]
    assert residual[ramps].max() < max(4 * steady, 0.1), (residual[ramps], steady)
    assert np.all((gains[ramps] > GAIN - 0.05) & (gains[ramps] < 1.05)), gains[ramps]
    # the monitor (headphones) plays the same processed audio as the virtual microphone
    m_gains, _, m_valid = _frame_gains(monitored, x)
    m_level = _smoothed(m_gains, m_valid)
    for target, frames in ((GAIN, wet), (1.0, dry)):
        assert np.mean(np.abs(m_level[frames] - target) < 0.1) > 0.9, m_level[frames]


def test_broker_restart_keeps_audio_flowing_and_control_returns(pulse, broker, tmp_path):
    path, x = _speech(tmp_path, long=True)  # outage, reconnect and bypass take ~7 s of it on a loaded machine

    async def body(bridge: LiveBridge):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-panel") as client:
            await client.subscribe(f"{BASE}/#", qos=1)
            await bridge.wait_for_device()
            assert await _message(client, f"{BASE}/status") == "online"
            await bridge.record()
            await asyncio.sleep(0.5)
            player = bridge.play(path)
            await asyncio.sleep(1.5)
        broker.stop()  # the broker goes away with audio flowing
        await asyncio.sleep(2.0)
        broker.start()  # no persistence: only the bridge can restore its retained topics
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-panel-2") as client:
            await client.subscribe(f"{BASE}/#", qos=1)
            assert await _message(client, f"{BASE}/status") == "online"  # republished after the reconnect
            assert (await _message(client, f"{BASE}/state"))["bypass"] is False
            await asyncio.sleep(2.0)  # processed audio keeps coming after the reconnect too
            await _publish(client, "bypass", "on")
            assert (await _message(client, f"{BASE}/state"))["bypass"] is True
            await _wait_until(player, 30)
            await asyncio.sleep(TAIL_S)
        return bridge.recorded()

    bridge = LiveBridge(pulse, broker, tmp_path)
    try:
        recorded = asyncio.run(asyncio.wait_for(body(bridge), TEST_S))
    finally:
        code = bridge.stop()
    assert code == 0, bridge.log()
    gains, _, valid = _frame_gains(recorded, x)
    level = _smoothed(gains, valid)
    wet, dry = _runs(level, valid, GAIN), _runs(level, valid, 1.0)
    assert len(wet) > 150 and len(dry) > 10, (len(wet), len(dry))
    assert wet.max() < dry.min()
    # uninterrupted through the outage: before the bypass, the output is the processed input at one alignment (a
    # gap or lost audio would leave silent or misaligned frames, gain ~0, from there on); frame 0 is the fade-in.
    before = np.flatnonzero(valid)[np.flatnonzero(valid) < dry.min() - CHUNK_MS // 20 - 1]
    before = before[before >= 2]
    assert level[before].min() > 0.35, level[before]  # no gap of 80 ms or more, no lost alignment
    assert np.mean(np.abs(level[before] - GAIN) < 0.1) > 0.95, level[before]


def _owners(pulse: PulseDaemon) -> set[str]:
    modules = pulse.pactl("list", "short", "modules").stdout
    return {line.split("metis_rt.owner=")[1].split()[0] for line in modules.splitlines() if "owner=" in line}


def test_sigkill_leaves_modules_that_the_next_start_removes(pulse, broker, tmp_path):
    first = LiveBridge(pulse, broker, tmp_path)
    try:
        asyncio.run(asyncio.wait_for(first.wait_for_device(), STEP_S))
        first.proc.kill()
        first.proc.wait(STEP_S)
        assert _owners(pulse) == {str(first.proc.pid)}  # a crash leaves its modules behind
        (tmp_path / "again").mkdir()
        again = LiveBridge(pulse, broker, tmp_path / "again")
        try:
            deadline = time.monotonic() + STEP_S
            while _owners(pulse) != {str(again.proc.pid)}:  # the stale pair goes, a fresh pair comes
                assert again.proc.poll() is None, again.log()
                assert time.monotonic() < deadline, (_owners(pulse), again.proc.pid, again.log())
                time.sleep(0.1)
            assert again.log().count("unloading stale virtual-microphone module") == 2, again.log()
        finally:
            assert again.stop() == 0, again.log()
    finally:
        with contextlib.suppress(Exception):
            stop_process(first.proc)
    assert not _owners(pulse)


# ----------------------------------------------------------------------------- through a server
@pytest.fixture
def server(combined_model_dir, tmp_path):
    """``metis-rt serve`` on the tiny models (se only), as a subprocess; yields its WebSocket URL."""
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "run_server.py", "--model-dir", str(combined_model_dir), "--port", str(port)]
            + ["--tasks", "se", "--threads", "1", "--device", "cpu"],  # Metis on the CPU (auto: the CPU engine)
            cwd=REPO_DIR,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "server not ready\n" + log_path.read_text()
            url = f"http://127.0.0.1:{port}/healthz"
            with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=2) as response:
                if json.loads(response.read())["ready"]:
                    break
            time.sleep(0.2)
        yield f"ws://127.0.0.1:{port}"
    finally:
        stop_process(proc, signal.SIGINT)


def test_bridge_through_a_server_plays_and_relays_commands_and_refusals(pulse, broker, server, tmp_path):
    path, x = _speech(tmp_path)

    async def body(bridge: LiveBridge):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-panel") as client:
            await client.subscribe(f"{BASE}/#", qos=1)
            await bridge.wait_for_device()
            assert await _message(client, f"{BASE}/status") == "online"
            await bridge.record()
            player = bridge.play(path)
            await asyncio.sleep(1.0)
            await _publish(client, "task", "vc")  # the server runs se only: its refusal comes back as an error
            error = await _message(client, f"{BASE}/error")
            assert "task_unavailable" in error["reason"], error
            await asyncio.sleep(1.0)
            await _publish(client, "bypass", "true")  # accepted by the server (session.updated)
            state = await _message(client, f"{BASE}/state")
            assert state["bypass"] is True and state["task"] == "se", state
            assert isinstance(state["stage1_steps"], int) and len(state["s2a_steps"]) == 12, state  # not null
            await _wait_until(player, 30)
            await asyncio.sleep(TAIL_S)
        return bridge.recorded()

    bridge = LiveBridge(pulse, broker, tmp_path, local=False, server=server)
    try:
        recorded = asyncio.run(asyncio.wait_for(body(bridge), TEST_S))
    finally:
        code = bridge.stop()
    assert code == 0 and "Traceback" not in bridge.log(), bridge.log()
    gains, _, valid = _frame_gains(recorded, x)
    dry = _runs(_smoothed(gains, valid), valid, 1.0)
    # the last seconds, after the bypass, are the raw microphone through the server: the audio made the round trip
    assert len(dry) > 50 and dry.max() > 0.8 * len(gains), (len(dry), len(gains))


def test_unreachable_server_is_a_clear_error_and_leaves_no_device(pulse, tmp_path):
    port = free_port()  # nothing listens there
    proc = subprocess.run(
        [sys.executable, "-m", "metis_rt.cli", "bridge", "--server", f"ws://127.0.0.1:{port}"]
        + ["--input", "pulse:fake_mic.monitor", "--duration", "5"],
        cwd=REPO_DIR,
        env={**pulse.env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"cannot connect to ws://127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not _owners(pulse)  # the virtual microphone it created was removed again


# ----------------------------------------------------------------------------- the CPU engine, out of the box
START_S = 60.0  # the real CLI starting (imports, the DeepFilterNet3 state) on a loaded 2-core machine
MIN_OVRL_GAIN = 0.8  # DNSMOS OVRL of the virtual microphone over the noisy input
VAD_FRAME = 480  # 30 ms at 16 kHz (webrtcvad's longest frame)


def _aligned(recorded: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The part of ``recorded`` that lines up with ``reference`` (cross-correlation over the whole recording)."""
    assert len(recorded) > len(reference), f"recording too short: {len(recorded)} < {len(reference)} samples"
    n = 1 << int(np.ceil(np.log2(len(recorded) + len(reference))))
    corr = np.fft.irfft(np.fft.rfft(recorded, n) * np.conj(np.fft.rfft(reference, n)), n)
    lag = int(np.argmax(corr[: len(recorded) - len(reference) + 1]))
    return recorded[lag : lag + len(reference)]


def _speech_fraction(x: np.ndarray) -> float:
    import webrtcvad

    vad = webrtcvad.Vad(2)
    pcm16 = (np.clip(x, -1, 1) * 32767).astype("<i2")
    frames = [pcm16[i : i + VAD_FRAME].tobytes() for i in range(0, len(pcm16) - VAD_FRAME + 1, VAD_FRAME)]
    return float(np.mean([vad.is_speech(f, RATE) for f in frames]))


def test_bridge_out_of_the_box_denoises_with_deepfilternet3(pulse, broker, tmp_path):
    """``metis-rt bridge --local`` with no weights: the CPU engine runs (auto); noisy speech played into the
    fake microphone comes out of the virtual microphone much cleaner (DNSMOS) and still speech (level, VAD)."""
    from metis_rt.denoisers import open_denoiser
    from metis_rt.eval.metrics import dnsmos
    from metis_rt.streaming.frame_session import denoise

    x, rate = sf.read(EXAMPLES_DIR / "speech_noisy.wav", dtype="float32")
    assert rate == RATE
    x = np.concatenate([x, x[::-1]])
    path = tmp_path / "noisy.wav"
    sf.write(path, x, RATE, subtype="FLOAT")

    async def body(bridge: LiveBridge):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-panel") as client:
            await client.subscribe(f"{BASE}/#", qos=1)
            await bridge.wait_for_device(START_S)
            state = await _message(client, f"{BASE}/state")
            assert state["engine"] == "deepfilternet3" and state["task"] == "se", state
            await _publish(client, "strength", "150")  # out of range: an error, nothing changes
            assert "between 0 and 100" in (await _message(client, f"{BASE}/error"))["reason"]
            await bridge.record()
            await asyncio.sleep(0.5)
            player = bridge.play(path)
            await _wait_until(player, 30)
            await asyncio.sleep(TAIL_S)
        return bridge.recorded()

    bridge = LiveBridge(
        pulse,
        broker,
        tmp_path,
        local=True,  # (with neither --server nor --local the bridge looks at 127.0.0.1:8765 first: not here)
        program=("-m", "metis_rt", "bridge"),
        env={"METIS_RT_MODEL_DIR": str(tmp_path / "no-weights"), "PYTHONPATH": str(REPO_DIR)},
    )
    try:
        recorded = asyncio.run(asyncio.wait_for(body(bridge), TEST_S))
    finally:
        code = bridge.stop()
    log = bridge.log()
    assert code == 0 and "Traceback" not in log, log
    assert "engine: deepfilternet3" in log, log

    out = _aligned(recorded, denoise(open_denoiser("deepfilternet3"), x, RATE))
    noisy_ovrl, out_ovrl = dnsmos(x)["dnsmos_ovrl"], dnsmos(out)["dnsmos_ovrl"]
    assert out_ovrl >= noisy_ovrl + MIN_OVRL_GAIN, (noisy_ovrl, out_ovrl)
    level_db = 10 * np.log10(np.mean(out**2) / np.mean(x**2))
    assert level_db > -12, level_db  # speech kept its level (the noise went)
    assert _speech_fraction(out) >= 0.5 * _speech_fraction(x), (_speech_fraction(out), _speech_fraction(x))
    assert _speech_fraction(out) > 0.3
