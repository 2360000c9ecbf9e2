"""Real external parts for tests: a private PulseAudio daemon, a mosquitto broker and HAProxy on loopback.

Both are plain processes started by fixtures (no system services, no /dev/snd needed). Each test module picks
the null sinks and the ALSA names it needs; ``PulseDaemon.env`` is the environment that reaches the daemon
(pass it to subprocesses, or apply it to ``os.environ`` with ``applied()``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BROKER_STEP_S = 5.0  # bound of every wait on the broker process
PULSE_START_S = 15.0
STOP_TIMEOUT_S = 20.0


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Signal ``proc`` and wait for it; kill it if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- PulseAudio
def require_pulse_tools() -> None:
    missing = [tool for tool in ("pulseaudio", "pactl", "paplay", "parec") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"PulseAudio tools missing ({', '.join(missing)}): apt-get install pulseaudio pulseaudio-utils")


class PulseDaemon:
    """A private PulseAudio daemon under ``root`` with the given extra modules (e.g. null sinks).

    ``asoundrc`` (optional) is written to ``$HOME/.asoundrc`` of ``env`` so PortAudio's ALSA backend can name
    PulseAudio devices (``pcm.NAME { type pulse; device "SINK_OR_SOURCE" }``).
    """

    def __init__(self, root: Path, modules: Sequence[str] = (), asoundrc: str | None = None):
        require_pulse_tools()
        runtime, home = root / "run", root / "home"
        runtime.mkdir(mode=0o700, parents=True)
        home.mkdir(parents=True)
        if asoundrc is not None:
            (home / ".asoundrc").write_text(asoundrc)
        self.log = root / "pulseaudio.log"
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(runtime),
            "PULSE_RUNTIME_PATH": str(runtime / "pulse"),
            "PULSE_SERVER": f"unix:{runtime / 'pulse' / 'native'}",
        }
        with self.log.open("wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "-n", "--use-pid-file=no"]
                + ["--load=module-native-protocol-unix"]
                + [f"--load={module}" for module in modules],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            deadline = time.monotonic() + PULSE_START_S
            while self.pactl("info", check=False).returncode != 0:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, f"PulseAudio did not come up within {PULSE_START_S:.0f} s"
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=5, check=check)

    @contextlib.contextmanager
    def applied(self):
        """This process's ``os.environ`` points at the daemon inside the block."""
        keys = ("HOME", "XDG_RUNTIME_DIR", "PULSE_RUNTIME_PATH", "PULSE_SERVER")
        saved = {key: os.environ.get(key) for key in keys}
        os.environ.update({key: self.env[key] for key in keys})
        try:
            yield self.env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def stop(self) -> None:
        stop_process(self.proc)


def null_sink(name: str, rate: int = 48000) -> str:
    """A module spec for ``PulseDaemon(modules=...)``: a mono float null sink."""
    return f"module-null-sink sink_name={name} rate={rate} channels=1 format=float32le"


# ----------------------------------------------------------------------------- mosquitto
class Broker:
    """A mosquitto process on 127.0.0.1 that can be stopped and restarted on the same port."""

    def __init__(self, tmp_path: Path, extra: str = "allow_anonymous true\n"):
        if not Path(MOSQUITTO).exists():
            pytest.fail("mosquitto not installed (apt-get install mosquitto)")
        self.port = free_port()
        self.conf = tmp_path / "mosquitto.conf"
        self.log = tmp_path / "mosquitto.log"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\npersistence false\n{extra}")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + BROKER_STEP_S
        while time.monotonic() < deadline:  # short bounded polling of availability
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not accept connections on port {self.port} within {BROKER_STEP_S} s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s=BROKER_STEP_S)
        self.proc = None


# ----------------------------------------------------------------------------- HAProxy
class Haproxy:
    """HAProxy in the foreground (``-db``) running ``config`` with ``env`` on top of this process's environment.

    ``port`` and ``stats_port`` are free loopback ports handed to the config as ``METIS_FRONT_BIND`` and
    ``METIS_STATS_BIND`` (deploy/haproxy.cfg's names); ``stats()`` reads the stats page's CSV.
    """

    def __init__(self, tmp_path: Path, config: Path, env: Mapping[str, str] = ()):
        if not Path(HAPROXY).exists():
            pytest.fail("haproxy not installed (apt-get install haproxy)")
        self.port, self.stats_port = free_port(), free_port()
        self.log = tmp_path / f"haproxy-{self.port}.log"
        binds = {"METIS_FRONT_BIND": f"127.0.0.1:{self.port}", "METIS_STATS_BIND": f"127.0.0.1:{self.stats_port}"}
        with self.log.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(config)], env={**os.environ, **binds, **dict(env)}, stdout=log, stderr=log
            )
        deadline = time.monotonic() + BROKER_STEP_S
        while True:  # short bounded polling of availability
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"haproxy did not listen on {self.port} within {BROKER_STEP_S} s")
            time.sleep(0.02)

    def stats(self) -> dict[str, dict[str, str]]:
        """The stats page's rows by ``proxy/server`` name (e.g. ``metis_workers/gpu0``), columns as named there."""
        url = f"http://127.0.0.1:{self.stats_port}/stats;csv"
        text = urllib.request.urlopen(url, timeout=BROKER_STEP_S).read().decode().lstrip("# ")
        return {f"{row['pxname']}/{row['svname']}": row for row in csv.DictReader(io.StringIO(text))}

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=BROKER_STEP_S)


class ServerThread:
    """A built ``MetisServer`` running on 127.0.0.1 (port 0: any free one) in a thread of its own."""

    def __init__(self, server, start_timeout_s: float = 120.0):
        import threading

        self.server = server
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(start_timeout_s), "server did not start"
        self.url = f"ws://127.0.0.1:{self.server.port}/v1/stream"

    def _run(self):
        import asyncio

        async def main():
            self.loop = asyncio.get_running_loop()
            await self.server.run(host="127.0.0.1", port=0, on_ready=lambda _p: self._ready.set())

        asyncio.run(main())

    def stop(self):
        self.loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(30)
        assert not self.thread.is_alive()
