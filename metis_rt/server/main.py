"""``metis-rt serve`` / ``python run_server.py``: load the models, warm up, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from metis_rt.config import STAGE1_FAMILIES, TASKS
from metis_rt.engines import AUTO, ENGINE_CHOICES, FRAME_ENGINES, METIS
from metis_rt.errors import ConfigError, MetisError
from metis_rt.server.resume_token import (
    DEFAULT_CHECKPOINT_INTERVAL_S,
    DEFAULT_MAX_AGE_S,
    ResumeKeys,
    ResumeSettings,
)

log = logging.getLogger("metis_rt.server")

SERVE_TASKS = (*TASKS, "tts")  # l2s is offline-only (metis-rt process --task l2s)


def plan_models(tasks_arg: str, stage1_arg: str) -> tuple[list[str], list[str], list[str]]:
    """``--tasks`` and ``--stage1`` -> (tasks, stage-1 families, stage-1 variants to load), checked.

    ``--stage1 omni`` serves every task from the Metis-Omni checkpoint; ``task,omni`` loads both and each session
    chooses (the first family listed is the default).
    """
    from metis_rt.models.hub import stage1_targets

    tasks = list(dict.fromkeys(t.strip() for t in tasks_arg.split(",") if t.strip()))
    if "l2s" in tasks:
        raise ConfigError("--tasks: l2s is offline-only; run it with `metis-rt process --task l2s`")
    if not tasks or set(tasks) - set(SERVE_TASKS):
        raise ConfigError(f"--tasks must name some of {', '.join(SERVE_TASKS)}, got {tasks_arg!r}")
    families = list(dict.fromkeys(f.strip() for f in stage1_arg.split(",") if f.strip()))
    if not families or set(families) - set(STAGE1_FAMILIES):
        raise ConfigError(
            f"--stage1 must name some of {', '.join(STAGE1_FAMILIES)} (e.g. task,omni), got {stage1_arg!r}"
        )
    variants = list(dict.fromkeys(v for family in families for v in stage1_targets(tasks, family)))
    return tasks, families, variants


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metis-rt serve", description="real-time Metis server (WebSocket + HTTP)")
    p.add_argument("--host", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 8765; 0 = any free port)")
    p.add_argument("--model-dir", "--model", dest="model_dir", type=Path, help="model directory")
    p.add_argument(
        "--tasks",
        help=f"tasks to serve: some of {','.join(SERVE_TASKS)} (default: se,tse,vc with Metis, se on the CPU engine)",
    )
    p.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default=AUTO,
        help="auto: Metis when its weights and a CUDA device (or an explicit --device) are there, plus the CPU "
        "denoisers for se (sessions choose); without Metis, se on DeepFilterNet3. metis: Metis only. "
        "deepfilternet3 / rnnoise: that CPU denoiser only (se) (default: %(default)s)",
    )
    p.add_argument(
        "--stage1",
        default="task",
        help="stage-1 models to load: task (each task's own), omni (Metis-Omni serves se/tse/vc/tts), or task,omni "
        "(both; sessions choose, default the first) (default: task)",
    )
    p.add_argument("--device", help="metis: cpu, cuda or cuda:N (default: cuda if present, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--max-sessions", type=int)
    p.add_argument("--token", action="append", default=[], help="accepted bearer token (repeatable)")
    p.add_argument("--token-file", type=Path, help="file with one accepted token per line")
    sec = p.add_argument_group("security (docs/security.md)")
    sec.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="web origin (scheme://host[:port]) allowed to open sessions besides the server's own page and "
        "loopback pages (repeatable; * = any page: unsafe)",
    )
    sec.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME", help="Host name it answers to (repeatable)"
    )
    sec.add_argument("--tls-cert", type=Path, metavar="PEM", help="certificate (chain) for wss:// and https://")
    sec.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    sec.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback --host without a token (trusted networks only)"
    )
    p.add_argument("--config", type=Path, help="server config YAML (default configs/server.yaml)")
    p.add_argument("--stream-config", type=Path, help="streaming config YAML (default configs/streaming.yaml)")
    p.add_argument("--voices-dir", type=Path, help="folder of named reference voices for TSE/VC")
    p.add_argument("--deterministic", action="store_true", help="noise-free decoding (reproducible tests)")
    p.add_argument("--threads", type=int, help="CPU threads for the models (default: speed.threads, auto = measured)")
    m = p.add_argument_group("MQTT control (docs/mqtt.md)")
    m.add_argument(
        "--mqtt",
        metavar="URL",
        help="broker mqtt[s]://[user@]host[:port][/prefix]; the password is best given in $METIS_RT_MQTT_PASSWORD",
    )
    m.add_argument("--mqtt-node", metavar="NAME", help="this server's topic level (default: the host name)")
    m.add_argument("--mqtt-ca-file", type=Path, metavar="PEM", help="CA bundle to trust for mqtts://")
    m.add_argument("--mqtt-insecure", action="store_true", help="mqtts:// without certificate checks (testing only)")
    r = p.add_argument_group('resume (docs/protocol.md, "Resume")')
    r.add_argument(
        "--resume-key-file",
        type=Path,
        metavar="FILE",
        help="keys shared by the workers (one per line, >= 32 bytes; the first signs): send session.checkpoint "
        "tokens and accept session.resume",
    )
    r.add_argument(
        "--resume-max-age-s",
        type=float,
        default=DEFAULT_MAX_AGE_S,
        help=f"refuse resume tokens older than this (default {DEFAULT_MAX_AGE_S:g})",
    )
    r.add_argument(
        "--checkpoint-interval-s",
        type=float,
        default=DEFAULT_CHECKPOINT_INTERVAL_S,
        help="send a session.checkpoint this often: shorter = less to recompute after a move, more token traffic "
        f"(about 150 kB per checkpoint at the default geometry; default {DEFAULT_CHECKPOINT_INTERVAL_S:g})",
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def read_tokens(args) -> list[str]:
    tokens = list(args.token)
    if args.token_file is not None:
        try:
            lines = args.token_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {args.token_file}: {exc}") from exc
        tokens += [t.strip() for t in lines if t.strip() and not t.startswith("#")]
    return tokens


def server_config(args):
    """configs/server.yaml (or --config) with the command line's changes; MQTT settings are checked here too."""
    from metis_rt.control.commands import parse_broker_url
    from metis_rt.server.config import SERVER_CONFIG, load_server_config, mqtt_settings

    server_cfg = load_server_config(args.config or SERVER_CONFIG)
    changes = {
        "host": args.host,
        "port": args.port,
        "max_sessions": args.max_sessions,
        "voices_dir": str(args.voices_dir) if args.voices_dir else None,
        "mqtt": args.mqtt,
        "mqtt_node": args.mqtt_node,
        "mqtt_ca_file": str(args.mqtt_ca_file) if args.mqtt_ca_file else None,
        "mqtt_insecure": True if args.mqtt_insecure else None,
        "allow_origins": tuple(args.allow_origin) or None,
        "allow_hosts": tuple(args.allow_host) or None,
        "tls_cert": str(args.tls_cert) if args.tls_cert else None,
        "tls_key": str(args.tls_key) if args.tls_key else None,
        "insecure": True if args.insecure else None,
    }
    server_cfg = dataclasses.replace(server_cfg, **{k: v for k, v in changes.items() if v is not None})
    mqtt_settings(server_cfg, mqtt_password())  # ConfigError for a bad URL, node or CA file
    if args.mqtt and parse_broker_url(args.mqtt).password is not None:
        log.warning("the MQTT password on the command line is visible to other users; set METIS_RT_MQTT_PASSWORD")
    return server_cfg


