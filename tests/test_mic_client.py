"""The microphone and file clients.

Pure parts (jitter buffer, device and rate choice, keys, wire helpers, latency bookkeeping) are tested directly.
End to end: a real PulseAudio daemon (started here, private runtime dir) with two null sinks exposed to ALSA as
``vmic`` (mic_sink.monitor) and ``vspk`` (spk_sink); the server runs as a subprocess on the tiny models; the mic
client runs as a subprocess with a pseudo-terminal as stdin (keys); ``paplay`` feeds the virtual microphone and
``parec`` records the virtual speaker.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed

from metis_rt.clients import devices as dev
from metis_rt.clients import mic, wire
from metis_rt.clients.file import FileStreamOptions, LatencyTracker, stream_file
from metis_rt.clients.jitter import JitterBuffer
from metis_rt.clients.mic import key_command

from .conftest import EXAMPLES_DIR, REPO_DIR
from .realparts import PulseDaemon, null_sink, stop_process

SPEECH = EXAMPLES_DIR / "speech_noisy.wav"
CONTROL = EXAMPLES_DIR / "reference.wav"  # played in bypass: a different signal, so no time alignment is needed
SERVER_START_TIMEOUT_S = 120
CLIENT_READY_TIMEOUT_S = 30
EXIT_TIMEOUT_S = 20
SETTLE_S = 2.5  # after playing: server latency (~0.6 s) + jitter buffer + margin for a loaded machine
RECORD_RATE = 16000
ASOUNDRC = """\
pcm.vmic { type pulse; device "mic_sink.monitor"; hint { show on; description "virtual microphone" } }
pcm.vspk { type pulse; device "spk_sink"; hint { show on; description "virtual speaker" } }
pcm.vmon { type pulse; device "mon_sink"; hint { show on; description "virtual monitor speaker" } }
"""


# ----------------------------------------------------------------------------- jitter buffer
def test_jitter_buffer_plays_once_prefilled_and_waited():
    jb = JitterBuffer(capacity_samples=100, prefill_samples=30)
    assert not jb.read(10).any() and jb.underruns == 0  # nothing yet: silence, not an underrun
    jb.write(np.ones(20, dtype=np.float32))
    assert not jb.read(10).any() and not jb.read(10).any()  # 20 < 30 buffered
    jb.write(np.ones(10, dtype=np.float32))
    assert not jb.read(10).any() and jb.priming  # 30 buffered, but the first sample has waited only 20
    assert (jb.read(10) == 1).all() and not jb.priming
    assert jb.depth_samples == 20 and jb.underruns == 0


def test_jitter_buffer_keeps_a_prefill_margin_with_bursty_arrivals():
    jb = JitterBuffer(capacity_samples=1000, prefill_samples=120)
    heard = []
    for _ in range(4):  # bursts of 240 every 240 samples, read in blocks of 20
        jb.write(np.ones(240, dtype=np.float32))
        heard += [jb.read(20) for _ in range(12)]
        assert jb.depth_samples == 120  # the margin left when the next burst arrives
    assert np.concatenate(heard)[:120].sum() == 0 and np.concatenate(heard)[120:].all()
    assert jb.underruns == 0


def test_jitter_buffer_counts_underruns_and_prefills_again():
    jb = JitterBuffer(capacity_samples=100, prefill_samples=10)
    jb.write(np.arange(1, 13, dtype=np.float32))
    assert not jb.read(10).any()  # waiting for the prefill
    out = jb.read(16)
    np.testing.assert_array_equal(out[:12], np.arange(1, 13))
    assert not out[12:].any() and jb.underruns == 1 and jb.priming
    jb.write(np.ones(10, dtype=np.float32))
    assert not jb.read(10).any() and jb.underruns == 1  # prefilling again: silence, no new underrun
    assert (jb.read(10) == 1).all() and jb.underruns == 1


def test_jitter_buffer_overrun_drops_oldest_and_stays_bounded():
    jb = JitterBuffer(capacity_samples=50, prefill_samples=0)
    for start in range(0, 200, 30):
        jb.write(np.arange(start, start + 30, dtype=np.float32))
        assert jb.depth_samples <= 50
    assert jb.depth_samples == 50 and jb.overruns == 6 and jb.dropped_samples == 210 - 50
    np.testing.assert_array_equal(jb.read(50), np.arange(160, 210))  # the newest audio survives
    assert jb.write(np.zeros(80, dtype=np.float32)) == 30  # one write larger than the ring keeps its tail


def test_jitter_buffer_keeps_order_across_wraparound():
    rng = np.random.default_rng(0)
    signal_in = rng.standard_normal(5000).astype(np.float32)
    jb = JitterBuffer(capacity_samples=97, prefill_samples=20)
    played, pos = [], 0
    while pos < len(signal_in) or jb.depth_samples:
        n = int(rng.integers(1, 40))
        if pos < len(signal_in) and jb.depth_samples + n <= jb.capacity_samples:
            jb.write(signal_in[pos : pos + n])
            pos += n
        if jb.depth_samples >= 20 or pos >= len(signal_in):
            take = min(int(rng.integers(1, 30)), jb.depth_samples)
            out = np.empty(take, dtype=np.float32)
            played.append(out[: jb.read_into(out)])
    np.testing.assert_array_equal(np.concatenate(played), signal_in)
    assert jb.overruns == 0


def _steady_after_a_burst(jb: JitterBuffer, rate: int, burst_s: float, seconds: float, block: int):
    """A slow ramp (so any cut shows as a step): a start-up burst of ``burst_s``, then writer and reader at the same
    rate, ``block`` samples each."""
    total = int(rate * (burst_s + seconds + 1))
    ramp = (np.arange(total) / total).astype(np.float32)
    pos = int(rate * burst_s)
    jb.write(ramp[:pos])
    out, depths = [], []
    for _ in range(int(rate * seconds) // block):
        jb.write(ramp[pos : pos + block])
        pos += block
        buf = np.empty(block, np.float32)
        out.append(buf[: jb.read_into(buf)])
        depths.append(jb.depth_samples)
    return np.concatenate(out), depths, pos


def test_standing_delay_from_a_burst_is_cut_back_to_the_prefill_margin_without_a_click():
    rate, block = 48000, 480
    jb = JitterBuffer.from_ms(rate, capacity_ms=1000, prefill_ms=60, trim_window_ms=500)
    out, depths, written = _steady_after_a_burst(jb, rate, burst_s=0.8, seconds=3.0, block=block)
    assert depths[10] > 0.7 * rate  # the burst stood in the buffer at first ...
    assert max(depths[-50:]) <= jb.prefill_samples + block  # ... and was cut back to the margin
    assert jb.trims >= 1 and jb.underruns == 0
    assert jb.played_samples + jb.trimmed_samples + jb.dropped_samples + jb.depth_samples == written
    # the ramp rises 4e-6 a sample; a bare cut of ~0.7 s would step by ~0.15, the crossfade spreads it out
    assert np.max(np.abs(np.diff(out))) < 0.002


def test_without_a_trim_window_the_standing_delay_stays():
    rate, block = 48000, 480
    jb = JitterBuffer.from_ms(rate, capacity_ms=1000, prefill_ms=60, trim_window_ms=None)
    _, depths, _ = _steady_after_a_burst(jb, rate, burst_s=0.8, seconds=3.0, block=block)
    assert min(depths[-50:]) > 0.7 * rate and jb.trims == 0


def test_jitter_buffer_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="prefill"):
        JitterBuffer(capacity_samples=10, prefill_samples=11)
    with pytest.raises(ValueError, match="capacity"):
        JitterBuffer(capacity_samples=0, prefill_samples=0)
    assert JitterBuffer.from_ms(48000, 1000, 120).prefill_samples == 5760


# ----------------------------------------------------------------------------- devices, keys, wire, latency
DEVICES = [
    {"name": "pulse", "max_input_channels": 32, "max_output_channels": 32, "default_samplerate": 44100.0},
    {"name": "USB Mic", "max_input_channels": 1, "max_output_channels": 0, "default_samplerate": 96000.0},
    {"name": "USB Mic 2", "max_input_channels": 1, "max_output_channels": 0, "default_samplerate": 16000.0},
    {"name": "Speakers", "max_input_channels": 0, "max_output_channels": 2, "default_samplerate": 0.0},
]


def test_find_device_by_default_index_and_name():
    assert dev.find_device(DEVICES, None, "input", 1) == 1
    assert dev.find_device(DEVICES, "3", "output", -1) == 3
    assert dev.find_device(DEVICES, "speak", "output", -1) == 3
    assert dev.find_device(DEVICES, "usb mic", "input", -1) == 1  # an exact name beats substrings
    with pytest.raises(dev.AudioDeviceError, match="matches several"):
        dev.find_device(DEVICES, "USB", "input", -1)
    with pytest.raises(dev.AudioDeviceError, match="no input device name contains"):
        dev.find_device(DEVICES, "speakers", "input", -1)
    with pytest.raises(dev.AudioDeviceError, match="no input device with that index"):
        dev.find_device(DEVICES, "3", "input", -1)
    with pytest.raises(dev.AudioDeviceError, match="no default output device"):
        dev.find_device(DEVICES, None, "output", -1)


def test_choose_rate_prefers_the_option_then_the_device_then_48k():
    assert dev.choose_rate(16000, DEVICES[0]) == 16000
    assert dev.choose_rate(None, DEVICES[0]) == 44100
    assert dev.choose_rate(None, DEVICES[1]) == dev.FALLBACK_RATE_HZ  # 96 kHz: beyond the protocol
    assert dev.choose_rate(None, DEVICES[3]) == dev.FALLBACK_RATE_HZ  # no default rate
    assert "USB Mic 2" in dev.describe(DEVICES, (1, 3)) and "no audio devices" in dev.describe([], (-1, -1))


def test_missing_portaudio_is_one_clear_message_and_exit_2(tmp_path):
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")  # as sounddevice does
    proc = subprocess.run(
        [sys.executable, "clients/mic_client.py", "--list-devices"],
        cwd=REPO_DIR,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "mic_client: error: no audio: the PortAudio library is not available (PortAudio library not found); "
        "install it (Debian/Ubuntu: apt-get install libportaudio2, macOS: brew install portaudio)"
    )


def test_key_commands():
    assert key_command("b", False, 1.0) == ("update", {"bypass": True})
    assert key_command("m", False, 1.0) == ("update", {"mix": 0.9})
    assert key_command("M", False, 1.0) == ("update", {"mix": 1.0})
    assert key_command("m", False, 0.05) == ("update", {"mix": 0.0})
    assert key_command("q", False, 1.0) == ("quit", {})
    assert key_command("x", False, 1.0) == ("none", {})


def test_wire_messages_and_output_frames():
    from metis_rt.server import protocol as proto

    start = wire.start_message("vc", 44100, "pcm_s16le", 48000, reference=b"RIFF....", options={"mix": 0.5})
    parsed = proto.parse_client_message(start)  # the server's own parser accepts it
    assert (parsed.task, parsed.sample_rate, parsed.output_sample_rate) == ("vc", 44100, 48000)
    assert parsed.reference == b"RIFF...." and parsed.options.mix == 0.5
    assert proto.parse_client_message(wire.update_message(bypass=True)).options == {"bypass": True}
    x = np.linspace(-1, 1, 48001, dtype=np.float32)  # longer than 1 s: output frames have no length limit
    np.testing.assert_array_equal(wire.decode_audio(wire.encode_audio(x, "f32le"), "f32le"), x)
    np.testing.assert_allclose(wire.decode_audio(wire.encode_audio(x, "pcm_s16le"), "pcm_s16le"), x, atol=1 / 32768)
    assert wire.parse_event("not json")["type"] == "invalid"
    assert wire.stream_url("ws://h:1/") == "ws://h:1/v1/stream" == wire.stream_url("ws://h:1/v1/stream")
    assert wire.stream_url("wss://h/v1/stream?token=T") == "wss://h/v1/stream?token=T"


def test_latency_tracker_maps_packets_by_sample_count():
    tracker = LatencyTracker(input_rate=16000, output_rate=48000)
    for i in range(3):
        tracker.sent(i * 320, at_s=i * 0.02)  # 20 ms packets
    tracker.received(960, at_s=0.5)  # output samples [0, 960) = input [0, 320): the first packet only
    assert tracker.latencies_ms == pytest.approx([500.0])
    tracker.received(2881, at_s=0.7)  # sample 1920 (the third packet's first) has arrived
    assert tracker.latencies_ms == pytest.approx([500.0, 680.0, 660.0])


class FakeConnection:
    """Just enough of a websockets connection for the handshake."""

    def __init__(self, *replies):
        self.replies, self.sent = list(replies), []
        self.close_code, self.close_reason = 1013, "server busy"

    async def send(self, message):
        self.sent.append(message)

    async def recv(self):
        if not self.replies:
            raise ConnectionClosed(None, None)
        return self.replies.pop(0)


def test_handshake_turns_busy_and_error_events_into_clear_errors():
    start = wire.start_message("se", 16000, "f32le", 16000)
    ready = {"type": "session.ready", "session_id": "7", "sample_rate": 16000, "output_sample_rate": 16000}
    ready |= {"format": "f32le", "algorithmic_latency_ms": 415.0, "chunk_ms": 240, "protocol": 1}
    conn = FakeConnection('{"type":"warning","code":"x","message":"y"}', json.dumps(ready))
    assert asyncio.run(wire.handshake(conn, start)).chunk_ms == 240 and conn.sent == [start]
    with pytest.raises(wire.ServerBusy, match="server busy: all session slots are taken; retry in 5 s"):
        asyncio.run(wire.handshake(FakeConnection('{"type":"busy","retry_after_s":5.0}'), start))
    error = '{"type":"error","code":"reference_required","message":"task \'vc\' needs a voice"}'
    with pytest.raises(wire.ServerRejected, match="server error reference_required: task 'vc' needs a voice"):
        asyncio.run(wire.handshake(FakeConnection(error), start))
    with pytest.raises(
        wire.ClientError, match=r"closed the connection before session.ready: code 1013 \(server busy\)"
    ):
        asyncio.run(wire.handshake(FakeConnection(), start))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "tse"], "--task tse needs --voice NAME or --reference FILE"),
        (["--voice", "anna"], "--task se takes no --voice or --reference"),
        (["--task", "vc", "--reference", "/no/such.wav"], "cannot read --reference /no/such.wav"),
        (["--rate", "96000"], "--rate must be in [8000, 48000] Hz, got 96000"),
    ],
)
def test_mic_usage_errors_are_caught_before_any_device_opens(argv, message):
    with pytest.raises(dev.AudioDeviceError) as caught:
        mic.check_args(mic.build_parser().parse_args(argv))
    assert message in str(caught.value)


# ----------------------------------------------------------------------------- live fixtures
class LineReader:
    """Collects a pipe's lines on a thread; ``wait_for`` blocks until a line matches (bounded)."""

    def __init__(self, pipe):
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for raw in iter(pipe.readline, b""):
            self._queue.put(raw.decode(errors="replace").rstrip())
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if found := re.search(pattern, line):
                return found
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if found := re.search(pattern, line):
                return found
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got:\n" + "\n".join(self.lines))

    def text(self, timeout: float = 5.0) -> str:
        self._thread.join(timeout)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def server_url(combined_model_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "run_server.py", "--model-dir", str(combined_model_dir), "--port", "0"]
            + ["--tasks", "se", "--deterministic"],
            cwd=REPO_DIR,
            stdout=subprocess.PIPE,
            stderr=log_file,
            # one intra-op thread: on a busy 2-core machine two OpenMP threads per process oversubscribe the
            # cores and a 0.1 s hop can take seconds (the server then drops input)
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        )
        try:
            port = LineReader(proc.stdout).wait_for(r"ready on port (\d+)", SERVER_START_TIMEOUT_S).group(1)
            yield f"ws://127.0.0.1:{port}"
        finally:
            stop_process(proc, signal.SIGINT, timeout_s=15)
    assert proc.returncode == 0, log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def pulse_env(tmp_path_factory):
    """A private PulseAudio daemon with mic_sink, spk_sink and mon_sink; returns the environment that reaches it."""
    try:
        dev.load_sounddevice()
    except dev.AudioDeviceError as exc:
        pytest.fail(f"{exc} (apt-get install libportaudio2)")
    sinks = [null_sink(name, rate=16000) for name in ("mic_sink", "spk_sink", "mon_sink")]
    daemon = PulseDaemon(tmp_path_factory.mktemp("pulse"), ["module-always-sink", *sinks], asoundrc=ASOUNDRC)
    yield daemon.env
    daemon.stop()


