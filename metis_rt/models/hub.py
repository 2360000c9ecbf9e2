"""Official weight files: which ones a task needs and whether a model directory has them (fetching them:
``metis_rt.models.download``).

A *model directory* holds the official Hugging Face repos merged into one tree (paths relative to it)::

    metis_base/model.safetensors                                  amphion/Metis
    metis_<task>/metis_<task>_lora_<r>{,_adapter}.safetensors     amphion/Metis (r: ModelConfig.lora[task].r)
    semantic_codec/, acoustic_codec/, s2a_model/...               amphion/MaskGCT
    w2v-bert-2.0/{config.json,model.safetensors,preprocessor_config.json}   facebook/w2v-bert-2.0 (repo root)
    wav2vec2bert_stats.pt                                         Space amphion/maskgct (Amphion's ckpt/ copy)
    config.json                                                   optional, Amphion format (never downloaded)

The Metis and MaskGCT weights are licensed CC BY-NC 4.0 by their authors.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from metis_rt.config import ALL_TASKS, ModelConfig, stage1_variant
from metis_rt.errors import ConfigError, MissingWeightsError
from metis_rt.models.hub_pins import MASKGCT_REPO, METIS_REPO, W2V_BERT_REPO
from metis_rt.models.stage1_loading import FULL_VARIANT_FILES, stage1_files
from metis_rt.models.verify import NOTHING_KNOWN, Expected

logger = logging.getLogger(__name__)

MODEL_DIR_ENV = "METIS_RT_MODEL_DIR"
DEFAULT_MODEL_DIR = "~/.cache/metis-rt/models"

W2V_BERT_DIR = "w2v-bert-2.0"
W2V_BERT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")

EVERY_TASK = "*"  # in WeightFile.tasks: a file every task needs
DOWNLOAD_TARGETS = (*ALL_TASKS, "omni")  # WeightFile.tasks names stage-1 variants: a task's own, or omni
LORA_TASKS = ("se", "tse", "vc")  # tasks = metis_base + a LoRA pair (future full fine-tunes are not)

STATS_FILE = "wav2vec2bert_stats.pt"
STATS_SHA256 = "c9c176c2b8850ab2e3ba828bbfa969deaf4566ce55db5f2687b8430b87526ad2"  # Amphion's 9,343-byte file
STATS_SIZE_BYTES = 9_343
STATS_GITHUB_URL = "https://github.com/open-mmlab/Amphion/raw/main/models/tts/maskgct/ckpt/wav2vec2bert_stats.pt"


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class HubSource:
    """One file in one Hugging Face repository."""

    repo_id: str
    filename: str  # path inside the repository
    repo_type: str = "model"  # "model", "space" or "dataset"

    def describe(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type} "
        return f"{kind}{self.repo_id}: {self.filename}"


@dataclass(frozen=True)
class WeightFile:
    """A file of the model directory, where it comes from and which tasks need it."""

    local_path: str  # relative to the model directory, '/'-separated
    source: HubSource
    tasks: tuple[str, ...]  # the tasks that need it, or (EVERY_TASK,)
    expected: Expected = NOTHING_KNOWN  # true of every copy (any source, any revision); pins add per-revision values
    mirrors: tuple[HubSource, ...] = ()  # tried in order when `source` fails
    manual_hint: str = ""  # how to get it by hand when no source works; may use {model_dir}

    @property
    def sources(self) -> tuple[HubSource, ...]:
        return (self.source, *self.mirrors)

    def needed_by(self, task: str) -> bool:
        return EVERY_TASK in self.tasks or task in self.tasks


def _same_path(repo_id: str, path: str, tasks: tuple[str, ...] = (EVERY_TASK,)) -> WeightFile:
    return WeightFile(path, HubSource(repo_id, path), tasks)


def _w2v_bert(name: str) -> WeightFile:
    return WeightFile(f"{W2V_BERT_DIR}/{name}", HubSource(W2V_BERT_REPO, name), (EVERY_TASK,))


# Found by searching public pages: the Amphion MaskGCT Space ships the Amphion tree including
# models/tts/maskgct/ckpt/; IndexTeam/IndexTTS-2 hosts a copy whose sha256 equals Amphion's file exactly.
STATS = WeightFile(
    STATS_FILE,
    HubSource("amphion/maskgct", "models/tts/maskgct/ckpt/wav2vec2bert_stats.pt", repo_type="space"),
    (EVERY_TASK,),
    expected=Expected(STATS_SHA256, STATS_SIZE_BYTES),
    mirrors=(HubSource("IndexTeam/IndexTTS-2", STATS_FILE),),
    manual_hint=f"download {STATS_GITHUB_URL} (Amphion's GitHub) and save it as {{model_dir}}/{STATS_FILE}",
)


def lora_rank(cfg: ModelConfig, task: str) -> int:
    return cfg.lora_for(task).r


def _lora_pair(task: str, cfg: ModelConfig) -> tuple[WeightFile, WeightFile]:
    files = stage1_files(task, cfg)  # the loader's own names (rank from cfg.lora[task])
    return _same_path(METIS_REPO, files.lora, (task,)), _same_path(METIS_REPO, files.adapter, (task,))


def weight_table(cfg: ModelConfig | None = None) -> tuple[WeightFile, ...]:
    """Every file a model directory can hold, in download order (small shared files first)."""
    cfg = cfg or ModelConfig()
    return (
        STATS,
        *(_w2v_bert(name) for name in W2V_BERT_FILES),
        _same_path(MASKGCT_REPO, "semantic_codec/model.safetensors"),
        _same_path(MASKGCT_REPO, "acoustic_codec/model.safetensors"),
        _same_path(MASKGCT_REPO, "acoustic_codec/model_1.safetensors"),
        _same_path(MASKGCT_REPO, "s2a_model/s2a_model_1layer/model.safetensors"),
        _same_path(MASKGCT_REPO, "s2a_model/s2a_model_full/model.safetensors"),
        _same_path(METIS_REPO, FULL_VARIANT_FILES["base"], LORA_TASKS),
        *(f for task in LORA_TASKS for f in _lora_pair(task, cfg)),
        _same_path(MASKGCT_REPO, FULL_VARIANT_FILES["tts"], ("tts",)),  # MaskGCT T2S = Metis-TTS (2.99 GB)
        _same_path(METIS_REPO, FULL_VARIANT_FILES["omni"], ("omni",)),  # 3.05 GB
        _same_path(METIS_REPO, FULL_VARIANT_FILES["l2s"], ("l2s",)),  # 2.96 GB; the visual encoder is unreleased
    )


# ----------------------------------------------------------------------------- model directory checks
def default_model_dir() -> Path:
    """`$METIS_RT_MODEL_DIR`, else `~/.cache/metis-rt/models`."""
    return Path(os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR).expanduser()


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    if not tasks:
        raise ConfigError(f"no task given; expected one or more of {', '.join(DOWNLOAD_TARGETS)}")
    unknown = [t for t in tasks if t not in DOWNLOAD_TARGETS]
    if unknown:
        raise ConfigError(
            f"unknown task(s) {unknown}; known: {', '.join(DOWNLOAD_TARGETS)} (omni = the Metis-Omni checkpoint)"
        )
    return tuple(dict.fromkeys(tasks))


def stage1_targets(tasks: Sequence[str], family: str = "task") -> list[str]:
    """What a model directory must hold to run ``tasks`` with the ``family`` stage-1 models (e.g. ["omni"])."""
    return list(dict.fromkeys(stage1_variant(t, family) for t in tasks))


def required_files(tasks: Sequence[str], cfg: ModelConfig | None = None) -> list[WeightFile]:
    """Files the given tasks need together, each once, in download order."""
    wanted = _check_tasks(tasks)
    return [f for f in weight_table(cfg) if any(f.needed_by(t) for t in wanted)]


def missing_files(model_dir: str | Path, tasks: Sequence[str], cfg: ModelConfig | None = None) -> list[WeightFile]:
    root = Path(model_dir).expanduser()
    return [f for f in required_files(tasks, cfg) if not (root / f.local_path).is_file()]


def download_command(model_dir: str | Path, tasks: Sequence[str]) -> str:
    """The shell command that fetches what `tasks` need into `model_dir`."""
    task_list = ",".join(_check_tasks(tasks))
    return f"metis-rt download --tasks {task_list} --model-dir {shlex.quote(str(model_dir))}"


def check_model_dir_exists(model_dir: str | Path, tasks: Sequence[str]) -> None:
    """A mistyped --model-dir is reported as such (not as every file of every task missing)."""
    root = Path(model_dir).expanduser()
    if root.is_dir():
        return
    what = "is not a folder" if root.exists() else "does not exist"
    raise MissingWeightsError(
        str(root),
        [],
        f"model directory {str(root)!r} {what}; check --model-dir (or ${MODEL_DIR_ENV}). "
        f"To fetch the weights into it: {download_command(root, tasks)}",
    )


@dataclass(frozen=True)
class TaskAvailability:
    """Which of the asked tasks a model directory can run now, and what the others lack."""

    model_dir: Path
    present: tuple[str, ...]
    missing: dict[str, tuple[str, ...]]  # task -> the download targets it lacks (its stage-1 variants)
    n_missing_files: int

    def note(self) -> str:
        """One line: what is served, what is not and the exact command that fetches the rest."""
        targets = list(dict.fromkeys(t for ts in self.missing.values() for t in ts))
        return (
            f"running {', '.join(self.present)} only: {', '.join(self.missing)} lack(s) {self.n_missing_files} "
            f"file(s) in {str(self.model_dir)!r}; fetch them with: {download_command(self.model_dir, targets)}"
        )


def task_availability(
    model_dir: str | Path,
    tasks: Sequence[str],
    cfg: ModelConfig | None = None,
    targets_of: Callable[[str], Sequence[str]] = lambda task: [task],
) -> TaskAvailability:
    """Split `tasks` into those whose files are all present and those lacking some (`targets_of`: the download
    targets a task needs, e.g. ``["omni"]`` when it runs on Metis-Omni)."""
    root = Path(model_dir).expanduser()
    check_model_dir_exists(root, [t for task in tasks for t in targets_of(task)])
    present, missing, absent = [], {}, set()
    for task in tasks:
        lacking = missing_files(root, list(targets_of(task)), cfg)
        if lacking:
            missing[task] = tuple(targets_of(task))
            absent.update(f.local_path for f in lacking)
        else:
            present.append(task)
    return TaskAvailability(root, tuple(present), missing, len(absent))


def usable_tasks(
    model_dir: str | Path,
    tasks: Sequence[str],
    cfg: ModelConfig | None = None,
    targets_of: Callable[[str], Sequence[str]] = lambda task: [task],
) -> list[str]:
    """The tasks of `tasks` that `model_dir` can run; a warning names the others and how to fetch them.

    Raises MissingWeightsError (every absent file, one download command) when none can run.
    """
    avail = task_availability(model_dir, tasks, cfg, targets_of)
    if not avail.present:
        check_model_dir(model_dir, list(dict.fromkeys(t for task in tasks for t in targets_of(task))), cfg)
    if avail.missing:
        logger.warning("%s", avail.note())
    return list(avail.present)


def check_model_dir(model_dir: str | Path, tasks: Sequence[str], cfg: ModelConfig | None = None) -> None:
    """Raise MissingWeightsError naming every absent file and the command that fetches them."""
    check_model_dir_exists(model_dir, tasks)
    missing = missing_files(model_dir, tasks, cfg)
    if missing:
        hint = f"Fetch them with:\n  {download_command(model_dir, tasks)}"
        raise MissingWeightsError(str(model_dir), [f.local_path for f in missing], hint)
