"""``metis-rt bridge`` / ``python clients/bridge.py``: microphone -> metis-rt -> virtual microphone.

Linux: creates "Metis Virtual Microphone" (PulseAudio / pipewire-pulse) and removes it on exit.
macOS / Windows: install a loopback driver (BlackHole, VB-CABLE) and pass ``--output-device`` (docs/bridge.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from metis_rt.bridge import app
from metis_rt.bridge.backends import BackendError, BridgeSettings, LocalBackend
from metis_rt.bridge.remote import MoveOptions, RemoteBackend
from metis_rt.bridge.virtual_mic import DEFAULT_DESCRIPTION, DEFAULT_SINK_NAME, VirtualMic, describe_pulse_endpoints
from metis_rt.clients import devices as dev
from metis_rt.clients import wire
from metis_rt.clients.alsa_messages import route_alsa_messages
from metis_rt.clients.mic import MAX_REFERENCE_BYTES
from metis_rt.clients.terminal import StatusDisplay, cbreak_keys
from metis_rt.config import TASKS
from metis_rt.control import commands
from metis_rt.control.commands import MQTT_PASSWORD_ENV, BrokerUrlError, CommandError, Topics, parse_broker_url
from metis_rt.engines import AUTO, ENGINE_CHOICES, FRAME_ENGINES, check_engine
from metis_rt.errors import ConfigError, MetisError

log = logging.getLogger("metis_rt.bridge")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_RATE = 48000
DEFAULT_SERVER = "ws://127.0.0.1:8765"
PROBE_S = 0.5  # how long to look for a server at DEFAULT_SERVER before processing locally


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metis-rt bridge", description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--server",
        help=f"metis-rt server (default: {DEFAULT_SERVER} if one answers there, else --local)",
    )
    where.add_argument("--local", action="store_true", help="process in this process instead of a server")
    p.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default=AUTO,
        help="auto: the server's choice; --local: Metis with its weights and a CUDA device (or --device), "
        "else the CPU denoiser DeepFilterNet3 (se) (default: %(default)s)",
    )
    p.add_argument(
        "--strength",
        type=float,
        help="CPU denoisers: attenuation limit in dB, 0 (none) .. 100 (unlimited, the default)",
    )
    p.add_argument("--token", help="bearer token for the server")
    p.add_argument(
        "--no-reconnect",
        action="store_true",
        help="stop when the server connection is lost or drained (default: move the stream, playing the raw "
        "microphone meanwhile)",
    )
    p.add_argument("--task", choices=TASKS, default="se")
    voice = p.add_mutually_exclusive_group()
    voice.add_argument("--voice", help="a named voice (server voices, or --voices-dir with --local)")
    voice.add_argument("--reference", type=Path, help="a recording of the target voice (tse, vc)")
    p.add_argument("--mix", type=float, default=1.0, help="1 = processed only, 0 = dry only (default 1)")
    p.add_argument("--bypass", action="store_true", help="start in bypass (raw microphone, delayed)")
    dv = p.add_argument_group("devices")
    dv.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    dv.add_argument("--input", help="microphone: index, name substring or pulse:SOURCE (default: system default)")
    dv.add_argument(
        "--output-device",
        help="play into this device instead of creating a virtual microphone (macOS: 'BlackHole 2ch', "
        "Windows: 'CABLE Input'; Linux: pulse:SINK or a name)",
    )
    dv.add_argument("--monitor", help="also play the processed audio here (e.g. headphones)")
    dv.add_argument("--name", default=DEFAULT_SINK_NAME, help="virtual microphone sink name (default %(default)s)")
    dv.add_argument("--description", default=DEFAULT_DESCRIPTION, help="the name apps show (default %(default)r)")
    dv.add_argument("--rate", type=int, default=DEFAULT_RATE, help="device sample rate (default %(default)s)")
    dv.add_argument("--prefill-ms", type=float, default=120.0, help="output buffer prefill (default 120)")
    dv.add_argument("--max-buffer-ms", type=float, default=1000.0, help="output buffer bound (default 1000)")
    mq = p.add_argument_group("MQTT control (docs/mqtt.md)")
    mq.add_argument("--mqtt", help="broker URL mqtt[s]://[user[:pass]@]host[:port][/prefix]")
    mq.add_argument("--mqtt-node", help="node name in the topics (default: bridge-<hostname>)")
    mq.add_argument("--mqtt-ca-file", help="CA certificate for mqtts:// brokers")
    mq.add_argument("--mqtt-insecure", action="store_true", help="mqtts:// without certificate verification")
    lo = p.add_argument_group("--local processing")
    lo.add_argument("--model-dir", type=Path, help="model directory (default: $METIS_RT_MODEL_DIR or the cache)")
    lo.add_argument("--tasks", help="tasks to load for switching (default: just --task)")
    lo.add_argument("--device", help="metis: cpu, cuda or cuda:N (default: cuda if present, else cpu)")
    lo.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    lo.add_argument("--voices-dir", type=Path, help="folder of named voices (NAME.wav) for set/voice")
    lo.add_argument("--stream-config", type=Path, help="streaming config YAML (default configs/streaming.yaml)")
    lo.add_argument("--threads", type=int, help="CPU threads for the models (default: speed.threads, auto = measured)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def default_node() -> str:
    """``bridge-<hostname>``, valid as one MQTT topic level."""
    return "bridge-" + commands.default_node(fallback="host")


def broker_from_args(args):
    if args.mqtt is None:
        return None, None
    try:
        broker = parse_broker_url(args.mqtt, ca_file=args.mqtt_ca_file, insecure=args.mqtt_insecure)
        node = args.mqtt_node or default_node()
        Topics(broker.prefix, node)  # validates the node name
    except (BrokerUrlError, CommandError) as exc:
        raise ConfigError(str(exc)) from None
    if broker.username is not None and broker.password is None and os.environ.get(MQTT_PASSWORD_ENV):
        import dataclasses

        broker = dataclasses.replace(broker, password=os.environ[MQTT_PASSWORD_ENV])
    return broker, node


def check_args(args) -> bytes | None:
    """Usage errors found before any device or model opens; returns the reference file's bytes (if any)."""
    if not 8000 <= args.rate <= 48000:
        raise ConfigError(f"--rate must be in [8000, 48000] Hz, got {args.rate}")
    if not 0.0 <= args.mix <= 1.0:
        raise ConfigError(f"--mix must be in [0, 1], got {args.mix}")
    if args.prefill_ms < 0 or args.max_buffer_ms <= args.prefill_ms:
        raise ConfigError("--prefill-ms must be >= 0 and below --max-buffer-ms")
    if args.duration is not None and args.duration <= 0:
        raise ConfigError("--duration must be positive")
    check_engine(args.engine, args.task)
    if args.strength is not None and not 0.0 <= args.strength <= 100.0:
        raise ConfigError(f"--strength must be in [0, 100] dB, got {args.strength}")
    if args.task in ("tse", "vc") and args.voice is None and args.reference is None:
        raise ConfigError(f"--task {args.task} needs --voice NAME or --reference FILE")
    if args.reference is None:
        return None
    try:
        data = args.reference.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read --reference {args.reference}: {exc}") from exc
    if not args.local and len(data) > MAX_REFERENCE_BYTES:
        raise ConfigError(f"--reference {args.reference} is over {MAX_REFERENCE_BYTES / 1e6:.0f} MB; use <= 30 s")
    return data


