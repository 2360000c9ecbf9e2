"""``metis-rt`` command line: ``download``, ``process``, ``parity``, ``serve``, ``bridge``, ``data``, ``train``,
``eval``."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from metis_rt.config import (
    ALL_TASKS,
    GENERATIVE_TASKS,
    STAGE1_FAMILIES,
    TASKS,
    stage1_variant,
)
from metis_rt.errors import ClippedInputError, ConfigError, MetisError
from metis_rt.pipeline.segments import DEFAULT_MAX_SEGMENT_S

log = logging.getLogger("metis_rt")

EXIT_FAILURE = 1
EXIT_USAGE = 2


def _tasks(value: str, known: tuple[str, ...] = TASKS) -> list[str]:
    tasks = [t.strip() for t in value.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(known))
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; choose from {', '.join(known)}")
    return tasks


def _download_targets(value: str) -> list[str]:
    from metis_rt.models.hub import DOWNLOAD_TARGETS

    return _tasks(value, DOWNLOAD_TARGETS)


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


def _add_engine_arg(p: argparse.ArgumentParser) -> None:
    from metis_rt.engines import AUTO, ENGINE_CHOICES

    p.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default=AUTO,
        help="auto: Metis when its weights and a CUDA device (or an explicit --device) are there, else the CPU "
        "denoiser DeepFilterNet3 for se (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metis-rt", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("download", help="fetch the official weights a task needs into a model directory")
    d.add_argument(
        "--tasks",
        type=_download_targets,
        default=list(TASKS),
        help="comma-separated: se,tse,vc,tts,l2s and/or omni (the Metis-Omni checkpoint) (default: se,tse,vc)",
    )
    d.add_argument("--cache-dir", type=Path, help="Hugging Face cache directory (default: the HF default)")
    d.add_argument("--token", help="Hugging Face token (default: the logged-in one, if any)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument(
        "--revision",
        help="fetch the official repositories at this revision (e.g. main) instead of the pinned commits; "
        "published hashes then cannot be checked (default: the pinned commits, verified)",
    )
    _add_model_args(d)

    p = sub.add_parser("process", help="run SE / TSE / VC on an audio file, TTS on text, L2S on visual features")
    p.add_argument("input", type=Path, nargs="?", help="input audio for se/tse/vc (any format, rate and channels)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output file (.wav, .flac or .ogg; mono: Metis 24 kHz, the CPU denoisers at the input's rate)",
    )
    p.add_argument("--task", choices=ALL_TASKS, required=True)
    _add_engine_arg(p)
    p.add_argument(
        "--reference", type=Path, help="target-speaker recording (tse, vc) / the voice to speak in (tts, l2s)"
    )
    p.add_argument(
        "--stage1",
        choices=STAGE1_FAMILIES,
        default="task",
        help="stage-1 model: the task's own checkpoint, or omni = Metis-Omni for se/tse/vc/tts (default: task)",
    )
    gen = p.add_argument_group("tts / l2s")
    gen.add_argument("--text", help="tts: the text to speak")
    gen.add_argument("--text-file", type=Path, help="tts: read the text from a UTF-8 file")
    gen.add_argument("--reference-text", help="tts: the words spoken in --reference (its transcript)")
    gen.add_argument("--language", default="en", help="tts: language of --text (default: en)")
    gen.add_argument("--reference-language", help="tts: language of --reference-text (default: --language)")
    gen.add_argument("--visual-features", type=Path, help="l2s: [frames, 768] features at 25 fps (.npy / .npz)")
    gen.add_argument("--visual-fps", type=float, help="l2s: frame rate of --visual-features (must be 25)")
    p.add_argument("--device", help="metis: cpu, cuda or cuda:N (default: cuda if present, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--deterministic", action="store_true", help="noise-free decoding (reproducible, parity mode)")
    p.add_argument("--seed", type=int, help="seed of the sampling noise")
    p.add_argument("--stage1-steps", type=int, help="stage-1 decoding steps (official: se/tse 10, vc 20)")
    p.add_argument("--cfg", type=float, help="stage-1 classifier-free guidance (official: se/tse 0, vc 1.0)")
    p.add_argument("--temperature", type=float, help="stage-1 sampling temperature (official 0.9)")
    p.add_argument(
        "--s2a-steps", type=_int_list, help="S2A steps, one per acoustic codebook layer (official 12: 40,16,1,...)"
    )
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
    st = p.add_argument_group("streaming simulation (--stream): the live engine, fed from the file")
    st.add_argument("--stream", action="store_true", help="process as a live stream and report latency and RTF")
    st.add_argument("--chunk-ms", type=int, help="hop / chunk size (default from configs/streaming.yaml: 240)")
    st.add_argument("--lookahead-ms", type=int, help="lookahead (default 160)")
    st.add_argument("--left-context-ms", type=int, help="stage-1 / SSL left context (default 1600)")
    st.add_argument("--s2a-left-context-ms", type=int, help="S2A acoustic prompt context (default 1600)")
    st.add_argument("--decoder-left-context-ms", type=int, help="codec decoder context (default 400)")
    st.add_argument("--crossfade-ms", type=int, help="join of consecutive chunks (default 20)")
    st.add_argument("--packet-ms", type=float, default=20.0, help="input packet size (default: %(default)s)")
    st.add_argument("--realtime", action="store_true", help="feed packets on the wall clock (drops if too slow)")
    st.add_argument("--stream-config", type=Path, help="streaming config YAML (default: configs/streaming.yaml)")
    _add_model_args(p)

    sv = sub.add_parser("serve", help="run the real-time server (options: metis-rt serve --help)", add_help=False)
    sv.add_argument("serve_args", nargs=argparse.REMAINDER)

    br = sub.add_parser(
        "bridge", help="microphone -> metis-rt -> virtual microphone (options: metis-rt bridge --help)", add_help=False
    )
    br.add_argument("bridge_args", nargs=argparse.REMAINDER)

    da = sub.add_parser("data", help="datasets: build-eval (the evaluation set), build-train (training speech)")
    da_sub = da.add_subparsers(dest="data_command", required=True)
    be = da_sub.add_parser("build-eval", help="build the evaluation set from Debian speech/noise packages")
    be.add_argument("--out", type=Path, required=True, help="output folder (manifest.json + audio)")
    be.add_argument("--seed", type=int, default=0)
    be.add_argument("--quick", action="store_true", help="a small subset (seconds to build)")
    bt = da_sub.add_parser("build-train", help="render the training speech corpus (TTS voices + Debian recordings)")
    bt.add_argument("--out", type=Path, required=True, help="output folder (manifest.json + 24 kHz wavs)")
    bt.add_argument("--minutes", type=float, default=60.0, help="minutes of clean speech (default: %(default)s)")
    bt.add_argument("--seed", type=int, default=0)
    bt.add_argument("--workers", type=int, default=2, help="rendering threads (default: %(default)s)")
    bt.add_argument("--no-progress", action="store_true")

    tr = sub.add_parser("train", help="train or fine-tune a model (options: metis-rt train --help)", add_help=False)
    tr.add_argument("train_args", nargs=argparse.REMAINDER)

    ev = sub.add_parser("eval", help="evaluate systems on the evaluation set; writes a report folder")
    ev.add_argument("--out", type=Path, required=True, help="report folder (report.md, clips.csv, PNG plots, audio/)")
    ev.add_argument("--set", dest="set_dir", type=Path, help="an evaluation set folder (default: build one in OUT/set)")
    ev.add_argument("--quick", action="store_true", help="a small subset of items and no WER (CI-sized)")
    ev.add_argument("--per-task", type=int, help="at most N items per task: a fixed seeded sample")
    ev.add_argument("--model-dir", type=Path, help="add the metis-* systems (offline + streaming) from this folder")
    ev.add_argument("--systems", help="comma-separated systems (default: all usable)")
    ev.add_argument(
        "--engine",
        choices=("auto", "metis", "deepfilternet3", "rnnoise"),
        default="auto",
        help="only this engine's systems (and unprocessed); auto: every usable system (default)",
    )
    ev.add_argument("--tasks", type=_tasks, help="only these tasks (default: every task in the set)")
    ev.add_argument("--metrics", help="comma-separated metrics (default: all; --quick: all but wer)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--workers", type=int, default=2, help="metric worker processes (default 2)")
    ev.add_argument("--seed", type=int, default=0, help="seed of a set built on the fly")
    ev.add_argument("--no-progress", action="store_true")

    q = sub.add_parser("parity", help="check our implementation against reference vector directories")
    q.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        help="vector directories (model dir + cases/manifest.json), or a folder holding them (tests/data/parity)",
    )
    q.add_argument("--strict", action="store_true", help="also fail on checks reported as unsupported")
    return parser


PASS_THROUGH = ("serve", "bridge", "train")  # subcommands with their own parser: everything after the name goes to it


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASS_THROUGH:  # argparse.REMAINDER would not pass leading options such as --help
        return COMMANDS[argv[0]](argparse.Namespace(**{f"{argv[0]}_args": argv[1:]}))
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ClippedInputError as exc:  # the Python API's keyword would mislead on a command line
        print(
            f"metis-rt {args.command}: error: {exc.with_hint('pass --allow-clipped to process it anyway')}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except MetisError as exc:
        print(f"metis-rt {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _official(args):
    """--config (default configs/metis.yaml) < the model directory's metis-rt.yaml < --set."""
    from metis_rt.config import OFFICIAL_MODEL_CONFIG
    from metis_rt.model_settings import load_official_for

    return load_official_for(_model_dir(args), args.config or OFFICIAL_MODEL_CONFIG, args.overrides)


