"""The systems an evaluation compares: baselines and metis-rt (offline, and streaming at several geometries).

Every system maps one manifest item to a 16 kHz mono float32 output as long as its input. Metis systems load the
model directory once and run on CPU (or ``device``); streaming systems push the whole input through the live engine
(the same sessions the server runs, not real-time paced) so their numbers include every streaming approximation.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
import torch

from metis_rt.audio.files import load_for_model
from metis_rt.errors import ConfigError

RATE = 16000
STREAM_GEOMETRIES: dict[str, tuple[int, int]] = {  # name suffix -> (chunk_ms, lookahead_ms)
    "160-80": (160, 80),
    "240-160": (240, 160),
    "480-240": (480, 240),
}
BASELINE_LATENCY_MS = {  # algorithmic latency of each baseline run live; None: needs the whole file
    "unprocessed": 0.0,
    "rnnoise": 20.0,  # metis_rt/denoisers/rnnoise.py: 960 samples at 48 kHz
    "deepfilternet3": 30.0,  # metis_rt/denoisers/deepfilternet3.py: 1440 samples at 48 kHz
    "spectral_gating": None,
}


@dataclass
class System:
    """``run(task, input_path, enrollment_path) -> 16 kHz output``; ``latency_ms`` None = offline (whole file)."""

    name: str
    tasks: tuple[str, ...]
    latency_ms: float | None
    run: Callable[[str, Path, Path | None], np.ndarray]


def _read16(path: Path) -> np.ndarray:
    return load_for_model(path, rates=(RATE,), min_seconds=0.1)[RATE]


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def baseline_systems() -> list[System]:
    from metis_rt.eval import baselines

    out = []
    for cls, tasks in (
        (baselines.Unprocessed, ("se", "tse", "vc")),
        (baselines.RNNoise, ("se", "tse")),
        (baselines.DeepFilterNet3, ("se", "tse")),
    ):
        out.append(_baseline(cls(), tasks))
    out.append(_baseline(baselines.SpectralGating(), ("se", "tse")))
    out.append(denoiser_stream_system("deepfilternet3"))
    return out


DENOISER_STREAM_PACKET_MS = 20.0  # what the web page and the mic client send


def denoiser_stream_system(name: str) -> System:
    """``NAME-stream``: a frame-wise denoiser through the live path (a FrameSession on an engine thread, the input at
    16 kHz pushed in 20 ms packets, not paced), so the row includes the stream resamplers and the delay
    compensation the server applies."""
    from metis_rt.streaming.config import EngineConfig

    def run(task: str, input_path: Path, enrollment: Path | None) -> np.ndarray:
        from metis_rt.denoisers import open_denoiser
        from metis_rt.streaming.frame_session import FrameSession, FrameSpec, frame_engine
        from metis_rt.streaming.simulate import simulate

        x = _read16(input_path)
        engine = frame_engine(EngineConfig())
        session = FrameSession(1, FrameSpec("se", RATE, RATE, name), open_denoiser(name), EngineConfig())
        engine.add(session)
        engine.start()
        try:
            out, _ = simulate(engine, session, x, packet_ms=DENOISER_STREAM_PACKET_MS)
        finally:
            engine.stop()
        if session.error is not None:
            raise session.error
        return _fit(out, len(x))

    from metis_rt.denoisers import denoiser_type
    from metis_rt.streaming.frame_session import FrameSession, FrameSpec

    # the algorithmic latency a 16 kHz client gets: the class carries the geometry, no runtime is opened
    probe = FrameSession(0, FrameSpec("se", RATE, RATE, name), denoiser_type(name), EngineConfig())
    return System(f"{name}-stream", ("se",), round(probe.latency_ms, 1), run)


def _baseline(impl, tasks: tuple[str, ...]) -> System:
    def run(task: str, input_path: Path, enrollment: Path | None) -> np.ndarray:
        x = _read16(input_path)
        return _fit(impl.process(x, RATE), len(x))

    return System(impl.name, tasks, BASELINE_LATENCY_MS.get(impl.name), run)


class MetisModels:
    """One model directory loaded once for every task it holds, shared by the offline and streaming systems."""

    def __init__(self, model_dir: Path, tasks: Sequence[str], device: str = "cpu", deterministic: bool = True):
        from metis_rt.model_settings import check_codebooks, load_official_for, load_stream_config_for
        from metis_rt.models.hub import check_model_dir, usable_tasks
        from metis_rt.pipeline.components import load_components, resolve_config_for_tasks

        self.model_dir, self.deterministic = Path(model_dir), deterministic
        self.device = torch.device(device)
        # the configs/*.yaml defaults < the model directory's metis-rt.yaml
        self.official = load_official_for(self.model_dir)
        self.stream_cfg = load_stream_config_for(self.model_dir)
        cfg, _ = resolve_config_for_tasks(self.model_dir, list(tasks), self.official)
        check_codebooks(self.model_dir, cfg, tuple(tasks), self.official, self.stream_cfg)  # before missing weights
        # a directory holding only some tasks evaluates those (a warning names the rest and how to fetch them)
        self.tasks = tuple(usable_tasks(self.model_dir, list(tasks), cfg))
        self.cfg, _ = resolve_config_for_tasks(self.model_dir, list(self.tasks), self.official)
        check_model_dir(self.model_dir, list(self.tasks), self.cfg)
        self.comps = load_components(self.model_dir, list(self.tasks), self.cfg, device=self.device)

    @property
    def official_architecture(self) -> bool:
        """False when the directory's architecture differs from the official Metis one (e.g. a tiny test model)."""
        ref = self.official.model
        return (self.cfg.stage1, self.cfg.s2a_full, self.cfg.ssl) == (ref.stage1, ref.s2a_full, ref.ssl)

    def offline(self) -> System:
        from metis_rt.pipeline.offline import OUTPUT_SAMPLE_RATE, MetisPipeline
        from metis_rt.pipeline.process import make_noise, process, read_inputs, task_settings

        pipeline = MetisPipeline(self.comps)

        def run(task: str, input_path: Path, enrollment: Path | None) -> np.ndarray:
            inputs = read_inputs(task, input_path, enrollment if task in ("tse", "vc") else None)
            noise = make_noise(self.deterministic, 0, self.device)
            wav, _ = process(pipeline, task, inputs, task_settings(self.official, task), noise, progress=False)
            return _fit(soxr.resample(wav, OUTPUT_SAMPLE_RATE, RATE), len(inputs.source_16k))

        return System("metis-offline", self.tasks, None, run)

    def streaming(self, chunk_ms: int, lookahead_ms: int) -> System:
        from metis_rt.streaming.config import stream_decoding
        from metis_rt.streaming.engine import Engine
        from metis_rt.streaming.geometry import CODEC_RATE, SSL_RATE, Geometry
        from metis_rt.streaming.processor import MetisWindowProcessor
        from metis_rt.streaming.session import SessionSpec, StreamSession
        from metis_rt.streaming.simulate import simulate
        from metis_rt.streaming.thread_probe import ProbeSettings

        stream_cfg = self.stream_cfg
        try:
            geometry_cfg = dataclasses.replace(stream_cfg.geometry, chunk_ms=chunk_ms, lookahead_ms=lookahead_ms)
            geometry = Geometry.from_config(geometry_cfg)
        except ValueError as exc:
            raise ConfigError(f"stream geometry {chunk_ms}/{lookahead_ms} ms: {exc}") from None
        stream = dataclasses.replace(stream_cfg, geometry=geometry_cfg)
        processor = MetisWindowProcessor(self.comps, stream_cfg.speed, ProbeSettings(self.official, stream))

        def run(task: str, input_path: Path, enrollment: Path | None) -> np.ndarray:
            x = _read16(input_path)
            reference = None
            if task in ("tse", "vc"):
                ref = load_for_model(enrollment, rates=(SSL_RATE, CODEC_RATE), min_seconds=1.0)
                reference = processor.prepare_reference(ref[SSL_RATE], ref[CODEC_RATE])
            settings = stream_decoding(self.official, task, stream_cfg.steps_for(task))
            spec = SessionSpec(task, RATE, RATE, settings, self.deterministic, 0)
            session = StreamSession(1, spec, geometry, stream_cfg.engine, processor.num_quantizers, reference)
            engine = Engine(processor, stream_cfg.engine)
            engine.add(session)
            engine.start()
            try:
                out, _ = simulate(engine, session, x, packet_ms=20.0)
            finally:
                engine.stop()
            return _fit(out, len(x))

        probe = StreamSession(
            0,
            SessionSpec("se", RATE, RATE, stream_decoding(self.official, "se", stream_cfg.steps_for("se"))),
            geometry,
            stream_cfg.engine,
            processor.num_quantizers,
        )
        return System(f"metis-stream-{chunk_ms}-{lookahead_ms}", self.tasks, round(probe.latency_ms, 1), run)