def device_config(args, sd, broker, node) -> app.BridgeConfig:
    devices, defaults = dev.query(sd)
    if not devices:
        raise dev.AudioDeviceError("no audio devices found: PortAudio sees no sound card or sound server")
    inp = app.resolve_device(devices, args.input, "input", defaults[0])
    vmic = None
    if args.output_device is not None:
        out = app.resolve_device(devices, args.output_device, "output", defaults[1])
    elif sys.platform.startswith("linux"):
        vmic = VirtualMic(args.name, args.description, rate_hz=args.rate, channels=1)
        out = app.DeviceChoice(app.pulse_device_index(devices, "output"), vmic.sink_name)
    else:
        raise ConfigError(
            "no virtual microphone can be created on this system: install a loopback driver "
            "(macOS: BlackHole, Windows: VB-CABLE) and pass --output-device (see docs/bridge.md)"
        )
    monitor = app.resolve_device(devices, args.monitor, "output", defaults[1]) if args.monitor else None
    return app.BridgeConfig(
        input=inp,
        output=out,
        monitor=monitor,
        input_rate=args.rate,
        output_rate=args.rate,
        virtual_mic=vmic,
        prefill_ms=args.prefill_ms,
        max_buffer_ms=args.max_buffer_ms,
        mqtt=broker,
        node=node or default_node(),
        duration_s=args.duration,
    )