def _model_dir(args) -> Path:
    from metis_rt.models.hub import default_model_dir

    return (args.model_dir or default_model_dir()).expanduser()


def cmd_download(args) -> int:
    from metis_rt.config import OFFICIAL_MODEL_CONFIG, load_official_config
    from metis_rt.models.download import download

    # only the architecture matters here, and a model directory's metis-rt.yaml holds none: it is not read
    model = load_official_config(args.config or OFFICIAL_MODEL_CONFIG, args.overrides).model
    report = download(
        _model_dir(args),
        args.tasks,
        model,
        args.cache_dir,
        args.token,
        progress=not args.no_progress,
        revision=args.revision,
    )
    for line in report.lines():
        print(line)
    print(f"all files for {','.join(args.tasks)} present")
    return 0


def _device(name: str):
    import torch

    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this torch build or machine has no CUDA device; use --device cpu")
    return device


def check_request_paths(args) -> None:
    """Every path the request names, checked before torch/transformers are imported (that takes seconds)."""
    from metis_rt.audio.files import check_audio_file, check_output_extension

    check_output_extension(args.output)
    if args.task not in GENERATIVE_TASKS:
        if args.input is None:
            raise ConfigError(f"task {args.task!r} needs an input audio file")
        check_audio_file(args.input)
    if args.reference is not None:
        check_audio_file(args.reference, "reference audio file (--reference)")
    for path, option in ((args.text_file, "--text-file"), (args.visual_features, "--visual-features")):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{option} {str(path)!r} does not exist (or is not a file); check the path")
    if args.model_dir is not None and not args.model_dir.expanduser().is_dir():
        folder = args.model_dir.expanduser()
        target = stage1_variant(args.task, args.stage1)
        raise ConfigError(
            f"model directory {str(folder)!r} does not exist; check --model-dir. To fetch the weights into it: "
            f"metis-rt download --tasks {target} --model-dir {shlex.quote(str(folder))}"
        )


def cmd_process(args) -> int:
    check_request_paths(args)  # a typo is reported in a fraction of a second, not after the model stack loads
    from metis_rt.audio.files import write_audio
    from metis_rt.model_settings import check_codebooks
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

    if args.task in GENERATIVE_TASKS:
        return cmd_generate(args)
    if args.input is None:
        raise ConfigError(f"task {args.task!r} needs an input audio file")
    choice = _choose_engine(args)
    if choice.engine != "metis":
        return cmd_process_frames(args, choice.engine)
    args.device = choice.device
    if args.stream:
        return cmd_process_stream(args)
    # Everything that can be wrong with the request is checked before the (slow) model load.
    model_dir, device, dtype = _model_dir(args), _device(args.device), parse_dtype(args.dtype)
    output = check_output_path(args.output)
    cfg, official = resolve_config(model_dir, args.task, _official(args))
    check_codebooks(model_dir, cfg, [args.task], official)
    overrides = DecodingOverrides(
        args.stage1_steps, args.cfg, args.temperature, args.s2a_steps, args.s2a_cfg, args.s2a_temperature
    )
    settings = task_settings(official, args.task, overrides)
    inputs = read_inputs(args.task, args.input, args.reference, allow_clipped=args.allow_clipped)
    variant = stage1_variant(args.task, args.stage1)
    check_model_dir(model_dir, [variant], cfg)
    pipeline = MetisPipeline(load_components(model_dir, [variant], cfg, dtype=dtype, device=device))
    noise = make_noise(args.deterministic, args.seed, device)
    wav, report = process(
        pipeline,
        args.task,
        inputs,
        settings,
        noise,
        max_segment_s=args.max_segment_s,
        progress=not args.no_progress,
        variant=variant,
    )
    write_audio(output, wav, OUTPUT_SAMPLE_RATE)
    print(
        f"{output}: {report.output_s:.2f} s at 24 kHz from {report.input_s:.2f} s of input "
        f"({report.segments} segment(s), {report.compute_s:.1f} s, real-time factor {report.real_time_factor:.2f})"
    )
    return 0