def stream_sizes(names: Sequence[str] | None, models: MetisModels) -> list[tuple[int, int]]:
    """(chunk_ms, lookahead_ms) of the streaming systems: the standard ones, the model directory's own geometry
    (its metis-rt.yaml) and any ``metis-stream-C-L`` asked for by name."""
    own = models.stream_cfg.geometry
    sizes = [*STREAM_GEOMETRIES.values(), (own.chunk_ms, own.lookahead_ms)]
    for name in names or ():
        if match := re.fullmatch(r"metis-stream-(\d+)-(\d+)", name):
            sizes.append((int(match[1]), int(match[2])))
    return list(dict.fromkeys(sizes))  # in order, each once


def select(
    names: Sequence[str] | None, model_dir: Path | None, tasks: Sequence[str], device: str = "cpu"
) -> tuple[list[System], MetisModels | None]:
    """The systems to run: baselines always available; metis-* need ``model_dir``. ``names`` None = all usable."""
    systems = baseline_systems()
    models = None
    wanted_metis = names is None or any(n.startswith("metis") for n in names)
    if model_dir is not None and wanted_metis:
        models = MetisModels(model_dir, tasks, device)
        systems.append(models.offline())
        systems += [models.streaming(*sizes) for sizes in stream_sizes(names, models)]
    if names is not None:
        known = {s.name: s for s in systems}
        unknown = [n for n in names if n not in known]
        if unknown:
            hint = "" if model_dir is not None else " (metis-* systems need --model-dir)"
            raise ConfigError(f"unknown system(s) {unknown}; available: {sorted(known)}{hint}")
        systems = [known[n] for n in names]
    return systems, models
