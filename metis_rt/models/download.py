"""Fetching official weight files into a model directory: pinned commits, published sizes/hashes checked.

Each official repository is fetched at a pinned commit, and every new file is checked against its published size
and sha256 where one is recorded (``metis_rt.models.hub_pins`` lists them with their sources); files with nothing
recorded are reported as unverified. ``revision=`` (``metis-rt download --revision main``) opts out of the pins.
Before anything is fetched one short TCP probe tells whether the hub is reachable at all; when it is not, only
the Hugging Face cache is tried (no retries) and the error says the cause once.

Downloads go through :func:`huggingface_hub.hf_hub_download` into the Hugging Face cache (resumable, with
progress bars, shared with other tools) and are then *hard-linked* into the model directory (copied when the
cache is on another file system). A hard link costs no extra disk space, survives a cache clean-up (unlike a
symlink into the cache), and lets the model directory have its own layout, which differs from the repos' for
w2v-BERT and the stats file.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Sequence
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

from metis_rt.config import ModelConfig
from metis_rt.errors import MetisError
from metis_rt.models.hub import HubSource, WeightFile, required_files
from metis_rt.models.hub_pins import REPO_PINS, pin_for
from metis_rt.models.verify import UNVERIFIED, Expected, IntegrityError, verify_file

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
NOT_CACHED = "not in the Hugging Face cache"
PROBE_TIMEOUT_S = 3.0  # one TCP connection to the hub before downloading: no network is known in seconds
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")  # a proxy reaches what a direct probe cannot


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
        fetched, present = len(self.fetched), len(self.present)
        out = [f"{fetched} file(s) fetched into {self.model_dir}; {present} already there (not re-checked)"]
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