def _choose_engine(args):
    """``--engine`` resolved for ``args.task`` (rules in metis_rt.engines); prints the one line auto has to say."""
    import torch

    from metis_rt.engines import choose_engine

    def missing() -> list[str]:
        from metis_rt.models.hub import missing_files
        from metis_rt.pipeline.components import resolve_config

        model_dir = _model_dir(args)
        cfg, _ = resolve_config(model_dir, args.task, _official(args))
        return [f.local_path for f in missing_files(model_dir, [stage1_variant(args.task, args.stage1)], cfg)]

    choice = choose_engine(
        args.engine,
        args.task,
        missing,
        device=args.device,
        cuda=torch.cuda.is_available(),
        metis_options=args.stage1 != "task" or args.deterministic or _metis_only(args) != [],
    )
    if choice.note:
        print(choice.note, file=sys.stderr)
    return choice


def cmd_process_frames(args, engine: str) -> int:
    """se through a CPU denoiser: offline, or ``--stream`` through the engine thread as a live stream would."""
    from metis_rt.audio.files import read_audio, to_mono, validate_speech, write_audio
    from metis_rt.denoisers import open_denoiser
    from metis_rt.pipeline.process import check_output_path
    from metis_rt.streaming.config import STREAMING_CONFIG, load_stream_config
    from metis_rt.streaming.frame_session import FrameSession, FrameSpec, denoise, frame_engine
    from metis_rt.streaming.simulate import simulate

    metis_only = _metis_only(args)
    if metis_only or args.reference is not None:
        raise ConfigError(f"{', '.join(metis_only) or '--reference'}: Metis options, not for engine {engine}")
    output = check_output_path(args.output)
    samples, rate = read_audio(args.input)
    wav = to_mono(samples).astype("float32")
    validate_speech(wav, rate, min_seconds=0.5, name=str(args.input), allow_clipped=args.allow_clipped)
    denoiser = open_denoiser(engine)
    if not args.stream:
        start = time.perf_counter()
        out = denoise(denoiser, wav, rate)
        compute_s = time.perf_counter() - start
        write_audio(output, out, rate)
        print(
            f"{output}: {len(out) / rate:.2f} s at {rate} Hz denoised by {engine} from {len(wav) / rate:.2f} s "
            f"({compute_s:.1f} s, real-time factor {compute_s / max(len(wav) / rate, 1e-9):.2f})"
        )
        return 0
    stream_cfg = load_stream_config(args.stream_config or STREAMING_CONFIG)
    session = FrameSession(1, FrameSpec("se", rate, rate, engine), denoiser, stream_cfg.engine)
    engine_thread = frame_engine(stream_cfg.engine)
    engine_thread.add(session)
    engine_thread.start()
    try:
        out, report = simulate(engine_thread, session, wav, args.packet_ms, args.realtime)
    finally:
        engine_thread.stop()
    write_audio(output, out, rate)
    print(f"{output}: streamed se through {engine}, packets {args.packet_ms:g} ms")
    for line in report.lines():
        print("  " + line)
    return 0


