"""Live microphone client: microphone -> metis-rt server -> speakers (or any output device, e.g. a virtual cable).

``python clients/mic_client.py --server ws://HOST:PORT --task se [--input NAME] [--output NAME]``

Threads: PortAudio runs the input callback (copies each block and hands it to the event loop with
``call_soon_threadsafe``; also feeds the optional monitor), the output callback (reads the jitter buffer,
never waits) and the monitor's output callback. Everything else is one asyncio TaskGroup:

- ``sender``: takes blocks from a bounded queue (``INPUT_QUEUE_MS`` of audio; when full the *oldest*
  block is dropped and counted), coalesces what is waiting into one frame, sends it; sends ``session.end``
  after the last block (:class:`~metis_rt.clients.uplink.Uplink`);
- ``receiver`` (the group's body): output frames go into the jitter buffer (bounded, drop-oldest, counted);
  ``stats``/``warning``/``error`` events update the status line or are shown; ``session.checkpoint`` is kept;
- ``status``: redraws the status line; ``keys`` (stdin is a TTY): ``b`` bypass, ``m``/``M`` mix, ``q`` quit;
- ``closer``: on ``q``/SIGINT/SIGTERM stops the input and lets the sender end the session; closes the socket
  itself if the server has not closed it within ``QUIT_TIMEOUT_S`` (or at a second signal).

When the receiver ends (the server closed the connection) the other tasks are cancelled.

Moving between workers: when the connection is lost (1006), the worker drains (1012) or is busy (1013), the client
reconnects to its URL (a balancer places the stream on a worker with room) with bounded, jittered backoff, sends
``session.resume`` with the latest checkpoint, re-sends the microphone input the new worker has not seen (the
microphone keeps capturing meanwhile) and drops the output it already played; the speakers are silent during the
gap (the jitter buffer runs dry and prefills again). Without a checkpoint, or when the token is refused, a fresh
session starts. ``--no-reconnect`` ends the client instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from metis_rt.clients import devices as dev
from metis_rt.clients import reconnect, wire
from metis_rt.clients.alsa_messages import route_alsa_messages
from metis_rt.clients.jitter import JitterBuffer
from metis_rt.clients.live_resume import LiveStream
from metis_rt.clients.resume import Backoff
from metis_rt.clients.terminal import StatusDisplay, cbreak_keys
from metis_rt.clients.uplink import END, Uplink
from metis_rt.errors import MetisError
from metis_rt.server.protocol import FORMATS, MAX_RATE, MIN_RATE, TASKS, SessionResumed

log = logging.getLogger("metis_rt.clients.mic")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
BLOCK_MS = 20  # PortAudio block size
INPUT_QUEUE_MS = 1000  # microphone audio waiting for the socket; beyond it the oldest block is dropped (counted)
MAX_FRAME_MS = 200  # coalesce queued blocks into frames of at most this much audio (protocol limit: 1 s)
MONITOR_PREFILL_MS, MONITOR_BUFFER_MS = 2 * BLOCK_MS, 200
STATUS_INTERVAL_S = 0.5
QUIT_TIMEOUT_S = 10.0  # after session.end, wait this long for the server to deliver the tail and close
MIX_STEP = 0.1
MAX_REFERENCE_BYTES = 6_000_000  # base64 makes 8 MB: within the server's default message limit (8 MiB)


@dataclass(frozen=True)
class MicConfig:
    url: str
    task: str = "se"
    token: str | None = None
    voice: str | None = None
    reference: bytes | None = None
    input_device: int | None = None
    output_device: int | None = None
    monitor_device: int | None = None
    input_rate: int = 48000
    output_rate: int = 48000
    fmt: str = "f32le"
    prefill_ms: float = 120.0
    max_buffer_ms: float = 1000.0
    mix: float = 1.0
    engine: str = "auto"  # auto | metis | deepfilternet3 | rnnoise (the server decides for auto)
    strength: float | None = None  # CPU denoisers: attenuation limit in dB (None: the engine's default)
    reconnect: bool = True  # move the stream when its connection is lost or drained
    reconnect_max_s: float = 30.0  # give up after waiting this long in total between attempts


@dataclass
class ClientCounters:
    """What the client itself measures (the server's figures come in ``stats`` events)."""

    sent_samples: int = 0
    received_samples: int = 0
    dropped_input_samples: int = 0  # input blocks dropped: the socket could not keep up, or a move took too long
    xruns: int = 0  # PortAudio input overflow / output underflow flags
    moves: int = 0  # reconnections to another worker
    server_stats: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- pure helpers
def key_command(key: str, bypass: bool, mix: float) -> tuple[str, dict]:
    """A key press -> ("update", options) | ("quit", {}) | ("none", {})."""
    if key == "b":
        return "update", {"bypass": not bypass}
    if key in ("m", "M"):
        step = -MIX_STEP if key == "m" else MIX_STEP
        return "update", {"mix": round(min(1.0, max(0.0, mix + step)), 2)}
    if key == "q":
        return "quit", {}
    return "none", {}


def start_options(cfg: MicConfig) -> dict | None:
    """The ``options`` of session.start: only what differs from the server's defaults."""
    options: dict = {}
    if cfg.mix != 1.0:
        options["mix"] = cfg.mix
    if cfg.strength is not None:
        options["strength"] = cfg.strength
    return options or None


def status_line(counters: ClientCounters, jitter: JitterBuffer, cfg: MicConfig, bypass: bool, mix: float) -> str:
    s = counters.server_stats
    server = f"latency {s['latency_ms']:.0f} ms  rtf {s['rtf']:.2f}" if s else "latency --  rtf --"
    dropped_client = counters.dropped_input_samples * 1000 / cfg.input_rate
    depth_ms = jitter.depth_samples * 1000 / cfg.output_rate
    return (
        f"{server}  dropped {s.get('dropped_ms', 0.0):.0f}+{dropped_client:.0f} ms  "
        f"buffer {depth_ms:.0f} ms  underruns {jitter.underruns}  "
        f"{'BYPASS' if bypass else 'mix ' + format(mix, '.1f')}"
        + (f"  moves {counters.moves}" if counters.moves else "")
    )


def summary_line(counters: ClientCounters, jitter: JitterBuffer, cfg: MicConfig) -> str:
    return (
        f"session ended: sent {counters.sent_samples / cfg.input_rate:.1f} s, "
        f"received {counters.received_samples / cfg.output_rate:.1f} s, "
        f"underruns {jitter.underruns}, buffer overruns {jitter.overruns}, device xruns {counters.xruns}, "
        f"dropped {counters.dropped_input_samples * 1000 / cfg.input_rate:.0f} ms (client) "
        f"{counters.server_stats.get('dropped_ms', 0.0):.0f} ms (server)"
        + (f", moves {counters.moves}" if counters.moves else "")
    )


# ----------------------------------------------------------------------------- the client
class MicClient:
    def __init__(self, cfg: MicConfig, sd, display: StatusDisplay):
        self.cfg = cfg
        self.sd = sd
        self.display = display
        self.counters = ClientCounters()
        self.bypass, self.mix = False, cfg.mix
        self.jitter = JitterBuffer.from_ms(cfg.output_rate, cfg.max_buffer_ms, cfg.prefill_ms)
        self.monitor = (
            JitterBuffer.from_ms(cfg.input_rate, MONITOR_BUFFER_MS, MONITOR_PREFILL_MS)
            if cfg.monitor_device is not None
            else None
        )
        self.live = LiveStream(cfg.input_rate)
        self.uplink = Uplink(self.live, INPUT_QUEUE_MS // BLOCK_MS, MAX_FRAME_MS * cfg.input_rate // 1000, cfg.fmt)
        self.backoff = Backoff(max_total_s=cfg.reconnect_max_s)
        self.loop = asyncio.get_running_loop()
        self.quit = asyncio.Event()
        self.hurry = asyncio.Event()
        self.capturing = False
        self.serving = False  # streams open, session running: signals now end it gracefully
        self.main_task = asyncio.current_task()
        self.last_error: str | None = None

    def start_message(self) -> str:
        return wire.start_message(
            self.cfg.task,
            self.cfg.input_rate,
            self.cfg.fmt,
            self.cfg.output_rate,
            voice=self.cfg.voice,
            reference=self.cfg.reference,
            options=start_options(self.cfg),
            engine=self.cfg.engine,
        )

    async def run(self) -> None:
        with self._signals():
            ws, ready = await wire.open_session(self.cfg.url, self.start_message(), self.cfg.token)
            try:
                # room for one server hop on top of the prefill, whatever --max-buffer-ms says
                capacity_ms = max(self.cfg.max_buffer_ms, self.cfg.prefill_ms + 2 * ready.chunk_ms)
                self.jitter = JitterBuffer.from_ms(self.cfg.output_rate, capacity_ms, self.cfg.prefill_ms)
                with self._streams():
                    self.serving = True
                    self.display.message(
                        f"session {ready.session_id}: {self.cfg.task} at {self.cfg.input_rate} -> "
                        f"{self.cfg.output_rate} Hz, algorithmic latency {ready.algorithmic_latency_ms:.0f} ms"
                    )
                    await self._serve(ws)
                    while not self.quit.is_set() and self.cfg.reconnect and reconnect.should_move(ws.close_code):
                        moved = await self._move(ws)
                        if moved is None:
                            break
                        ws = moved
                        await self._serve(ws)
            finally:
                await ws.close()
                self._sync_counters()
                self.display.message(summary_line(self.counters, self.jitter, self.cfg))
            self._check_close(ws)

    async def _serve(self, ws) -> None:
        """The connection's tasks; the receiver is the body: when the server closes, the rest is cancelled."""
        async with asyncio.TaskGroup() as tg:
            others = [
                tg.create_task(self.uplink.send_loop(ws), name="sender"),
                tg.create_task(self._status_loop(), name="status"),
                tg.create_task(self._closer(ws), name="closer"),
            ]
            if self.display.interactive_keys:
                others.append(tg.create_task(self._keys_loop(ws), name="keys"))
            await self._receive_loop(ws)
            for task in others:
                task.cancel()

    async def _move(self, lost):
        """Reconnect and resume after a lost or drained connection: the new connection, or None if the user quit
        meanwhile. Raises ClientError once the stream cannot move."""
        self.display.message(f"server connection lost ({wire.close_description(lost)}): moving the stream")
        reopening = asyncio.create_task(
            reconnect.move_live(
                self.cfg.url,
                self.start_message(),
                self.live,
                self.uplink,
                self.backoff,
                lost,
                self.cfg.token,
                lambda exc: self.display.message(f"the new worker refused the stream's state ({exc}): starting afresh"),
            )
        )
        quitting = asyncio.create_task(self.quit.wait())
        await asyncio.wait({reopening, quitting}, return_when=asyncio.FIRST_COMPLETED)
        quitting.cancel()
        if not reopening.done():
            reopening.cancel()
            return None
        ws, ready = reopening.result()
        with contextlib.suppress(ConnectionClosed):  # the checkpoint may predate a key press: say what is in force
            await ws.send(wire.update_message(mix=self.mix, bypass=self.bypass))
        if isinstance(ready, SessionResumed):
            self.display.message(
                f"stream resumed: session {ready.session_id}, {ready.resume_gap_ms:.0f} ms without a worker"
            )
        else:
            self.display.message(f"stream started afresh: session {ready.session_id}")
        return ws

    def _sync_counters(self) -> None:
        """The counters the uplink and the stream keep, copied for the status and summary lines."""
        self.counters.sent_samples = self.uplink.sent_samples
        self.counters.dropped_input_samples = self.uplink.dropped_samples
        self.counters.moves = self.live.moves

    # --- audio callbacks (PortAudio threads) ----------------------------------------------------------
    def _on_input(self, indata, frames, time_info, status) -> None:
        if status:
            self.counters.xruns += 1
        block = indata[:, 0].copy()
        if self.monitor is not None:
            self.monitor.write(block)
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self._enqueue, block)

    def _on_output(self, outdata, frames, time_info, status) -> None:
        if status:
            self.counters.xruns += 1
        self.jitter.read_into(outdata[:, 0])

    def _on_monitor(self, outdata, frames, time_info, status) -> None:
        self.monitor.read_into(outdata[:, 0])

    # --- event loop side --------------------------------------------------------------------------------
    def _enqueue(self, item) -> None:
        """A captured block (or END) for the uplink; blocks after capture stopped are ignored."""
        if item is not END and not self.capturing:
            return
        self.uplink.push(item)

    async def _receive_loop(self, ws) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                if isinstance(message, bytes):
                    samples = self.live.output(wire.decode_audio(message, self.cfg.fmt))  # after a move: no repeats
                    self.counters.received_samples += len(samples)
                    self.jitter.write(samples)
                else:
                    self._on_event(wire.parse_event(message))

    def _on_event(self, event: dict) -> None:
        kind = event["type"]
        if kind == "stats":
            self.counters.server_stats = event
        elif kind == "session.checkpoint":
            if self.live.on_checkpoint(event):
                self.backoff.succeeded()  # the stream runs here: a later move gets the full budget
        elif kind == "warning":
            self.display.message(f"server warning ({event.get('code')}): {event.get('message')}")
        elif kind == "error":
            self.last_error = f"{event.get('code')}: {event.get('message')}"
            self.display.message(f"server error {self.last_error}")
        elif kind == "session.updated":
            options = event.get("options") or {}
            shown = [f"bypass {'on' if v else 'off'}" if k == "bypass" else f"{k} {v}" for k, v in options.items()]
            self.display.message("server applied: " + ", ".join(shown))

    def _check_close(self, ws) -> None:
        """After the connection closed: fine if we asked for it, else a ClientError that says why."""
        if self.quit.is_set():
            return
        detail = f"; last error: {self.last_error}" if self.last_error else ""
        if ws.close_code == 1001:
            raise wire.ClientError(f"the server is shutting down ({wire.close_description(ws)}){detail}")
        raise wire.ClientError(f"the server closed the connection: {wire.close_description(ws)}{detail}")

    async def _status_loop(self) -> None:
        while True:
            self._sync_counters()
            self.display.status(status_line(self.counters, self.jitter, self.cfg, self.bypass, self.mix))
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def _keys_loop(self, ws) -> None:
        async for key in self.display.keys():
            action, options = key_command(key, self.bypass, self.mix)
            if action == "quit":
                self.request_quit()
            elif action == "update":
                self.bypass = options.get("bypass", self.bypass)
                self.mix = options.get("mix", self.mix)
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(wire.update_message(**options))

    def _on_signal(self) -> None:
        """SIGINT/SIGTERM: end the session gracefully once it runs; before that, stop connecting."""
        if self.serving:
            self.request_quit()
        elif self.main_task is not None:
            self.main_task.cancel()

    def request_quit(self) -> None:
        if self.quit.is_set():
            self.hurry.set()
        self.quit.set()

    async def _closer(self, ws) -> None:
        await self.quit.wait()
        self.capturing = False
        self._enqueue(END)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(QUIT_TIMEOUT_S):
                await self.hurry.wait()
        self.display.message("closing without waiting for the server")
        await ws.close()

    # --- resources ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _streams(self):
        """Output (and monitor) first, so they are prefilling when the first input block arrives."""
        cfg, sd = self.cfg, self.sd
        streams = [(sd.OutputStream, "output", cfg.output_device, cfg.output_rate, self._on_output)]
        if self.monitor is not None:
            streams.append((sd.OutputStream, "monitor", cfg.monitor_device, cfg.input_rate, self._on_monitor))
        streams.append((sd.InputStream, "input", cfg.input_device, cfg.input_rate, self._on_input))
        with contextlib.ExitStack() as stack:
            for factory, role, device, rate, callback in streams:
                stack.enter_context(dev.open_stream(factory, role, device, rate, callback, block_ms=BLOCK_MS))
            self.capturing = True
            yield

    @contextlib.contextmanager
    def _signals(self):
        sigs = (signal.SIGINT, signal.SIGTERM)
        for sig in sigs:
            self.loop.add_signal_handler(sig, self._on_signal)
        try:
            yield
        finally:
            for sig in sigs:
                self.loop.remove_signal_handler(sig)


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mic_client", description="microphone -> metis-rt server -> speakers")
    p.add_argument("--server", default=wire.DEFAULT_URL, help=f"server URL (default {wire.DEFAULT_URL})")
    p.add_argument("--token", help="bearer token, if the server requires one")
    p.add_argument("--no-reconnect", action="store_true", help="end when the connection is lost or drained")
    p.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    p.add_argument("--input", help="input device: index or name substring (default: the system default)")
    p.add_argument("--output", help="output device: index or name substring (default: the system default)")
    p.add_argument("--monitor", help="also play the unprocessed input on this device")
    p.add_argument("--task", choices=TASKS, default="se")
    voice = p.add_mutually_exclusive_group()
    voice.add_argument("--voice", help="a named voice on the server (tse, vc)")
    voice.add_argument("--reference", type=Path, help="a reference recording of the target voice (tse, vc)")
    p.add_argument("--rate", type=int, help="sample rate in Hz (default: each device's default rate, else 48000)")
    p.add_argument("--format", dest="fmt", choices=sorted(FORMATS), default="f32le", help="wire PCM format")
    p.add_argument("--prefill-ms", type=float, default=120.0, help="jitter buffer prefill (default 120)")
    p.add_argument("--max-buffer-ms", type=float, default=1000.0, help="jitter buffer bound (default 1000)")
    p.add_argument("--mix", type=float, default=1.0, help="1 = processed only, 0 = dry only (default 1)")
    p.add_argument(
        "--engine",
        choices=("auto", "metis", "deepfilternet3", "rnnoise"),
        default="auto",
        help="processing engine on the server (default: the server's choice)",
    )
    p.add_argument(
        "--strength", type=float, help="CPU denoisers: attenuation limit in dB, 0 (none) .. 100 (unlimited, default)"
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def check_args(args) -> bytes | None:
    """Usage errors the server would reject anyway, caught before any device opens; returns the reference."""
    if args.task == "tts":
        raise dev.AudioDeviceError(wire.TTS_NOT_HERE)
    if args.rate is not None and not MIN_RATE <= args.rate <= MAX_RATE:
        raise dev.AudioDeviceError(f"--rate must be in [{MIN_RATE}, {MAX_RATE}] Hz, got {args.rate}")
    if not 0.0 <= args.mix <= 1.0:
        raise dev.AudioDeviceError(f"--mix must be in [0, 1], got {args.mix}")
    if args.strength is not None and not 0.0 <= args.strength <= 100.0:
        raise dev.AudioDeviceError(f"--strength must be in [0, 100] dB, got {args.strength}")
    if args.engine in ("deepfilternet3", "rnnoise") and args.task != "se":
        raise dev.AudioDeviceError(f"--engine {args.engine} only denoises (--task se)")
    if args.prefill_ms < 0 or args.max_buffer_ms <= 0:
        raise dev.AudioDeviceError("--prefill-ms must be >= 0 and --max-buffer-ms > 0")
    wants_voice = args.task in ("tse", "vc")
    if wants_voice and args.voice is None and args.reference is None:
        raise dev.AudioDeviceError(f"--task {args.task} needs --voice NAME or --reference FILE")
    if not wants_voice and (args.voice or args.reference):
        raise dev.AudioDeviceError(f"--task {args.task} takes no --voice or --reference")
    if args.reference is None:
        return None
    try:
        data = args.reference.read_bytes()
    except OSError as exc:
        raise dev.AudioDeviceError(f"cannot read --reference {args.reference}: {exc}") from exc
    if len(data) > MAX_REFERENCE_BYTES:
        raise dev.AudioDeviceError(
            f"--reference {args.reference} is {len(data) / 1e6:.1f} MB; the limit is "
            f"{MAX_REFERENCE_BYTES / 1e6:.0f} MB (use up to 30 s of audio, e.g. as FLAC)"
        )
    return data


def config_from_args(args, sd) -> MicConfig:
    reference = check_args(args)
    devices, defaults = dev.query(sd)
    if not devices:
        raise dev.AudioDeviceError("no audio devices found: PortAudio sees no sound card or sound server")
    inp = dev.find_device(devices, args.input, "input", defaults[0])
    out = dev.find_device(devices, args.output, "output", defaults[1])
    monitor = dev.find_device(devices, args.monitor, "output", defaults[1]) if args.monitor else None
    return MicConfig(
        url=wire.stream_url(args.server),
        task=args.task,
        token=args.token,
        voice=args.voice,
        reference=reference,
        input_device=inp,
        output_device=out,
        monitor_device=monitor,
        input_rate=dev.choose_rate(args.rate, devices[inp]),
        output_rate=dev.choose_rate(args.rate, devices[out]),
        fmt=args.fmt,
        prefill_ms=args.prefill_ms,
        max_buffer_ms=args.max_buffer_ms,
        mix=args.mix,
        engine=args.engine,
        strength=args.strength,
        reconnect=not args.no_reconnect,
    )


async def _run(cfg: MicConfig, sd) -> None:
    display = StatusDisplay(sys.stderr, keys=cbreak_keys(sys.stdin))
    with display:
        await MicClient(cfg, sd, display).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        route_alsa_messages()  # alsa-lib prints xruns on stderr, through the status line; PortAudio counts them
        sd = dev.load_sounddevice()
        if args.list_devices:
            print(dev.describe(*dev.query(sd)))
            return EXIT_OK
        cfg = config_from_args(args, sd)
    except dev.AudioDeviceError as exc:
        print(f"mic_client: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(_run(cfg, sd))
    except dev.AudioDeviceError as exc:
        print(f"mic_client: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except asyncio.CancelledError:
        print("mic_client: interrupted before the session started", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MetisError as exc:
        print(f"mic_client: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