def local_factory(args, settings: BridgeSettings, rate: int, processor=None):
    """Load the models (unless a ``processor`` is given, as tests do) and return the backend factory."""
    import torch

    from metis_rt.audio.files import load_for_model
    from metis_rt.model_settings import check_codebooks, load_official_for, load_stream_config_for
    from metis_rt.models.hub import check_model_dir, default_model_dir
    from metis_rt.server.voices import VoiceLibrary
    from metis_rt.streaming.config import STREAMING_CONFIG
    from metis_rt.streaming.geometry import CODEC_RATE, SSL_RATE

    tasks = [t.strip() for t in (args.tasks or args.task).split(",") if t.strip()]
    if set(tasks) - set(TASKS) or args.task not in tasks:
        raise ConfigError(f"--tasks must name some of {', '.join(TASKS)} including --task {args.task}")
    model_dir = (args.model_dir or default_model_dir()).expanduser()
    official = load_official_for(model_dir)  # configs/metis.yaml < the model directory's metis-rt.yaml
    stream_cfg = load_stream_config_for(model_dir, args.stream_config or STREAMING_CONFIG)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if processor is None:
        engine = _local_engine(args, tasks, model_dir, official)
        if engine in FRAME_ENGINES:
            return _denoiser_factory(engine, stream_cfg, settings, rate)
    if processor is None:
        from metis_rt.pipeline.components import load_components, parse_dtype, resolve_config_for_tasks
        from metis_rt.streaming.processor import MetisWindowProcessor
        from metis_rt.streaming.thread_probe import ProbeSettings

        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: no CUDA device available")
        cfg, _ = resolve_config_for_tasks(model_dir, tasks, official)
        check_codebooks(model_dir, cfg, tasks, official, stream_cfg)
        check_model_dir(model_dir, tasks, cfg)
        comps = load_components(model_dir, tasks, cfg, dtype=parse_dtype(args.dtype), device=device)
        processor = MetisWindowProcessor(
            comps, stream_cfg.speed.with_threads(args.threads), ProbeSettings(official, stream_cfg)
        )
    voices = VoiceLibrary(args.voices_dir)
    reference = None
    if args.reference is not None:
        audio = load_for_model(args.reference, rates=(SSL_RATE, CODEC_RATE), min_seconds=1.0)
        reference = processor.prepare_reference(audio[SSL_RATE], audio[CODEC_RATE])
    elif args.voice is not None:
        try:
            reference = voices.get(args.voice, processor.prepare_reference)
        except KeyError:
            raise ConfigError(f"no voice {args.voice!r} in --voices-dir ({voices.names()})") from None

    def factory(on_output):
        return LocalBackend(
            processor, official, stream_cfg, tasks, settings, rate, rate, on_output, voices=voices, reference=reference
        )

    return factory


def _local_engine(args, tasks: list[str], model_dir: Path, official) -> str:
    """``--engine`` resolved for local processing (metis_rt.engines); prints the one line auto has to say."""
    import torch

    from metis_rt.engines import choose_engine
    from metis_rt.models.hub import missing_files
    from metis_rt.pipeline.components import resolve_config_for_tasks

    def missing() -> list[str]:
        cfg, _ = resolve_config_for_tasks(model_dir, tasks, official)
        return [f.local_path for f in missing_files(model_dir, tasks, cfg)]

    engine = args.engine if args.engine != AUTO or set(tasks) <= {"se"} else "metis"  # tse/vc: Metis only
    choice = choose_engine(engine, args.task, missing, device=args.device, cuda=torch.cuda.is_available())
    if choice.note:
        print(choice.note, file=sys.stderr, flush=True)
    return choice.engine


def _denoiser_factory(engine: str, stream_cfg, settings: BridgeSettings, rate: int):
    from metis_rt.bridge.backends import LocalDenoiserBackend
    from metis_rt.denoisers import open_denoiser

    denoiser = open_denoiser(engine)  # EngineUnavailable (says why) now, before any device opens

    def factory(on_output):
        return LocalDenoiserBackend(denoiser, stream_cfg, settings, rate, rate, on_output)

    return factory


def server_reachable(url: str, timeout_s: float = PROBE_S) -> bool:
    """Whether something accepts TCP connections at ``url``'s host and port (the default server, on loopback)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout_s):
            return True
    except OSError:
        return False


def remote_factory(args, settings: BridgeSettings, rate: int, reference: bytes | None):
    url = wire.stream_url(args.server)

    def factory(on_output):
        move = MoveOptions(reconnect=not args.no_reconnect)
        return RemoteBackend(url, settings, rate, rate, on_output, token=args.token, reference=reference, move=move)

    return factory


async def _run(cfg: app.BridgeConfig, factory, sd) -> None:
    display = StatusDisplay(sys.stderr, keys=cbreak_keys(sys.stdin))
    with display:
        await app.Bridge(cfg, factory, sd, display).run()


def main(argv: Sequence[str] | None = None, *, processor=None) -> int:
    """``processor``: use this window processor for ``--local`` instead of loading models (tests)."""
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        route_alsa_messages()  # alsa-lib's "underrun occurred" lines would break the status line; xruns are counted
        sd = dev.load_sounddevice()
        if args.list_devices:
            print(dev.describe(*dev.query(sd)))
            if sys.platform.startswith("linux"):
                print(describe_pulse_endpoints())
            return EXIT_OK
        reference = check_args(args)
        broker, node = broker_from_args(args)
        cfg = device_config(args, sd, broker, node)
        settings = BridgeSettings(
            args.task, args.bypass, args.mix, args.voice, engine=args.engine, strength=args.strength
        )
        if not args.local and args.server is None:
            args.local = not server_reachable(DEFAULT_SERVER)  # out of the box: no server, process here
            args.server = DEFAULT_SERVER
            log.info("no --server given: %s", "processing locally" if args.local else f"using {DEFAULT_SERVER}")
        if args.local:
            factory = local_factory(args, settings, args.rate, processor)
        else:
            factory = remote_factory(args, settings, args.rate, reference)
    except MetisError as exc:
        print(f"metis-rt bridge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(_run(cfg, factory, sd))
    except (BackendError, dev.AudioDeviceError) as exc:
        print(f"metis-rt bridge: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except MetisError as exc:
        print(f"metis-rt bridge: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK
