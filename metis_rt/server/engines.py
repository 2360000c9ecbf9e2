"""Which engine serves which task on this server, and the thread that runs the frame-wise (CPU) denoisers.

Metis sessions run on the server's Metis engine thread (batched); sessions of a CPU denoiser run on one frame engine
thread, each on its own denoiser instance (opened off the event loop, since building a DeepFilterNet3 state takes
tenths of a second). ``session.start.engine`` = ``auto`` picks Metis when the server loaded it for the task, else
the first CPU denoiser it offers (se only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from metis_rt.denoisers import FrameDenoiser, denoiser_type, open_denoiser
from metis_rt.engines import AUTO, FRAME_TASKS, METIS
from metis_rt.server import protocol as proto
from metis_rt.streaming.config import EngineConfig
from metis_rt.streaming.engine import Engine
from metis_rt.streaming.frame_session import frame_engine


class EngineCatalogue:
    def __init__(
        self,
        metis_tasks: Sequence[str],
        frame_engines: Sequence[str],
        engine_cfg: EngineConfig,
        opener: Callable[[str], FrameDenoiser] = open_denoiser,
    ):
        self.metis_tasks = tuple(metis_tasks)
        self.frame_names = tuple(frame_engines)
        self.frames: Engine | None = frame_engine(engine_cfg) if self.frame_names else None
        self._open = opener

    def tasks(self) -> tuple[str, ...]:
        extra = tuple(t for t in FRAME_TASKS if self.frame_names and t not in self.metis_tasks)
        return (*self.metis_tasks, *extra)

    def engines_for(self, task: str) -> list[str]:
        metis = [METIS] if task in self.metis_tasks else []
        return metis + (list(self.frame_names) if task in FRAME_TASKS else [])

    @staticmethod
    def check(requested: str, task: str) -> None:
        """ProtocolError ``engine_unavailable`` for an engine that never runs ``task`` (on any server)."""
        if requested not in (AUTO, METIS) and task not in FRAME_TASKS:
            raise proto.ProtocolError(
                "engine_unavailable", f"engine {requested!r} only denoises (task se); {task} runs on the metis engine"
            )

    def resolve(self, requested: str, task: str) -> str:
        """The engine a session of ``task`` runs on; ProtocolError ``engine_unavailable`` if none fits."""
        offered = self.engines_for(task)
        if requested == AUTO and offered:
            return offered[0]
        if requested in offered:
            return requested
        self.check(requested, task)
        hint = f"engines for {task} here: {', '.join(offered)}" if offered else f"this server cannot run {task}"
        raise proto.ProtocolError("engine_unavailable", f"engine {requested!r} is not available for {task}: {hint}")

    def open(self, name: str) -> FrameDenoiser:
        """A fresh denoiser (blocking: call it from a worker thread)."""
        return self._open(name)

    def health(self) -> dict[str, list[str]]:
        return {task: self.engines_for(task) for task in self.tasks()}

    def latency_ms(self) -> dict[str, float]:
        """Each CPU denoiser's algorithmic latency for a client at its native rate (delay + one frame)."""
        out = {}
        for name in self.frame_names:
            kind = denoiser_type(name)
            out[name] = round((kind.latency_samples + kind.frame_samples) * 1000 / kind.sample_rate, 2)
        return out

    def start(self) -> None:
        if self.frames is not None:
            self.frames.start()

    def stop(self) -> None:
        if self.frames is not None:
            self.frames.stop()

    def remove(self, session_id: int) -> None:
        if self.frames is not None:
            self.frames.remove(session_id)