def _metis_only(args) -> list[str]:
    """The Metis-only options given (auto takes them as a request for Metis)."""
    return [f"--{name.replace('_', '-')}" for name in METIS_ONLY_OPTIONS if getattr(args, name) is not None]


# options that only mean something to the Metis engine (process)
METIS_ONLY_OPTIONS = (
    "stage1_steps",
    "cfg",
    "temperature",
    "s2a_steps",
    "s2a_cfg",
    "s2a_temperature",
    "seed",
    "chunk_ms",
    "lookahead_ms",
    "left_context_ms",
    "s2a_left_context_ms",
    "decoder_left_context_ms",
    "crossfade_ms",
)


def cmd_generate(args) -> int:
    """``process --task tts|l2s``: inputs checked first, then the models loaded, then one run."""
    import torch

    from metis_rt.audio.files import write_audio
    from metis_rt.model_settings import check_codebooks
    from metis_rt.models.hub import check_model_dir
    from metis_rt.pipeline.components import load_components, parse_dtype, resolve_config
    from metis_rt.pipeline.generative import read_text, read_voice, run_l2s, run_tts
    from metis_rt.pipeline.offline import OUTPUT_SAMPLE_RATE, MetisPipeline
    from metis_rt.pipeline.process import DecodingOverrides, check_output_path, make_noise, task_settings

    if args.engine not in ("auto", "metis"):
        raise ConfigError(f"engine {args.engine!r} only denoises (task se); {args.task} runs on Metis")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_dir, device, dtype = _model_dir(args), _device(args.device), parse_dtype(args.dtype)
    output = check_output_path(args.output)
    if args.input is not None:
        raise ConfigError(f"task {args.task!r} takes no input audio; the voice comes from --reference")
    if args.stream:
        raise ConfigError(f"--stream is for se/tse/vc; {args.task} output is produced sentence by sentence anyway")
    if args.reference is None:
        raise ConfigError(f"task {args.task!r} needs --reference: a few seconds of the voice to speak in")
    variant = stage1_variant(args.task, args.stage1)
    cfg, official = resolve_config(model_dir, variant, _official(args))
    check_codebooks(model_dir, cfg, [args.task], official)
    overrides = DecodingOverrides(
        args.stage1_steps, args.cfg, args.temperature, args.s2a_steps, args.s2a_cfg, args.s2a_temperature
    )
    settings = task_settings(official, args.task, overrides)
    voice = read_voice(args.reference, allow_clipped=args.allow_clipped)
    if args.task == "tts":
        from metis_rt.text.tokenizer import PhoneTokenizer

        text = read_text(args.text, args.text_file)
        prompt_text = read_text(args.reference_text, None, "--reference-text") if args.reference_text else None
        if prompt_text is None:
            raise ConfigError("task 'tts' needs --reference-text: the words spoken in --reference")
        tokenizer = PhoneTokenizer.load(model_dir)
        prompt_language = args.reference_language or args.language
        tokenizer.g2p(prompt_text, prompt_language)  # unsupported language / unpronounceable text: fail before loading
        tokenizer.g2p(text, args.language)
    else:
        from metis_rt.pipeline.visual import load_features

        if args.visual_features is None:
            raise ConfigError("task 'l2s' needs --visual-features: [frames, D] features at 25 fps (.npy / .npz)")
        features = load_features(args.visual_features, cfg.stage1.visual_dim, args.visual_fps)
    check_model_dir(model_dir, [variant], cfg)
    pipeline = MetisPipeline(load_components(model_dir, [variant], cfg, dtype=dtype, device=device))
    noise = make_noise(args.deterministic, args.seed, device)
    if args.task == "tts":
        wav, report, first_s = run_tts(
            pipeline,
            tokenizer,
            settings,
            noise,
            voice,
            prompt_text,
            text,
            language=args.language,
            prompt_language=prompt_language,
            variant=variant,
        )
        detail = f"{report.segments} sentence(s), first audio after {first_s:.2f} s"
    else:
        wav, report = run_l2s(pipeline, settings, noise, voice, features, variant=variant)
        detail = f"from {report.input_s:.2f} s of video features"
    write_audio(output, wav, OUTPUT_SAMPLE_RATE)
    print(
        f"{output}: {report.output_s:.2f} s at 24 kHz ({detail}; {report.compute_s:.1f} s, "
        f"real-time factor {report.compute_s / max(report.output_s, 1e-9):.2f} of the audio produced)"
    )
    return 0


