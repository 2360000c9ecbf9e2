"""``metis-rt`` command line: ``download``, ``process``, ``parity``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from metis_rt.config import TASKS, load_official_config
from metis_rt.errors import ConfigError, MetisError
from metis_rt.pipeline.segments import DEFAULT_MAX_SEGMENT_S

log = logging.getLogger("metis_rt")

EXIT_FAILURE = 1
EXIT_USAGE = 2


def _tasks(value: str) -> list[str]:
    tasks = [t.strip() for t in value.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    return tasks


def _int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", type=Path, help="model directory (default: $METIS_RT_MODEL_DIR or ~/.cache/...)")
    p.add_argument("--config", type=Path, help="model/decoding config YAML (default: configs/metis.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set decoding.se.stage1.steps=4",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metis-rt", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("download", help="fetch the official weights a task needs into a model directory")
    d.add_argument("--tasks", type=_tasks, default=list(TASKS), help="comma-separated tasks (default: se,tse,vc)")
    d.add_argument("--cache-dir", type=Path, help="Hugging Face cache directory (default: the HF default)")
    d.add_argument("--token", help="Hugging Face token (default: the logged-in one, if any)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_model_args(d)

    p = sub.add_parser("process", help="run SE / TSE / VC on an audio file (24 kHz mono out)")
    p.add_argument("input", type=Path, help="input audio (wav, flac, ogg, ...; any rate and channel count)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output file (.wav, .flac or .ogg)")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--reference", type=Path, help="target-speaker recording (required for tse and vc)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--deterministic", action="store_true", help="noise-free decoding (reproducible, parity mode)")
    p.add_argument("--seed", type=int, help="seed of the sampling noise")
    p.add_argument("--stage1-steps", type=int, help="stage-1 decoding steps (official: se/tse 10, vc 20)")
    p.add_argument("--cfg", type=float, help="stage-1 classifier-free guidance (official: se/tse 0, vc 1.0)")
    p.add_argument("--temperature", type=float, help="stage-1 sampling temperature (official 0.9)")
    p.add_argument("--s2a-steps", type=_int_list, help="12 comma-separated S2A steps per layer (official 40,16,1,...)")
    p.add_argument("--s2a-cfg", type=float, help="S2A full-model guidance (official 2.5)")
    p.add_argument("--s2a-temperature", type=float, help="S2A sampling temperature (official 1.5)")
    p.add_argument(
        "--max-segment-s",
        type=float,
        default=DEFAULT_MAX_SEGMENT_S,
        help="longer inputs are processed in segments cut at pauses (default: %(default)s)",
    )
    p.add_argument("--allow-clipped", action="store_true", help="process heavily clipped input anyway")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(p)

    q = sub.add_parser("parity", help="check our implementation against reference vector directories")
    q.add_argument("dirs", nargs="+", type=Path, help="vector directories (model dir + cases/manifest.json)")
    q.add_argument("--strict", action="store_true", help="also fail on checks reported as unsupported")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except MetisError as exc:
        print(f"metis-rt {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _official(args):
    from metis_rt.config import OFFICIAL_MODEL_CONFIG

    return load_official_config(args.config or OFFICIAL_MODEL_CONFIG, args.overrides)


def _model_dir(args) -> Path:
    from metis_rt.models.hub import default_model_dir

    return (args.model_dir or default_model_dir()).expanduser()


def cmd_download(args) -> int:
    from metis_rt.models.hub import download

    fetched = download(
        _model_dir(args), args.tasks, _official(args).model, args.cache_dir, args.token, progress=not args.no_progress
    )
    print(f"{len(fetched)} file(s) fetched into {_model_dir(args)}; all files for {','.join(args.tasks)} present")
    return 0


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this torch build or machine has no CUDA device; use --device cpu")
    return device


def cmd_process(args) -> int:
    from metis_rt.audio.files import write_audio
    from metis_rt.models.hub import check_model_dir
    from metis_rt.pipeline.components import load_components, parse_dtype, resolve_config
    from metis_rt.pipeline.offline import OUTPUT_SAMPLE_RATE, MetisPipeline
    from metis_rt.pipeline.process import (
        DecodingOverrides,
        check_output_path,
        make_noise,
        process,
        read_inputs,
        task_settings,
    )

    # Everything that can be wrong with the request is checked before the (slow) model load.
    model_dir, device, dtype = _model_dir(args), _device(args.device), parse_dtype(args.dtype)
    output = check_output_path(args.output)
    cfg, official = resolve_config(model_dir, args.task, _official(args))
    overrides = DecodingOverrides(
        args.stage1_steps, args.cfg, args.temperature, args.s2a_steps, args.s2a_cfg, args.s2a_temperature
    )
    settings = task_settings(official, args.task, overrides)
    inputs = read_inputs(args.task, args.input, args.reference, allow_clipped=args.allow_clipped)
    check_model_dir(model_dir, [args.task], cfg)
    pipeline = MetisPipeline(load_components(model_dir, [args.task], cfg, dtype=dtype, device=device))
    noise = make_noise(args.deterministic, args.seed, device)
    wav, report = process(
        pipeline, args.task, inputs, settings, noise, max_segment_s=args.max_segment_s, progress=not args.no_progress
    )
    write_audio(output, wav, OUTPUT_SAMPLE_RATE)
    print(
        f"{output}: {report.output_s:.2f} s at 24 kHz from {report.input_s:.2f} s of input "
        f"({report.segments} segment(s), {report.compute_s:.1f} s, real-time factor {report.real_time_factor:.2f})"
    )
    return 0


def cmd_parity(args) -> int:
    from metis_rt.parity import run_directory

    counts = {"ok": 0, "FAIL": 0, "unsupported": 0}
    for root in args.dirs:
        if not (root / "cases" / "manifest.json").is_file():
            raise ConfigError(f"{root} is not a vector directory (no cases/manifest.json)")
        print(f"== {root}", flush=True)
        for result in run_directory(root):
            counts[result.status] += 1
            print(result.line(), flush=True)
    print(f"{counts['ok']} ok, {counts['FAIL']} failed, {counts['unsupported']} unsupported")
    failed = counts["FAIL"] or (args.strict and counts["unsupported"])
    return EXIT_FAILURE if failed else 0


COMMANDS = {"download": cmd_download, "process": cmd_process, "parity": cmd_parity}
