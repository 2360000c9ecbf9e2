"""Where the bridge's audio is processed: a metis-rt server (``RemoteBackend``, in ``remote.py``) or an in-process
engine (``LocalBackend``, ``LocalDenoiserBackend``). All take microphone blocks (``push``), deliver processed audio to
``on_output`` and apply control commands (``apply``) the same way, so the bridge above them does not care which one
runs.

Both keep :class:`BridgeSettings`, the settings in force: after a command they reflect what the processing side
accepted (the local engine directly; the server when it answers ``session.updated``). A refused command raises
``CommandError`` with the reason and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from metis_rt.config import OfficialConfig
from metis_rt.control.commands import (
    Command,
    CommandError,
    SetBypass,
    SetMix,
    SetSteps,
    SetStrength,
    SetTask,
    SetVoice,
)
from metis_rt.denoisers import FrameDenoiser
from metis_rt.engines import FRAME_TASKS
from metis_rt.errors import MetisError
from metis_rt.server.voices import VoiceLibrary
from metis_rt.streaming.config import StepsConfig, StreamConfig, stream_decoding
from metis_rt.streaming.engine import Engine
from metis_rt.streaming.frame_session import DEFAULT_STRENGTH_DB, FrameSession, FrameSpec, frame_engine
from metis_rt.streaming.geometry import Geometry
from metis_rt.streaming.processor import WindowProcessor
from metis_rt.streaming.session import PROMPT_TASKS, SessionSpec, StreamSession
from metis_rt.streaming.window import ReferenceTokens

log = logging.getLogger(__name__)

OnOutput = Callable[[np.ndarray], None]
HEALTH_POLL_S = 0.2  # local: how often run() checks the session for an engine failure


class BackendError(MetisError):
    """The processing side failed or went away; the message says what happened."""


@dataclass(frozen=True)
class BridgeSettings:
    """The settings in force for the bridge's stream (published as the retained MQTT state)."""

    task: str
    bypass: bool = False
    mix: float = 1.0
    voice: str | None = None
    stage1_steps: int | None = None
    s2a_steps: tuple[int, ...] | None = None
    engine: str = "auto"  # the engine asked for / running (metis_rt.engines)
    strength: float | None = None  # CPU denoisers: attenuation limit in dB (None: the engine's default, unlimited)

    def as_state(self) -> dict:
        state = dataclasses.asdict(self)
        state["s2a_steps"] = list(self.s2a_steps) if self.s2a_steps is not None else None
        return state


def with_steps(settings: BridgeSettings, stage1: int | None, s2a: Sequence[int] | None) -> BridgeSettings:
    """`settings` with the steps a server reported in force (values it did not report are kept)."""
    return dataclasses.replace(
        settings,
        stage1_steps=stage1 if stage1 is not None else settings.stage1_steps,
        s2a_steps=tuple(s2a) if s2a is not None else settings.s2a_steps,
    )


