"""Official weight files: which ones a task needs, whether a model directory has them, and fetching them.

A *model directory* holds the official Hugging Face repos merged into one tree (paths relative to it)::

    metis_base/model.safetensors                                  amphion/Metis
    metis_<task>/metis_<task>_lora_<r>{,_adapter}.safetensors     amphion/Metis (r: ModelConfig.lora[task].r)
    semantic_codec/, acoustic_codec/, s2a_model/...               amphion/MaskGCT
    w2v-bert-2.0/{config.json,model.safetensors,preprocessor_config.json}   facebook/w2v-bert-2.0 (repo root)
    wav2vec2bert_stats.pt                                         Space amphion/maskgct (Amphion's ckpt/ copy)
    config.json                                                   optional, Amphion format (never downloaded)

The Metis and MaskGCT weights are licensed CC BY-NC 4.0 by their authors.

Each official repository is fetched at a pinned commit, and every new file is checked against its published size
and sha256 where one is recorded (``metis_rt.models.hub_pins`` lists them with their sources); files with nothing
recorded are reported as unverified. ``revision=`` (``metis-rt download --revision main``) opts out of the pins.

Downloads go through :func:`huggingface_hub.hf_hub_download` into the Hugging Face cache (resumable, with
progress bars, shared with other tools) and are then *hard-linked* into the model directory (copied when the
cache is on another file system). A hard link costs no extra disk space, survives a cache clean-up (unlike a
symlink into the cache), and lets the model directory have its own layout, which differs from the repos' for
w2v-BERT and the stats file.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm.auto import tqdm

from metis_rt.config import ALL_TASKS, ModelConfig, stage1_variant
from metis_rt.errors import ConfigError, MetisError, MissingWeightsError
from metis_rt.models.hub_pins import MASKGCT_REPO, METIS_REPO, REPO_PINS, W2V_BERT_REPO, pin_for
from metis_rt.models.stage1_loading import FULL_VARIANT_FILES, stage1_files
from metis_rt.models.verify import NOTHING_KNOWN, UNVERIFIED, Expected, IntegrityError, verify_file

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

PARTIAL_SUFFIX = ".partial"
NOT_CACHED = "not in the Hugging Face cache"
PROBE_TIMEOUT_S = 3.0  # one TCP connection to the hub before downloading: no network is known in seconds
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")  # a proxy reaches what a direct probe cannot


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


# ----------------------------------------------------------------------------- downloading
class DownloadError(MetisError):
    """Some model files could not be fetched; `failures` maps local paths to reasons (one per source)."""

    def __init__(self, model_dir: Path, failures: dict[str, list[str]], n_wanted: int, unreachable: str | None = None):
        self.model_dir = model_dir
        self.failures = failures
        lines = [f"could not fetch {len(failures)} of {n_wanted} file(s) into {str(model_dir)!r}:"]
        if unreachable is not None:  # one cause for all: said once, each file then only names what else to try
            lines[0] = (
                f"the Hugging Face Hub is unreachable ({unreachable}); {len(failures)} of {n_wanted} file(s) are "
                f"not in the Hugging Face cache and were not fetched into {str(model_dir)!r}:"
            )
        for local_path, reasons in failures.items():
            others = [r for r in reasons if not r.endswith(NOT_CACHED)] if unreachable else reasons
            lines.append(f"  - {local_path}")
            lines.extend(f"      {reason}" for reason in others)
        lines.append(
            "What to do: check the network (or unset HF_HUB_OFFLINE); for gated repos log in with "
            "`hf auth login` or pass a token; then run the download again: files already fetched are kept "
            "and partial downloads resume."
        )
        super().__init__("\n".join(lines))


class _SilentTqdm(tqdm):
    """A tqdm that never draws (hf_hub_download's `tqdm_class` when progress=False)."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


@dataclass(frozen=True)
class _Request:
    """One source of one file, resolved: the revision and path to ask for, and what the file must be."""

    source: HubSource
    revision: str | None  # None: the repository's default branch (unpinned mirrors)
    filename: str
    expected: Expected

    def describe(self) -> str:
        at = f" @ {self.revision[:12]}" if self.revision else ""
        return f"{self.source.describe()}{at}"


def resolve(wf: WeightFile, src: HubSource, revision: str | None = None) -> _Request:
    """Where to fetch `wf` from `src`: its pinned commit (with published values), or `revision` when given."""
    official = src.repo_id in REPO_PINS
    if revision is not None and official:  # the user's revision: per-commit hashes do not apply
        return _Request(src, revision, src.filename, wf.expected)
    pin = pin_for(src.repo_id, src.filename)
    if pin is None:  # a mirror we do not pin: only values true of every copy are checked
        return _Request(src, None, src.filename, wf.expected)
    merged = Expected(wf.expected.sha256 or pin.expected.sha256, wf.expected.size_bytes or pin.expected.size_bytes)
    return _Request(src, pin.revision, pin.filename or src.filename, merged)


@dataclass
class DownloadReport:
    """What `download` did: the files fetched and how each new file was checked."""

    model_dir: Path
    fetched: list[Path] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)  # local path -> "sha256", "size only" or "unverified"
    present: list[str] = field(default_factory=list)  # already in the model directory (not re-checked)

    @property
    def unverified(self) -> list[str]:
        return [p for p, how in self.checks.items() if how == UNVERIFIED]

    def lines(self) -> list[str]:
        out = [f"{len(self.fetched)} file(s) fetched into {self.model_dir}; {len(self.present)} already there"]
        for how in ("sha256", "size only"):
            names = [p for p, h in self.checks.items() if h == how]
            if names:
                out.append(f"verified ({how}): {', '.join(names)}")
        if self.unverified:
            out.append(
                f"NOT verified (no published size or hash recorded for them, or --revision given): "
                f"{', '.join(self.unverified)}"
            )
        return out


