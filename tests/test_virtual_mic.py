"""The Linux virtual microphone: pure argument building and parsing, then real modules on a private PulseAudio."""

import selectors
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from metis_rt.bridge import VirtualMic, VirtualMicError, cleanup_stale
from metis_rt.bridge import virtual_mic as vm

from .conftest import REPO_DIR
from .realparts import PulseDaemon, stop_process

OWNER = vm.Owner(pid=4242, start_ticks=987654, host="box-1")
RATE_HZ = 16000
TONE_HZ = 440.0
READY_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 10.0

SHORT_MODULES = (
    "0\tmodule-native-protocol-unix\t\t\n"
    "6\tmodule-null-sink\tsink_name=metis_vmic sink_properties='device.description=\"Metis Virtual Microphone"
    " (bridge output)\" metis_rt.owner=4242 metis_rt.host=box-1 metis_rt.owner_start=987654'\t\n"
    "7\tmodule-remap-source\tmaster=metis_vmic.monitor source_name=metis_vmic_mic source_properties="
    '\'device.description="Metis Virtual Microphone" metis_rt.owner=4242 metis_rt.host=box-1'
    " metis_rt.owner_start=987654'\t\n"
    "8\tmodule-null-sink\tsink_name=someone_elses sink_properties='device.description=\"Theirs\"'\t\n"
    '9\tmodule-null-sink\tsink_name=other_host sink_properties=\'device.description="M" metis_rt.owner=1'
    " metis_rt.host=box-2'\t\n"
)


# ----------------------------------------------------------------------------- pure
def test_null_sink_args_quote_properties_for_pactl():
    args = vm.null_sink_args("metis_vmic", "Metis Virtual Microphone", OWNER, rate_hz=48000, channels=2)
    assert args == [
        "module-null-sink",
        "sink_name=metis_vmic",
        "rate=48000",
        "channels=2",
        'sink_properties=\'device.description="Metis Virtual Microphone" metis_rt.owner=4242 metis_rt.host=box-1'
        " metis_rt.owner_start=987654'",
    ]


def test_remap_source_args_point_at_the_monitor():
    args = vm.remap_source_args("metis_vmic", "metis_vmic_mic", "Metis Virtual Microphone", OWNER)
    assert args[:3] == ["module-remap-source", "master=metis_vmic.monitor", "source_name=metis_vmic_mic"]
    assert args[3].startswith('source_properties=\'device.description="Metis Virtual Microphone" ')
    assert vm.parse_owner(args[3]) == OWNER


@pytest.mark.parametrize("name", ["", "has space", "quote'", "semi;colon"])
def test_unsafe_names_are_rejected(name):
    with pytest.raises(VirtualMicError, match="must be letters, digits"):
        vm.null_sink_args(name, "Mic", OWNER)


@pytest.mark.parametrize("description", ["", 'say "hi"', "it's", "back\\slash"])
def test_unsafe_descriptions_are_rejected(description):
    with pytest.raises(VirtualMicError, match="without quotes"):
        vm.null_sink_args("metis_vmic", description, OWNER)


def test_parse_short_modules():
    entries = vm.parse_short_modules(SHORT_MODULES + "garbage line\n\n")
    assert [(e.index, e.name) for e in entries] == [
        (0, "module-native-protocol-unix"),
        (6, "module-null-sink"),
        (7, "module-remap-source"),
        (8, "module-null-sink"),
        (9, "module-null-sink"),
    ]
    assert entries[0].argument == ""
    assert vm.parse_owner(entries[1].argument) == OWNER
    assert vm.parse_owner(entries[3].argument) is None  # not ours


def test_stale_modules_only_ours_on_this_host_with_dead_owner_source_first():
    entries = vm.parse_short_modules(SHORT_MODULES)
    stale = vm.stale_modules(entries, "box-1", is_alive=lambda owner: False)
    assert [e.index for e in stale] == [7, 6]
    assert vm.stale_modules(entries, "box-1", is_alive=lambda owner: True) == []
    assert [e.index for e in vm.stale_modules(entries, "box-2", is_alive=lambda owner: False)] == [9]


def test_owner_alive_detects_pid_reuse():
    me = vm.current_owner()
    assert vm.owner_alive(me)
    assert not vm.owner_alive(vm.Owner(me.pid, me.start_ticks + 1, me.host))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(EXIT_TIMEOUT_S)
    assert not vm.owner_alive(vm.Owner(child.pid, None, me.host))


def test_missing_pactl_and_unreachable_server_are_clear(monkeypatch, tmp_path):
    monkeypatch.setattr(vm.shutil, "which", lambda _name: None)
    with pytest.raises(VirtualMicError, match="pactl not found.*pulseaudio-utils"):
        VirtualMic(state_dir=tmp_path).create()
    monkeypatch.undo()
    if shutil.which("pactl") is None:
        pytest.fail("pactl not installed (apt-get install pulseaudio-utils)")
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/none")
    with pytest.raises(VirtualMicError, match="no PulseAudio/PipeWire server reachable.*pulseaudio --start"):
        VirtualMic(state_dir=tmp_path).create()


# ----------------------------------------------------------------------------- a private PulseAudio
@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """A private PulseAudio daemon; the test process's environment points at it while the module's tests run."""
    daemon = PulseDaemon(tmp_path_factory.mktemp("vmic_pulse"), ["module-null-sink sink_name=base_sink"])
    try:
        with daemon.applied() as env:
            yield env
    finally:
        daemon.stop()