def check_port_free(host: str, port: int) -> None:
    """ConfigError (one line) when `port` on `host` cannot be bound: checked before the slow model load."""
    if not port:
        return  # 0: any free port
    family = socket.AF_INET6 if ":" in (host or "") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use (another metis-rt server?): stop that process or "
                    "choose another port with --port"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def mqtt_password() -> str | None:
    from metis_rt.control.commands import MQTT_PASSWORD_ENV

    return os.environ.get(MQTT_PASSWORD_ENV) or None


def plan_engines(args, tasks: list[str], metis_missing) -> tuple[bool, list[str], str | None]:
    """(load Metis, CPU denoisers to offer, the one line to print) for ``--engine`` (rules: metis_rt.engines)."""
    import torch

    from metis_rt.denoisers import EngineUnavailable, denoiser_status
    from metis_rt.engines import choose_engine

    usable = [name for name, why in denoiser_status().items() if why is None]
    if args.engine in FRAME_ENGINES:
        if tasks != ["se"] and args.tasks is not None:
            raise ConfigError(f"--engine {args.engine} only denoises: serve --tasks se (not {','.join(tasks)})")
        choose_engine(args.engine, "se", metis_missing, device=args.device, cuda=False)  # unavailable: says why
        return False, [args.engine], None
    if args.engine == METIS:
        return True, [], None
    if args.tasks is not None and set(tasks) - {"se"}:
        return True, usable if "se" in tasks else [], None  # tse/vc/tts asked for: Metis (missing files: named)
    try:
        metis_options = args.deterministic or args.stage1 != "task"  # options that only Metis has
        cuda = torch.cuda.is_available()
        choice = choose_engine(AUTO, "se", metis_missing, device=args.device, cuda=cuda, metis_options=metis_options)
    except EngineUnavailable:
        return True, [], None  # no CPU engine either: Metis, or the error naming its missing files
    if choice.engine == METIS:
        return True, usable, None
    others = [t for t in tasks if t != "se"]
    note = choice.note + (f"; {', '.join(others)} need Metis and are not served" if others else "")
    return False, usable, note


