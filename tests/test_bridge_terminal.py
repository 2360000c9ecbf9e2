"""What the bridge prints on a terminal: --list-devices names the PulseAudio sources and sinks that ``pulse:NAME``
takes (a private PulseAudio daemon with null sinks), and alsa-lib's own messages do not reach stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .realparts import PulseDaemon, null_sink

REPO = Path(__file__).resolve().parents[1]

# provokes one alsa-lib error message (an unknown PCM name) the way an underrun in PortAudio's ALSA host does
PROVOKE = """
import ctypes, ctypes.util, sys
from metis_rt.clients.alsa_messages import route_alsa_messages
messages = route_alsa_messages() if sys.argv[1] == "routed" else None
asound = ctypes.CDLL(ctypes.util.find_library("asound"))
pcm = ctypes.c_void_p()
assert asound.snd_pcm_open(ctypes.byref(pcm), b"metis_no_such_pcm", 0, 0) < 0
print(messages.count if messages else "-", messages.by_function if messages else "")
"""


@pytest.mark.parametrize("mode", ["plain", "routed"])
def test_alsa_lib_messages_are_counted_not_printed(mode):
    run = subprocess.run(
        [sys.executable, "-c", PROVOKE, mode], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    if mode == "plain":  # the control: alsa-lib does print this message on its own
        assert "ALSA lib" in run.stderr and "metis_no_such_pcm" in run.stderr
    else:
        assert "ALSA lib" not in run.stderr, run.stderr
        assert run.stdout.startswith("1 ") and "snd_pcm_open" in run.stdout


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    daemon = PulseDaemon(tmp_path_factory.mktemp("list_pulse"), [null_sink("desk_mic"), null_sink("headset")])
    yield daemon
    daemon.stop()


def test_list_devices_shows_the_pulse_names(pulse):
    run = subprocess.run(
        [sys.executable, "-m", "metis_rt", "bridge", "--list-devices"],
        cwd=REPO,
        env=pulse.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    sources = run.stdout.split("PulseAudio sources")[1].split("PulseAudio sinks")[0]
    sinks = run.stdout.split("PulseAudio sinks")[1]
    assert "pulse:desk_mic.monitor" in sources and "pulse:headset.monitor" in sources
    assert "pulse:desk_mic\n" in sinks and "pulse:headset\n" in sinks