def _stream_config(args):
    """--stream-config (default configs/streaming.yaml) < the model directory's metis-rt.yaml < the options."""
    import dataclasses

    from metis_rt.model_settings import load_stream_config_for
    from metis_rt.streaming.config import STREAMING_CONFIG, StepsConfig

    cfg = load_stream_config_for(_model_dir(args), args.stream_config or STREAMING_CONFIG)
    sizes = {
        name: getattr(args, name)
        for name in (
            "chunk_ms",
            "lookahead_ms",
            "left_context_ms",
            "s2a_left_context_ms",
            "decoder_left_context_ms",
            "crossfade_ms",
        )
        if getattr(args, name) is not None
    }
    geometry = dataclasses.replace(cfg.geometry, **sizes)
    steps = cfg.steps_for(args.task)
    steps = StepsConfig(args.stage1_steps or steps.stage1, args.s2a_steps or steps.s2a)
    return dataclasses.replace(cfg, geometry=geometry, steps={**cfg.steps, args.task: steps})


def cmd_process_stream(args) -> int:
    from metis_rt.audio.files import load_for_model, read_audio, to_mono, validate_speech, write_audio
    from metis_rt.model_settings import check_codebooks
    from metis_rt.models.hub import check_model_dir
    from metis_rt.pipeline.components import load_components, parse_dtype, resolve_config
    from metis_rt.pipeline.process import check_output_path
    from metis_rt.streaming.config import stream_decoding
    from metis_rt.streaming.engine import Engine
    from metis_rt.streaming.geometry import CODEC_RATE, Geometry
    from metis_rt.streaming.processor import MetisWindowProcessor
    from metis_rt.streaming.session import SessionSpec, StreamSession
    from metis_rt.streaming.simulate import simulate
    from metis_rt.streaming.thread_probe import ProbeSettings

    model_dir, device, dtype = _model_dir(args), _device(args.device), parse_dtype(args.dtype)
    output = check_output_path(args.output)
    stream_cfg = _stream_config(args)
    try:
        geometry = Geometry.from_config(stream_cfg.geometry)
    except ValueError as exc:
        raise ConfigError(f"stream geometry: {exc}") from None
    cfg, official = resolve_config(model_dir, args.task, _official(args))
    check_codebooks(model_dir, cfg, [args.task], official, stream_cfg)
    settings = stream_decoding(official, args.task, stream_cfg.steps_for(args.task))
    samples, rate = read_audio(args.input)
    wav = to_mono(samples)
    validate_speech(wav, rate, min_seconds=0.5, name=str(args.input), allow_clipped=args.allow_clipped)
    ref = None
    if args.task in ("tse", "vc"):
        if args.reference is None:
            raise ConfigError(f"task {args.task!r} needs --reference: a recording of the target speaker")
        ref = load_for_model(args.reference, rates=(16000, CODEC_RATE), min_seconds=1.0)
    variant = stage1_variant(args.task, args.stage1)
    check_model_dir(model_dir, [variant], cfg)
    comps = load_components(model_dir, [variant], cfg, dtype=dtype, device=device)
    processor = MetisWindowProcessor(comps, stream_cfg.speed, ProbeSettings(official, stream_cfg))
    reference = processor.prepare_reference(ref[16000], ref[CODEC_RATE]) if ref is not None else None
    spec = SessionSpec(args.task, rate, CODEC_RATE, settings, args.deterministic, args.seed, args.stage1)
    session = StreamSession(1, spec, geometry, stream_cfg.engine, processor.num_quantizers, reference)
    engine = Engine(processor, stream_cfg.engine)
    engine.add(session)
    engine.start()
    try:
        out, report = simulate(engine, session, wav.astype("float32"), args.packet_ms, args.realtime)
    finally:
        engine.stop()
    write_audio(output, out, CODEC_RATE)
    print(
        f"{output}: streamed {args.task} with chunk {geometry.chunk_ms} ms, lookahead "
        f"{geometry.lookahead * 20} ms, left context {geometry.left * 20} ms, packets {args.packet_ms:g} ms"
    )
    for line in report.lines():
        print("  " + line)
    return 0