# ----------------------------------------------------------------------------- in-process engine
class LocalBackend:
    """An engine thread of our own with one session; ``tasks`` are the tasks whose models were loaded."""

    dropped_input_samples = 0  # input is never queued outside the session (its own drops are in its metrics)
    moves = 0  # an in-process engine never moves (a RemoteBackend's stream may)
    processing = "processed"  # what the bridge plays: always the engine's output

    def __init__(
        self,
        processor: WindowProcessor,
        official: OfficialConfig,
        stream_cfg: StreamConfig,
        tasks: Sequence[str],
        settings: BridgeSettings,
        input_rate: int,
        output_rate: int,
        on_output: OnOutput,
        *,
        voices: VoiceLibrary | None = None,
        reference: ReferenceTokens | None = None,
        deterministic: bool = False,
    ):
        if settings.task not in tasks:
            raise BackendError(f"task {settings.task!r} is not among the loaded tasks {list(tasks)}")
        self.processor, self.official, self.stream_cfg = processor, official, stream_cfg
        self.tasks = tuple(tasks)
        self.voices = voices or VoiceLibrary(None)
        self.reference = reference  # kept across task switches (tse <-> vc, and for a later switch from se)
        self.engine = Engine(processor, stream_cfg.engine)
        self.geometry = Geometry.from_config(stream_cfg.geometry)
        steps = self._steps(settings.task, settings.stage1_steps, settings.s2a_steps)
        self.settings = dataclasses.replace(
            settings, stage1_steps=steps.stage1, s2a_steps=tuple(steps.s2a), engine="metis"
        )
        if settings.task in PROMPT_TASKS and reference is None:
            raise BackendError(f"task {settings.task!r} needs a voice: give --voice NAME or --reference FILE")
        spec = SessionSpec(
            settings.task, input_rate, output_rate, stream_decoding(official, settings.task, steps), deterministic
        )
        self.session = StreamSession(
            1,
            spec,
            self.geometry,
            stream_cfg.engine,
            processor.num_quantizers,
            reference if settings.task in PROMPT_TASKS else None,
            on_output=on_output,
        )
        self.session.set_mix(settings.mix, settings.bypass)
        self._closed = asyncio.Event()

    @property
    def latency_ms(self) -> float:
        return self.session.latency_ms

    @property
    def chunk_ms(self) -> int:
        return self.geometry.chunk_ms

    async def start(self) -> None:
        self.engine.start()
        self.engine.add(self.session)

    def push(self, block: np.ndarray) -> None:
        self.session.push(block)

    async def run(self) -> None:
        """Returns when closed; raises ``BackendError`` if the engine fails on our stream."""
        while not self._closed.is_set():
            if self.session.error is not None:
                raise BackendError(f"processing failed: {self.session.error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), HEALTH_POLL_S)

    def stats(self) -> dict:
        return self.session.metrics.snapshot()

    async def close(self) -> None:
        self._closed.set()
        self.engine.remove(self.session.id)
        await asyncio.to_thread(self.engine.stop)

    # --- commands ---------------------------------------------------------------------------------
    async def apply(self, command: Command) -> None:
        s = self.settings
        if isinstance(command, SetBypass | SetMix):
            new = dataclasses.replace(
                s,
                bypass=command.enabled if isinstance(command, SetBypass) else s.bypass,
                mix=command.mix if isinstance(command, SetMix) else s.mix,
            )
            self.session.set_mix(new.mix, new.bypass)
        elif isinstance(command, SetSteps):
            steps = self._steps(s.task, command.stage1 or s.stage1_steps, command.s2a or s.s2a_steps)
            self.session.update_settings(stream_decoding(self.official, s.task, steps))
            new = dataclasses.replace(s, stage1_steps=steps.stage1, s2a_steps=tuple(steps.s2a))
        elif isinstance(command, SetVoice):
            self.reference = await self._prepare_voice(command.voice)
            if s.task in PROMPT_TASKS:
                self.session.reference = self.reference
            new = dataclasses.replace(s, voice=command.voice)
        elif isinstance(command, SetTask):
            new = self._switch_task(command.task)
        elif isinstance(command, SetStrength):
            raise CommandError("strength applies to the CPU denoisers (engine deepfilternet3 or rnnoise), not metis")
        else:  # pragma: no cover - the command types are a closed union
            raise CommandError(f"unsupported command {command!r}")
        self.settings = new

    def _switch_task(self, task: str) -> BridgeSettings:
        if task == self.settings.task:
            return self.settings
        if task not in self.tasks:
            raise CommandError(
                f"task {task!r} is not loaded (this bridge runs {', '.join(self.tasks)}); "
                f"start it with --tasks {','.join(sorted({*self.tasks, task}))}"
            )
        if task in PROMPT_TASKS and self.reference is None:
            raise CommandError(f"task {task!r} needs a voice: publish set/voice NAME first")
        steps = self.stream_cfg.steps_for(task)
        self.session.restart(task, stream_decoding(self.official, task, steps), self._ref_for(task))
        return dataclasses.replace(self.settings, task=task, stage1_steps=steps.stage1, s2a_steps=tuple(steps.s2a))

    def _ref_for(self, task: str) -> ReferenceTokens | None:
        return self.reference if task in PROMPT_TASKS else None

    def _steps(self, task: str, stage1: int | None, s2a: Sequence[int] | None) -> StepsConfig:
        base = self.stream_cfg.steps_for(task)
        steps = StepsConfig(stage1 or base.stage1, tuple(s2a) if s2a else base.s2a)
        if len(steps.s2a) != len(base.s2a):
            raise CommandError(f"s2a steps need {len(base.s2a)} values, got {len(steps.s2a)}")
        return steps

    async def _prepare_voice(self, name: str) -> ReferenceTokens:
        if self.voices.folder is None:
            raise CommandError("this bridge has no voices folder: start it with --voices-dir DIR")

        def prepare(audio16, audio24):
            return self.engine.submit(lambda: self.processor.prepare_reference(audio16, audio24)).result()

        try:
            return await asyncio.to_thread(self.voices.get, name, prepare)
        except KeyError:
            raise CommandError(f"no voice {name!r}; available: {self.voices.names()}") from None
        except MetisError as exc:
            raise CommandError(f"voice {name!r} is unusable: {exc}") from None


class LocalDenoiserBackend(LocalBackend):
    """A CPU denoiser (DeepFilterNet3, RNNoise) in a frame engine thread of our own, one session (task se).

    The same backend as Metis' (start, push, run, stats, close are inherited): only the session and the commands
    differ. Steps, voices and task switches belong to Metis and are refused; ``set/strength`` applies."""

    def __init__(
        self,
        denoiser: FrameDenoiser,
        stream_cfg: StreamConfig,
        settings: BridgeSettings,
        input_rate: int,
        output_rate: int,
        on_output: OnOutput,
    ):
        if settings.task not in FRAME_TASKS:
            raise BackendError(f"engine {denoiser.name!r} only denoises (task se), not {settings.task!r}")
        self.settings = dataclasses.replace(settings, engine=denoiser.name, stage1_steps=None, s2a_steps=None)
        self.engine = frame_engine(stream_cfg.engine)
        strength = DEFAULT_STRENGTH_DB if settings.strength is None else settings.strength
        spec = FrameSpec(settings.task, input_rate, output_rate, denoiser.name)
        self.session = FrameSession(1, spec, denoiser, stream_cfg.engine, on_output=on_output, strength_db=strength)
        self.settings = dataclasses.replace(self.settings, strength=strength)
        self.session.set_mix(settings.mix, settings.bypass)
        self._closed = asyncio.Event()

    @property
    def chunk_ms(self) -> int:
        return round(self.session.frame * 1000 / self.session.rate)

    async def apply(self, command: Command) -> None:
        s = self.settings
        if isinstance(command, SetBypass | SetMix):
            new = dataclasses.replace(
                s,
                bypass=command.enabled if isinstance(command, SetBypass) else s.bypass,
                mix=command.mix if isinstance(command, SetMix) else s.mix,
            )
            self.session.set_mix(new.mix, new.bypass)
        elif isinstance(command, SetStrength):
            try:
                self.session.set_strength(command.db)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            new = dataclasses.replace(s, strength=command.db)
        else:
            raise CommandError(f"engine {s.engine!r} only denoises: steps, voices and task switches need Metis")
        self.settings = new