def _mic_client(env, *args, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "clients/mic_client.py", *args],
        cwd=REPO_DIR,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _best_match(excerpts: list[tuple[int, np.ndarray]], haystack: np.ndarray) -> tuple[float, int]:
    """Highest normalised cross-correlation of any (offset, excerpt) against ``haystack``, and where the excerpted
    signal would start in ``haystack`` (match position minus the excerpt's offset)."""
    best, start = 0.0, 0
    energy = np.concatenate([[0.0], np.cumsum(haystack.astype(np.float64) ** 2)])
    for offset, needle in excerpts:
        size = len(needle)
        n = 1 << int(np.ceil(np.log2(len(haystack) + size)))
        corr = np.fft.irfft(np.fft.rfft(haystack, n) * np.conj(np.fft.rfft(needle, n)), n)[: len(haystack) - size + 1]
        norm = np.sqrt(np.maximum(energy[size:] - energy[:-size], 1e-12)) * np.linalg.norm(needle)
        score = corr / norm
        peak = int(np.argmax(score))
        if score[peak] > best:
            best, start = float(score[peak]), peak - offset
    return best, start


def _loudest_excerpts(x: np.ndarray, rate: int, count: int = 8, seconds: float = 0.25) -> list[tuple[int, np.ndarray]]:
    """Short (offset, piece) pairs, so that some survive whole even if the server drops input or the speaker
    underruns."""
    size = int(rate * seconds)
    starts = sorted(range(0, len(x) - size, size), key=lambda i: -float(np.sum(x[i : i + size] ** 2)))[:count]
    return [(i, x[i : i + size]) for i in starts]