def cmd_parity(args) -> int:
    from metis_rt.parity import run_directory, vector_dirs

    counts = {"ok": 0, "FAIL": 0, "unsupported": 0}
    for root in vector_dirs(args.dirs):
        print(f"== {root}", flush=True)
        for result in run_directory(root):
            counts[result.status] += 1
            print(result.line(), flush=True)
    print(f"{counts['ok']} ok, {counts['FAIL']} failed, {counts['unsupported']} unsupported")
    failed = counts["FAIL"] or (args.strict and counts["unsupported"])
    return EXIT_FAILURE if failed else 0


def cmd_serve(args) -> int:
    from metis_rt.server.main import main as serve_main

    return serve_main(args.serve_args)


def cmd_data(args) -> int:
    if args.data_command == "build-train":
        from metis_rt.train.corpus import build_train_set

        path = build_train_set(
            args.out, seed=args.seed, minutes=args.minutes, progress=not args.no_progress, workers=args.workers
        )
        print(f"training set: {path}")
        return 0
    from metis_rt.data.evalset import build_eval_set

    manifest = build_eval_set(args.out, seed=args.seed, quick=args.quick)
    counts: dict[str, int] = {}
    for item in manifest["items"]:
        counts[item["task"]] = counts.get(item["task"], 0) + 1
    print(f"{args.out}: {len(manifest['items'])} items ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    return 0


def cmd_eval(args) -> int:
    from metis_rt.eval.metrics import METRICS
    from metis_rt.eval.runner import EvalOptions, run_eval

    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else None
    if metrics and set(metrics) - set(METRICS):
        raise ConfigError(f"unknown metric(s) {sorted(set(metrics) - set(METRICS))}; choose from {', '.join(METRICS)}")
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    opts = EvalOptions(
        out_dir=args.out,
        set_dir=args.set_dir,
        quick=args.quick,
        per_task=args.per_task,
        model_dir=args.model_dir,
        systems=tuple(s.strip() for s in args.systems.split(",")) if args.systems else None,
        tasks=tuple(args.tasks) if args.tasks else None,
        device=args.device,
        workers=args.workers,
        seed=args.seed,
        metrics=metrics,
        engine=args.engine,
    )
    report = run_eval(opts, progress=not args.no_progress)
    print(f"report: {report}")
    return 0


def cmd_train(args) -> int:
    from metis_rt.train.main import main as train_main

    return train_main(args.train_args)


def cmd_bridge(args) -> int:
    from metis_rt.bridge.main import main as bridge_main

    return bridge_main(args.bridge_args)


COMMANDS = {
    "download": cmd_download,
    "process": cmd_process,
    "parity": cmd_parity,
    "serve": cmd_serve,
    "train": cmd_train,
    "bridge": cmd_bridge,
    "data": cmd_data,
    "eval": cmd_eval,
}


if __name__ == "__main__":
    sys.exit(main())
