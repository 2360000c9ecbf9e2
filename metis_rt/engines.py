"""Which engine runs a task: ``--engine auto|metis|deepfilternet3|rnnoise`` (process, serve, bridge, eval).

Rules of ``auto`` (the default):

* **Metis** when the official files for the task are in the model directory and either a CUDA device is there or a
  device was asked for explicitly (``--device cpu`` runs Metis on the CPU: slow, not real time) or Metis-only
  options were given (``--stage1 omni``, decoding steps, ``--deterministic``, ``--seed``, stream geometry).
* otherwise, for **se**: the first usable CPU denoiser, DeepFilterNet3, else RNNoise, with one line saying which
  engine runs and how to get Metis (``metis-rt download``);
* otherwise (**tse, vc, tts**: only Metis does them): Metis on the CPU when its files are there, else an error
  naming the missing files and the command that fetches them. Never a silent fallback to another task.

An explicit engine is taken as asked: a CPU denoiser for a task other than se is an error, one whose package cannot
run here raises ``EngineUnavailable`` with the reason, and ``metis`` without its files fails naming them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from metis_rt.denoisers import DENOISER_NAMES, EngineUnavailable, denoiser_status
from metis_rt.errors import ConfigError, MetisError

METIS = "metis"
AUTO = "auto"
FRAME_ENGINES = DENOISER_NAMES  # frame-wise CPU denoisers, in order of preference
ENGINES = (METIS, *FRAME_ENGINES)
ENGINE_CHOICES = (AUTO, *ENGINES)
FRAME_TASKS = ("se",)
GET_METIS = "to run Metis: `metis-rt download --tasks {task}` and a CUDA device (or --engine metis --device cpu)"


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # one of ENGINES
    device: str | None  # the torch device for metis (None for the CPU denoisers)
    note: str | None  # the one line to show the user (None: nothing worth saying)


def engines_for(task: str) -> tuple[str, ...]:
    """Engines that can run ``task`` at all."""
    return ENGINES if task in FRAME_TASKS else (METIS,)


def check_engine(engine: str, task: str) -> None:
    """ConfigError when ``engine`` is unknown or cannot do ``task``."""
    if engine not in ENGINE_CHOICES:
        raise ConfigError(f"unknown engine {engine!r}; choose from {', '.join(ENGINE_CHOICES)}")
    if engine in FRAME_ENGINES and task not in FRAME_TASKS:
        raise ConfigError(
            f"engine {engine!r} only denoises (task se); {task} needs the Metis engine and its weights "
            f"(`metis-rt download --tasks {task}`)"
        )


def choose_engine(
    requested: str,
    task: str,
    metis_missing: Callable[[], Sequence[str]],
    *,
    device: str | None,
    cuda: bool,
    metis_options: bool = False,
    status: Callable[[], dict[str, str | None]] = denoiser_status,
) -> EngineChoice:
    """Resolve ``requested`` for ``task`` (see the module docstring).

    ``metis_missing()`` lists the official files the task lacks (empty: all there; it may raise MetisError, e.g.
    for an unreadable model directory, which counts as missing). ``device`` is the device asked for (None: none).
    """
    check_engine(requested, task)
    if requested in FRAME_ENGINES:
        reason = status().get(requested)
        if reason is not None:
            raise EngineUnavailable(f"engine {requested!r} cannot run here: {reason}")
        return EngineChoice(requested, None, None)
    metis_device = device or ("cuda" if cuda else "cpu")
    if requested == METIS:
        return EngineChoice(METIS, metis_device, None)
    try:
        missing = list(metis_missing())
    except MetisError as exc:
        missing = [str(exc)]
    if task not in FRAME_TASKS:
        note = None if (cuda or device or missing) else f"engine: metis on the CPU for {task} (slow, not real time)"
        return EngineChoice(METIS, metis_device, note)  # missing files: the Metis path names them and the fix
    if not missing and (cuda or device is not None or metis_options):
        return EngineChoice(METIS, metis_device, None)
    why = f"official weights missing ({_few(missing)})" if missing else "no CUDA device"
    reasons = status()
    for name in FRAME_ENGINES:
        if reasons.get(name) is None:
            return EngineChoice(name, None, f"engine: {name} on the CPU (Metis: {why}; {GET_METIS.format(task=task)})")
    unusable = "; ".join(f"{name}: {reasons.get(name)}" for name in FRAME_ENGINES)
    raise EngineUnavailable(f"no engine can run {task} here: Metis: {why}; {unusable}")


def _few(items: Sequence[str], n: int = 2) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")