@dataclass
class _Fetcher:
    cache_dir: Path | None
    token: str | bool | None
    progress: bool
    revision: str | None = None  # None: the pinned commits
    unreachable: str | None = None  # after a connection failure: later files come from the cache only

    def fetch(self, wf: WeightFile, model_dir: Path) -> tuple[list[str], str]:
        """Materialise `wf` under `model_dir`; return (a failure reason per source tried, how it was checked)."""
        reasons = []
        for src in wf.sources:
            request = resolve(wf, src, self.revision)
            try:
                cached = self._download(request)
                how = verify_file(cached, request.expected, wf.local_path)
                linked = _materialise(cached, model_dir / wf.local_path)
                logger.info("%s: fetched from %s (%s; %s)", wf.local_path, request.describe(), linked, how)
                return [], how
            except Exception as exc:  # any failure of one source is reported, and the next source tried
                logger.debug("fetching %s from %s failed", wf.local_path, request.describe(), exc_info=True)
                reasons.append(f"{request.describe()}: {self._explain(exc)}")
        if wf.manual_hint:
            reasons.append(f"by hand: {wf.manual_hint.format(model_dir=model_dir)}")
        return reasons, UNVERIFIED

    def _download(self, request: _Request) -> Path:
        logger.info("fetching %s", request.describe())
        path = hf_hub_download(
            request.source.repo_id,
            request.filename,
            repo_type=request.source.repo_type,
            revision=request.revision,
            cache_dir=self.cache_dir,
            token=self.token,
            local_files_only=self.unreachable is not None,
            tqdm_class=None if self.progress else _SilentTqdm,
        )
        return Path(path)

    def _explain(self, exc: Exception) -> str:
        """A one-line reason for `exc`; remembers a connection failure so later files skip the network."""
        if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)) and hf_constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE=1 is set and the file is not in the Hugging Face cache"
        if isinstance(exc, LocalEntryNotFoundError) and self.unreachable is not None:
            return NOT_CACHED  # the cause (the hub unreachable) is said once, by DownloadError
        if isinstance(exc, (LocalEntryNotFoundError, ConnectionError, TimeoutError)):
            cause = exc.__cause__ or exc
            self.unreachable = f"{type(cause).__name__}: {_first_line(cause)}"
            return f"cannot reach the Hugging Face Hub and the file is not cached ({self.unreachable})"
        return _explain_hub_error(exc)


def hub_unreachable() -> str | None:
    """One short TCP connection to the hub's endpoint: None when it answers, else why not (no retries)."""
    if any(os.environ.get(name) for name in PROXY_ENV):
        return None  # a proxy may reach what a direct connection cannot: let the download try
    parts = urlsplit(hf_constants.ENDPOINT)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"no connection to {host}:{port} within {PROBE_TIMEOUT_S:g} s: {type(exc).__name__}: {_first_line(exc)}"


def _explain_hub_error(exc: Exception) -> str:
    if isinstance(exc, GatedRepoError):
        return "gated repository (HTTP 401/403): accept its terms on huggingface.co, log in or pass a token"
    if isinstance(exc, RepositoryNotFoundError):
        return "repository not found, or private and no valid token was given (HTTP 401/404)"
    if isinstance(exc, RevisionNotFoundError):
        return "revision not found in the repository"
    if isinstance(exc, EntryNotFoundError):
        return "file not found in the repository (HTTP 404)"
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return f"HTTP {status} from the hub: {_first_line(exc)}"
    if isinstance(exc, IntegrityError):
        return str(exc)
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _materialise(cached: Path, dest: Path) -> str:
    """Hard-link (or, across file systems, copy) a cached file to `dest` atomically; say which was done."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + PARTIAL_SUFFIX)
    tmp.unlink(missing_ok=True)
    blob = cached.resolve()
    try:
        os.link(blob, tmp)
        how = "hard link to the Hugging Face cache"
    except OSError:
        shutil.copyfile(blob, tmp)
        how = "copied from the Hugging Face cache"
    os.replace(tmp, dest)
    return how


def download(
    model_dir: str | Path,
    tasks: Sequence[str],
    cfg: ModelConfig | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    progress: bool = True,
    revision: str | None = None,
) -> DownloadReport:
    """Fetch the files `tasks` need into `model_dir`, skipping those present; verify each new file.

    The official repositories are fetched at pinned commits (``metis_rt.models.hub_pins``) unless `revision` is
    given. Raises DownloadError listing every file that could not be fetched and why (after trying all of them).
    """
    root = Path(model_dir).expanduser()
    wanted = required_files(tasks, cfg)
    todo = [f for f in wanted if not (root / f.local_path).is_file()]
    report = DownloadReport(root, present=[f.local_path for f in wanted if f not in todo])
    logger.info("%d of %d file(s) already in %s; fetching %d", len(report.present), len(wanted), root, len(todo))
    fetcher = _Fetcher(Path(cache_dir).expanduser() if cache_dir else None, token, progress, revision)
    if todo and not hf_constants.HF_HUB_OFFLINE:
        fetcher.unreachable = hub_unreachable()  # no network: the cache only, no retries
    failures: dict[str, list[str]] = {}
    for wf in todo:
        reasons, how = fetcher.fetch(wf, root)
        if reasons:
            failures[wf.local_path] = reasons
        else:
            report.fetched.append(root / wf.local_path)
            report.checks[wf.local_path] = how
    if failures:
        raise DownloadError(root, failures, len(todo), fetcher.unreachable)
    return report