def _short(kind: str) -> list[list[str]]:
    out = subprocess.run(["pactl", "list", "short", kind], capture_output=True, text=True, timeout=5, check=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def _module_indices() -> set[int]:
    return {int(fields[0]) for fields in _short("modules")}


def _source_descriptions() -> dict[str, str]:
    out = subprocess.run(["pactl", "list", "sources"], capture_output=True, text=True, timeout=5, check=True)
    names = [line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.strip().startswith("Name:")]
    descs = [line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if "Description:" in line]
    return dict(zip(names, descs, strict=True))


def test_create_lists_the_source_and_remove_unloads_both(pulse, tmp_path):
    before = _module_indices()
    with VirtualMic("vmic_a", state_dir=tmp_path) as mic:
        assert len(mic.module_indices) == 2 and set(mic.module_indices) <= _module_indices()
        assert "vmic_a_mic" in [fields[1] for fields in _short("sources")]
        assert _source_descriptions()["vmic_a_mic"] == "Metis Virtual Microphone"
        assert "vmic_a" in [fields[1] for fields in _short("sinks")]
        assert (tmp_path / "vmic-vmic_a.json").is_file()
        with pytest.raises(VirtualMicError, match="already exists"):
            VirtualMic("vmic_a", state_dir=tmp_path).create()
    assert _module_indices() == before
    assert not (tmp_path / "vmic-vmic_a.json").exists()
    mic.remove()  # idempotent


def test_audio_played_into_the_sink_is_heard_on_the_source(pulse, tmp_path):
    t = np.arange(RATE_HZ * 2) / RATE_HZ
    tone = (0.5 * np.sin(2 * np.pi * TONE_HZ * t) * 32767).astype("<i2")
    (tmp_path / "tone.raw").write_bytes(tone.tobytes())
    raw = ["--raw", f"--rate={RATE_HZ}", "--channels=1", "--format=s16le"]
    with VirtualMic("vmic_b", state_dir=tmp_path) as mic, open(tmp_path / "rec.raw", "wb") as rec_file:
        parec = subprocess.Popen(["parec", "-d", mic.source_name, *raw, "--latency-msec=20"], stdout=rec_file)
        try:
            time.sleep(0.3)
            subprocess.run(["paplay", "-d", mic.sink_name, *raw, str(tmp_path / "tone.raw")], check=True, timeout=15)
            time.sleep(0.3)
        finally:
            stop_process(parec)
    recorded = np.frombuffer((tmp_path / "rec.raw").read_bytes(), dtype="<i2").astype(np.float64) / 32768
    assert len(recorded) > RATE_HZ, "parec recorded less than a second"
    rms = np.sqrt(np.mean(recorded**2))
    assert rms > 0.1, f"recording is (near) silent: rms {rms:.4f}"
    spectrum = np.abs(np.fft.rfft(recorded))
    assert abs(np.argmax(spectrum) * RATE_HZ / len(recorded) - TONE_HZ) < 5


OWNER_SCRIPT = """
import sys, time
from pathlib import Path
from metis_rt.bridge import VirtualMic, install_signal_handlers
install_signal_handlers()
with VirtualMic(sys.argv[1], state_dir=Path(sys.argv[2])) as mic:
    print("ready", *mic.module_indices, flush=True)
    time.sleep(60)
"""


def _start_owner(name: str, state_dir) -> tuple[subprocess.Popen, set[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, name, str(state_dir)],
        cwd=REPO_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(READY_TIMEOUT_S):
            stop_process(proc, signal.SIGKILL)
            pytest.fail(f"owner process not ready within {READY_TIMEOUT_S} s")
    line = proc.stdout.readline().split()
    assert line and line[0] == "ready", proc.stderr.read() if proc.poll() is not None else line
    return proc, {int(index) for index in line[1:]}


def test_sigterm_removes_own_modules(pulse, tmp_path):
    proc, indices = _start_owner("vmic_term", tmp_path)
    assert len(indices) == 2 and indices <= _module_indices()
    stop_process(proc, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
    assert not indices & _module_indices()
    assert not list(tmp_path.glob("vmic-*.json"))


def test_cleanup_stale_removes_modules_of_a_killed_run_only(pulse, tmp_path):
    with VirtualMic("vmic_live", state_dir=tmp_path, clean_stale=False) as live:
        proc, indices = _start_owner("vmic_killed", tmp_path)
        stop_process(proc, signal.SIGKILL)
        assert indices <= _module_indices(), "SIGKILL should leave the modules behind"
        assert (tmp_path / "vmic-vmic_killed.json").is_file()
        foreign = subprocess.run(
            ["pactl", "load-module", "module-null-sink", "sink_name=not_ours"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        try:
            assert sorted(cleanup_stale(tmp_path)) == sorted(indices)
            remaining = _module_indices()
            assert not indices & remaining
            assert set(live.module_indices) <= remaining, "a live run's modules must stay"
            assert int(foreign.stdout) in remaining, "modules that are not ours must stay"
            assert not (tmp_path / "vmic-vmic_killed.json").exists()
            assert (tmp_path / "vmic-vmic_live.json").is_file()
        finally:
            subprocess.run(["pactl", "unload-module", foreign.stdout.strip()], timeout=5)