# ----------------------------------------------------------------------------- live tests
def test_list_devices_shows_the_virtual_devices(pulse_env):
    proc = subprocess.run(
        [sys.executable, "clients/mic_client.py", "--list-devices"],
        cwd=REPO_DIR,
        env=pulse_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[-1] for line in proc.stdout.splitlines()[1:]]
    assert {"vmic", "vspk"} <= set(names), proc.stdout


def test_unknown_device_and_no_device_exit_2(pulse_env, tmp_path):
    proc = subprocess.run(
        [sys.executable, "clients/mic_client.py", "--input", "no-such-mic"],
        cwd=REPO_DIR,
        env=pulse_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--input 'no-such-mic': no input device name contains it; see --list-devices" in proc.stderr
    nothing = {**pulse_env, "HOME": str(tmp_path), "PULSE_SERVER": f"unix:{tmp_path}/none"}  # no server, no .asoundrc
    proc = subprocess.run(
        [sys.executable, "clients/mic_client.py"], cwd=REPO_DIR, env=nothing, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "mic_client: error: no audio devices found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one clear message, no traceback


def test_mic_client_processes_the_microphone_and_quits_on_q(pulse_env, server_url, tmp_path):
    """Speech through the model, then (key b) a different recording in bypass as the positive control: the
    bypassed signal is found intact in the speaker recording, the processed speech is not."""
    recording = tmp_path / "speaker.raw"
    with open(recording, "wb") as rec_file:
        parec = subprocess.Popen(
            ["parec", "-d", "spk_sink.monitor", f"--rate={RECORD_RATE}", "--channels=1", "--format=float32le"]
            + ["--raw", "--latency-msec=20"],
            env=pulse_env,
            stdout=rec_file,
        )
    master, slave = pty.openpty()
    args = ["--server", server_url, "--input", "vmic", "--output", "vspk", "--task", "se", "-vv"]
    client = _mic_client(pulse_env, *args, stdin=slave)
    os.close(slave)
    out = LineReader(client.stdout)
    try:
        out.wait_for(r"^session [0-9a-f]+: se at \d+ -> \d+ Hz", CLIENT_READY_TIMEOUT_S)
        out.wait_for(r"keys: b bypass", 1)  # stdin is a terminal: keys are live
        subprocess.run(["paplay", "-d", "mic_sink", str(SPEECH)], env=pulse_env, check=True, timeout=30)
        time.sleep(SETTLE_S)  # let the processed tail reach the speaker
        os.write(master, b"b")
        out.wait_for(r"server applied: bypass on", 10)
        subprocess.run(["paplay", "-d", "mic_sink", str(CONTROL)], env=pulse_env, check=True, timeout=30)
        time.sleep(SETTLE_S)
        os.write(master, b"q")
        assert client.wait(EXIT_TIMEOUT_S) == 0, out.text()
    finally:
        stop_process(client)
        stop_process(parec)
        os.close(master)
    log = out.text()
    assert re.search(r"session ended: sent [1-9][\d.]* s, received [1-9][\d.]* s", log), log
    assert "Traceback" not in log, log

    heard = np.fromfile(recording, dtype="<f4")
    speech, rate = sf.read(SPEECH, dtype="float32")
    control, control_rate = sf.read(CONTROL, dtype="float32")
    assert rate == control_rate == RECORD_RATE and np.isfinite(heard).all()
    control_match, control_start = _best_match(_loudest_excerpts(control, rate), heard)
    processed = heard[: max(0, control_start)]  # everything before the bypassed control came through the model
    speech_match, _ = _best_match(_loudest_excerpts(speech, rate, seconds=0.5), processed)
    detail = f"control {control_match:.2f} from {control_start / rate:.2f} s, speech {speech_match:.2f}\n{log}"
    assert control_match > 0.8, detail  # the chain carries an unprocessed signal intact...
    assert len(processed) > len(speech) and np.sqrt(np.mean(processed**2)) > 1e-3, detail  # ...the model's output
    assert speech_match < 0.5, detail  # is not silence, and the speech did not come out as it went in


def test_mic_client_with_a_monitor_exits_cleanly_on_sigterm(pulse_env, server_url):
    args = ["--server", server_url, "--input", "vmic", "--output", "vspk", "--monitor", "vmon", "--format", "pcm_s16le"]
    client = _mic_client(pulse_env, *args)
    out = LineReader(client.stdout)
    try:
        out.wait_for(r"^session [0-9a-f]+: se", CLIENT_READY_TIMEOUT_S)
        client.send_signal(signal.SIGTERM)
        assert client.wait(EXIT_TIMEOUT_S) == 0, out.text()
    finally:
        stop_process(client, signal.SIGKILL)
    assert "session ended" in out.text()


def test_mic_client_reports_an_unreachable_server(pulse_env):
    proc = subprocess.run(
        [
            sys.executable,
            "clients/mic_client.py",
            "--server",
            "ws://127.0.0.1:9",
            "--input",
            "vmic",
            "--output",
            "vspk",
        ],
        cwd=REPO_DIR,
        env=pulse_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "cannot connect to ws://127.0.0.1:9/v1/stream" in proc.stderr and "is the server running" in proc.stderr


# ----------------------------------------------------------------------------- file client
def test_stream_file_returns_output_as_long_as_the_input(server_url):
    x, rate = sf.read(SPEECH, dtype="float32")
    opts = FileStreamOptions(task="se", output_rate=24000, packet_ms=30, fmt="pcm_s16le")
    out, report = asyncio.run(stream_file(server_url, x, sample_rate=rate, options=opts))
    assert len(out) == (len(x) * 24000 + rate // 2) // rate == report["output_samples"]  # rounded half up
    assert np.isfinite(out).all() and np.abs(out).max() > 1e-3
    assert (report["server_stats"] or {}).get("dropped_ms", 0) == 0  # flow control: the server never fell behind
    assert len(report["latency_ms"]) == report["packets"] == -(-len(x) // int(rate * 0.03))
    assert report["latency_ms_p50"] > 0 and report["latency_ms_p99"] >= report["latency_ms_p50"]


def test_stream_file_reports_a_task_the_server_does_not_run(server_url):
    opts = FileStreamOptions(task="tse", reference=CONTROL.read_bytes())
    with pytest.raises(wire.ServerRejected, match="server error task_unavailable: this server runs se; not 'tse'"):
        asyncio.run(stream_file(server_url, SPEECH, options=opts))


def test_file_client_writes_the_output_and_a_report(server_url, tmp_path):
    proc = subprocess.run(
        [sys.executable, "clients/file_client.py", str(SPEECH), "-o", str(tmp_path / "out.wav")]
        + ["--server", server_url, "--rate", "24000", "--json", str(tmp_path / "report.json")],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "latency per packet" in proc.stdout and "server: rtf" in proc.stdout
    out, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    report = json.loads((tmp_path / "report.json").read_text())
    assert rate == 24000 and len(out) == report["input_samples"] == report["output_samples"]


def test_engine_and_strength_reach_session_start_and_bad_values_are_usage_errors():
    import json

    from metis_rt.clients import wire
    from metis_rt.clients.mic import MicConfig, build_parser, check_args, start_options

    cfg = MicConfig(url="ws://x", engine="deepfilternet3", strength=12.0)
    start = json.loads(wire.start_message("se", 48000, "f32le", 48000, options=start_options(cfg), engine=cfg.engine))
    assert start["engine"] == "deepfilternet3" and start["options"] == {"strength": 12.0}
    assert "engine" not in json.loads(wire.start_message("se", 48000, "f32le", 48000, engine="auto"))
    for argv, message in [
        (["--strength", "101"], "--strength must be in"),
        (["--strength", "-1"], "--strength must be in"),
        (["--engine", "rnnoise", "--task", "vc", "--voice", "a"], "only denoises"),
    ]:
        with pytest.raises(dev.AudioDeviceError, match=message):
            check_args(build_parser().parse_args(argv))
