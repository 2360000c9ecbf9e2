"""The conferencing bridge: real microphone -> metis-rt (server or in-process engine) -> virtual microphone.

Threads: PortAudio runs the input callback (copies each block and hands it to the event loop with
``call_soon_threadsafe``) and the output callbacks (virtual microphone, optional monitor: each reads its
:class:`Playout`, never waits). A local engine runs on its own thread and writes processed audio straight into
the playouts (they are thread-safe); a remote session's receiver does the same on the event loop. Everything else
is one asyncio TaskGroup: the backend, the MQTT control plane, the stats publisher, the status line and the keys.

Start: the virtual microphone is created (stale modules of a crashed run are removed first), the processing
session opens, the output devices start (their audio fades in), then capture starts. Stop (``q``, SIGINT,
SIGTERM, ``--duration``): capture stops, the outputs fade to silence over ``fade_ms``, the devices close, the
session closes, the virtual microphone is removed and MQTT says ``offline``.

Control: MQTT ``<prefix>/<node>/set/<setting>``, keys ``b``/``m``/``M``/``q`` and the start options all end in
``Backend.apply``; the settings in force are published retained on ``<prefix>/<node>/state`` after every change.
Bypass and mix are applied by the session itself: the output ramps over one chunk to the *delayed* raw input, so
the switch has neither a gap nor a click.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from metis_rt.bridge.backends import BackendError, LocalBackend
from metis_rt.bridge.playout import DEFAULT_FADE_MS, Playout
from metis_rt.bridge.remote import RemoteBackend
from metis_rt.bridge.virtual_mic import VirtualMic
from metis_rt.clients import devices as dev
from metis_rt.clients.mic import key_command
from metis_rt.clients.terminal import StatusDisplay
from metis_rt.control.commands import BrokerConfig, Command, CommandError, SetBypass, SetMix

log = logging.getLogger("metis_rt.bridge")

BLOCK_MS = 20
STATS_INTERVAL_S = 2.0
STATUS_INTERVAL_S = 0.5
FADE_WAIT_S = 1.0  # bound on waiting for the output fade before closing the devices
PULSE_PREFIX = "pulse:"
PULSE_DEVICE = "pulse"  # the ALSA PulseAudio plugin's device as PortAudio lists it

Backend = LocalBackend | RemoteBackend


@dataclass(frozen=True)
class DeviceChoice:
    """A PortAudio device; ``pulse_name`` set = the PulseAudio sink/source to route it to (Linux)."""

    index: int
    pulse_name: str | None = None


@dataclass(frozen=True)
class BridgeConfig:
    input: DeviceChoice
    output: DeviceChoice
    monitor: DeviceChoice | None = None
    input_rate: int = 48000
    output_rate: int = 48000
    virtual_mic: VirtualMic | None = None  # created at start, removed at exit (Linux)
    prefill_ms: float = 120.0
    max_buffer_ms: float = 1000.0
    fade_ms: float = DEFAULT_FADE_MS
    mqtt: BrokerConfig | None = None
    node: str = "bridge"
    duration_s: float | None = None


@dataclass
class BridgeCounters:
    captured_samples: int = 0
    xruns: int = 0
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- devices
def resolve_device(devices: list[dict], spec: str | None, kind: str, default: int) -> DeviceChoice:
    """``--input``/``--output-device``/``--monitor``: an index, a name substring, or ``pulse:NAME`` for a
    PulseAudio source (input) or sink (output) reached through the ALSA ``pulse`` device."""
    if spec is not None and spec.startswith(PULSE_PREFIX):
        name = spec[len(PULSE_PREFIX) :]
        if not name:
            raise dev.AudioDeviceError(f"{spec!r}: give a PulseAudio {'source' if kind == 'input' else 'sink'} name")
        return DeviceChoice(pulse_device_index(devices, kind), name)
    return DeviceChoice(dev.find_device(devices, spec, kind, default))


def pulse_device_index(devices: list[dict], kind: str) -> int:
    channels = f"max_{kind}_channels"
    for index, d in enumerate(devices):
        if d["name"] == PULSE_DEVICE and d[channels] > 0:
            return index
    raise dev.AudioDeviceError(
        "PortAudio lists no 'pulse' device: install the ALSA PulseAudio plugin "
        "(Debian/Ubuntu: apt-get install libasound2-plugins) and check that PulseAudio or pipewire-pulse runs"
    )


@contextlib.contextmanager
def routed(kind: str, pulse_name: str | None) -> Iterator[None]:
    """While a stream on the ALSA ``pulse`` device opens, point it at a named sink (PULSE_SINK) or source
    (PULSE_SOURCE); libpulse reads these when the device connects."""
    if pulse_name is None:
        yield
        return
    key = "PULSE_SOURCE" if kind == "input" else "PULSE_SINK"
    saved = os.environ.get(key)
    os.environ[key] = pulse_name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _latency_p50(stats: dict) -> float | None:
    """The median latency: ``latency_ms_p50`` of the local engine's metrics, ``latency_ms`` of a server's stats
    event (its median); None before anything was measured."""
    value = stats.get("latency_ms_p50", stats.get("latency_ms"))
    return None if value is None else round(float(value), 1)


def stats_payload(backend: Backend, playout: Playout, counters: BridgeCounters, input_rate: int) -> dict:
    """What ``<prefix>/<node>/stats`` carries: the processing side's figures and the bridge's own."""
    s = backend.stats()
    dropped_client = backend.dropped_input_samples * 1000 / input_rate
    return {
        "algorithmic_latency_ms": round(backend.latency_ms, 1),
        "rtf": round(float(s.get("rtf", 0.0)), 3),
        "latency_ms_p50": _latency_p50(s),
        "dropped_ms": round(float(s.get("dropped_ms", 0.0)) + dropped_client, 1),
        "buffer_ms": round(playout.depth_ms, 1),
        "underruns": playout.jitter.underruns,
        "xruns": counters.xruns,
        "captured_s": round(counters.captured_samples / input_rate, 2),
        "played_s": round(playout.jitter.played_samples / playout.rate, 2),
        "processing": backend.processing,  # "raw": the raw microphone plays while the stream moves to another worker
        "moves": backend.moves,
    }


# ----------------------------------------------------------------------------- the bridge
class Bridge:
    def __init__(self, cfg: BridgeConfig, backend_factory, sd, display: StatusDisplay):
        """``backend_factory(on_output) -> Backend`` (the backend delivers processed audio to ``on_output``)."""
        self.cfg, self.sd, self.display = cfg, sd, display
        self.playout = Playout(cfg.output_rate, cfg.max_buffer_ms, cfg.prefill_ms, cfg.fade_ms)
        self.monitor = Playout(cfg.output_rate, cfg.max_buffer_ms, cfg.prefill_ms, cfg.fade_ms) if cfg.monitor else None
        self.backend: Backend = backend_factory(self._on_processed)
        if isinstance(self.backend, RemoteBackend):
            self.backend.notice = self._notice
        self.counters = BridgeCounters()
        self.loop = asyncio.get_running_loop()
        self.quit = asyncio.Event()
        self.capturing = False
        self.mqtt = None
        self.failure: BaseException | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    async def run(self) -> None:
        with self._signals(), contextlib.ExitStack() as stack:
            vmic = self.cfg.virtual_mic
            if vmic is not None:
                await asyncio.to_thread(vmic.create)
                stack.callback(vmic.remove)
                self.display.message(f"virtual microphone ready: pick {vmic.description!r} in your app")
            await self.backend.start()
            try:
                await self._serve()
            finally:
                await self.backend.close()
        if self.failure is not None:
            raise self.failure

    async def _serve(self) -> None:
        with self._streams():
            s = self.backend.settings
            self.display.message(
                f"bridge running: {s.task}, algorithmic latency {self.backend.latency_ms:.0f} ms, "
                f"{self.cfg.input_rate} -> {self.cfg.output_rate} Hz"
            )
            async with asyncio.TaskGroup() as tg:
                workers = [
                    tg.create_task(self._guard(self.backend.run()), name="backend"),
                    tg.create_task(self._status_loop(), name="status"),
                ]
                if self.cfg.mqtt is not None:
                    workers.append(tg.create_task(self._mqtt_loop(), name="mqtt"))
                if self.display.interactive_keys:
                    workers.append(tg.create_task(self._keys_loop(), name="keys"))
                if self.cfg.duration_s is not None:
                    self.loop.call_later(self.cfg.duration_s, self.request_quit)
                await self.quit.wait()
                await self._fade_out()
                if self.mqtt is not None:
                    await self.mqtt.stop()
                for task in workers:
                    task.cancel()

    async def _guard(self, coro) -> None:
        """The backend's run(): if it fails, remember why and stop the bridge (cleanly, with a fade)."""
        try:
            await coro
        except BackendError as exc:
            self.failure = exc
            self.request_quit()

    def request_quit(self) -> None:
        self.quit.set()

    def _notice(self, text: str) -> None:
        """What the processing side wants the user to know (a move between workers): the status output and the log."""
        log.info(text)
        self.display.message(text)

    async def _fade_out(self) -> None:
        self.capturing = False
        outputs = [p for p in (self.playout, self.monitor) if p is not None]
        for p in outputs:
            p.fade_out()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FADE_WAIT_S):
                while not all(p.silent for p in outputs):
                    await asyncio.sleep(BLOCK_MS / 1000)

    # --- audio (PortAudio threads, then the loop) -------------------------------------------------
    def _on_input(self, indata, frames, time_info, status) -> None:
        if status:
            self.counters.xruns += 1
        block = indata[:, 0].copy()
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self._push, block)

    def _push(self, block: np.ndarray) -> None:
        if not self.capturing:
            return
        self.counters.captured_samples += len(block)
        self.backend.push(block)

    def _on_processed(self, samples: np.ndarray) -> None:  # engine thread or event loop
        self.playout.write(samples)
        if self.monitor is not None:
            self.monitor.write(samples)

    def _on_output(self, outdata, frames, time_info, status) -> None:
        if status:
            self.counters.xruns += 1
        self.playout.read_into(outdata[:, 0])

    def _on_monitor(self, outdata, frames, time_info, status) -> None:
        self.monitor.read_into(outdata[:, 0])

    @contextlib.contextmanager
    def _streams(self):
        """Outputs first (they prefill and fade in), then the microphone."""
        cfg, sd = self.cfg, self.sd
        streams = [(sd.OutputStream, "output", cfg.output, cfg.output_rate, self._on_output)]
        if cfg.monitor is not None:
            streams.append((sd.OutputStream, "monitor", cfg.monitor, cfg.output_rate, self._on_monitor))
        streams.append((sd.InputStream, "input", cfg.input, cfg.input_rate, self._on_input))
        with contextlib.ExitStack() as stack:
            for factory, role, choice, rate, callback in streams:
                with routed("input" if role == "input" else "output", choice.pulse_name):
                    stack.enter_context(dev.open_stream(factory, role, choice.index, rate, callback, BLOCK_MS))
            self.capturing = True
            yield

    # --- control --------------------------------------------------------------------------------
    async def apply(self, command: Command) -> None:
        """Apply a command from any source; publishes the new state. Raises ``CommandError`` if refused."""
        await self.backend.apply(command)
        self.display.message("applied: " + ", ".join(f"{k} {v}" for k, v in self.backend.settings.as_state().items()))
        if self.mqtt is not None:
            self.mqtt.publish_state(None, self.backend.settings.as_state())

    async def _on_mqtt(self, session_id: str | None, command: Command) -> None:
        if session_id is not None:
            raise CommandError(
                f"this node is a bridge with one stream: use {self.mqtt.topics.base}/set/<setting> "
                f"(no session/{session_id}/)"
            )
        await self.apply(command)

    async def _mqtt_loop(self) -> None:
        from metis_rt.control.mqtt import MqttControl  # aiomqtt only when MQTT is used

        self.mqtt = MqttControl(self.cfg.mqtt, self.cfg.node, self._on_mqtt)
        self.mqtt.publish_state(None, self.backend.settings.as_state())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.mqtt.run(), name="mqtt-control")
            while True:
                await asyncio.sleep(STATS_INTERVAL_S)
                payload = stats_payload(self.backend, self.playout, self.counters, self.cfg.input_rate)
                self.mqtt.publish_stats(None, payload)

    async def _status_loop(self) -> None:
        while True:
            p = stats_payload(self.backend, self.playout, self.counters, self.cfg.input_rate)
            s = self.backend.settings
            mode = "BYPASS" if s.bypass else f"mix {s.mix:.1f}"
            if p["processing"] == "raw":
                mode = "RAW MIC (stream moving)"
            self.display.status(
                f"{s.task}  latency {p['algorithmic_latency_ms']:.0f} ms  rtf {p['rtf']:.2f}  "
                f"buffer {p['buffer_ms']:.0f} ms  underruns {p['underruns']}  dropped {p['dropped_ms']:.0f} ms  {mode}"
            )
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def _keys_loop(self) -> None:
        async for key in self.display.keys():
            s = self.backend.settings
            action, options = key_command(key, s.bypass, s.mix)  # the mic client's keys
            if action == "quit":
                self.request_quit()
                continue
            if action != "update":
                continue
            command: Command = SetBypass(options["bypass"]) if "bypass" in options else SetMix(options["mix"])
            try:
                await self.apply(command)
            except CommandError as exc:
                self.display.message(f"refused: {exc.reason}")

    @contextlib.contextmanager
    def _signals(self):
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        for sig in sigs:
            self.loop.add_signal_handler(sig, self.request_quit)
        try:
            yield
        finally:
            for sig in sigs:
                self.loop.remove_signal_handler(sig)