def resume_settings(args) -> ResumeSettings | None:
    """The resume keys and limits of the command line (None: no --resume-key-file); ConfigError if unusable."""
    if args.resume_key_file is None:
        return None
    return ResumeSettings(ResumeKeys.from_file(args.resume_key_file), args.resume_max_age_s, args.checkpoint_interval_s)


def build_server(args):
    import torch

    from metis_rt.model_settings import check_codebooks, load_official_for, load_stream_config_for
    from metis_rt.models.hub import (
        check_model_dir,
        check_model_dir_exists,
        default_model_dir,
        missing_files,
        stage1_targets,
        usable_tasks,
    )
    from metis_rt.pipeline.components import load_components, parse_dtype, resolve_config, resolve_config_for_tasks
    from metis_rt.server.app import MetisServer, check_exposure, tls_context
    from metis_rt.server.resume import model_identity
    from metis_rt.streaming.config import STREAMING_CONFIG
    from metis_rt.streaming.processor import MetisWindowProcessor
    from metis_rt.streaming.thread_probe import ProbeSettings

    if args.threads is not None and args.threads < 1:  # checked first, whichever engine serves
        raise ConfigError("--threads must be at least 1")
    tasks, families, variants = plan_models(args.tasks or ",".join(TASKS), args.stage1)
    server_cfg = server_config(args)  # before the models load: a bad broker URL fails at once
    check_exposure(server_cfg.host, frozenset(read_tokens(args)), server_cfg.insecure)  # and an open bind
    tls_context(server_cfg)  # and unreadable TLS files
    resume = resume_settings(args)  # and unusable resume keys
    check_port_free(server_cfg.host, server_cfg.port)  # and a port in use
    model_dir = (args.model_dir or default_model_dir()).expanduser()
    if args.model_dir is not None:  # asked for by name: a typo is an error, not a quiet fall back to a CPU engine
        check_model_dir_exists(model_dir, tasks)
    official = load_official_for(model_dir)  # configs/metis.yaml < the model directory's metis-rt.yaml
    stream_cfg = load_stream_config_for(model_dir, args.stream_config or STREAMING_CONFIG)

    def se_missing() -> list[str]:
        cfg, _ = resolve_config(model_dir, "se", official)
        return [f.local_path for f in missing_files(model_dir, ["se"], cfg)]

    load_metis, frame_engines, note = plan_engines(args, tasks, se_missing)
    if note:
        print(note, file=sys.stderr, flush=True)
    if not load_metis:
        return MetisServer(
            None,
            official,
            stream_cfg,
            server_cfg,
            tasks=[],
            tokens=read_tokens(args),
            mqtt_password=mqtt_password(),
            frame_engines=frame_engines,
        )

    def model_config(variants):
        lora_tasks = [v for v in variants if v in TASKS]  # each a LoRA over metis_base: its rank names its files
        if lora_tasks:
            return resolve_config_for_tasks(model_dir, lora_tasks, official)[0]
        return resolve_config(model_dir, variants[0], official)[0]

    cfg = model_config(variants)
    check_codebooks(model_dir, cfg, tasks, official, stream_cfg)  # a broken config is named before missing weights
    present = usable_tasks(model_dir, tasks, cfg, lambda task: [v for f in families for v in stage1_targets([task], f)])
    if present != tasks:  # serve what the directory holds (the warning names the rest and how to fetch it)
        tasks, families, variants = plan_models(",".join(present), args.stage1)
        cfg = model_config(variants)
    check_model_dir(model_dir, variants, cfg)  # exactly the files of these stage-1 models, before any loading
    tokenizer = None
    if "tts" in tasks:
        from metis_rt.text.tokenizer import PhoneTokenizer

        tokenizer = PhoneTokenizer.load(model_dir)
        tokenizer.g2p("Hello.", "en")  # espeak-ng missing: say so now, not at the first request
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device available")
    comps = load_components(model_dir, variants, cfg, dtype=parse_dtype(args.dtype), device=device)
    return MetisServer(
        MetisWindowProcessor(comps, stream_cfg.speed.with_threads(args.threads), ProbeSettings(official, stream_cfg)),
        official,
        stream_cfg,
        server_cfg,
        tasks=tasks,
        stage1=families,
        tokenizer=tokenizer,
        tokens=read_tokens(args),
        deterministic=args.deterministic,
        mqtt_password=mqtt_password(),
        frame_engines=frame_engines,
        resume=resume,
        model_identity=model_identity(model_dir),
    )


async def _serve(server) -> None:
    server.install_signal_handlers()
    await server.run(on_ready=lambda port: print(f"metis-rt server ready on port {port}", flush=True))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = build_server(args)
    except MetisError as exc:
        print(f"metis-rt serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(server))
    except OSError as exc:  # the port was taken while the models loaded
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        print(f"metis-rt serve: error: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
