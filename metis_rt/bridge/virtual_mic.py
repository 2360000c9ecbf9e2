"""A virtual microphone on Linux, made of PulseAudio / PipeWire-pulse modules loaded through ``pactl``.

The bridge plays into a null sink; a remapped source on that sink's monitor is what apps list as a microphone
(browsers and Electron apps hide ``*.monitor`` sources, so the monitor alone is not enough)::

    bridge ──► sink <name> (module-null-sink) ──► <name>.monitor ──► source <name>_mic (module-remap-source)
                                                                      "Metis Virtual Microphone"

Ownership: both modules carry the properties ``metis_rt.owner=<pid>``, ``metis_rt.owner_start=<start ticks>`` and
``metis_rt.host=<hostname>`` in their arguments, so :func:`cleanup_stale` can find the modules of a run that crashed
(its owner process is gone, or the pid now belongs to a process started later) and unload them. Modules without
these properties, or owned by another host, are never touched. A small JSON state file per live microphone in
``$XDG_RUNTIME_DIR/metis-rt/`` says what a run created, for people and for cleanup.

Shutdown: :meth:`VirtualMic.remove` runs on leaving the ``with`` block, at interpreter exit (``atexit``), and after
SIGTERM once :func:`install_signal_handlers` turned it into ``SystemExit``. An asyncio program may instead cancel
its main task from ``loop.add_signal_handler(SIGTERM, ...)``; leaving the ``with`` block then removes the modules.
A SIGKILL leaves the modules behind; the next :meth:`VirtualMic.create` (or :func:`cleanup_stale`) removes them.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from metis_rt.errors import MetisError

log = logging.getLogger(__name__)

DEFAULT_SINK_NAME = "metis_vmic"
DEFAULT_DESCRIPTION = "Metis Virtual Microphone"
SOURCE_SUFFIX = "_mic"
OWNER_KEY = "metis_rt.owner"
OWNER_START_KEY = "metis_rt.owner_start"
HOST_KEY = "metis_rt.host"
PACTL_TIMEOUT_S = 5.0
STATE_SUBDIR = "metis-rt"

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_UNSAFE_DESCRIPTION_CHARS = set("'\"\\\n\r\t")
_PROP_RE = re.compile(r"(metis_rt\.[a-z_]+)=([A-Za-z0-9_.-]+)")
_START_HINT = (
    "start one with `pulseaudio --start` (or `systemctl --user start pipewire-pulse` on PipeWire systems) "
    "and check that PULSE_SERVER / XDG_RUNTIME_DIR point at it"
)


class VirtualMicError(MetisError):
    """The virtual microphone could not be created or removed."""


# ----------------------------------------------------------------------------- pure helpers
@dataclass(frozen=True)
class Owner:
    """The process that loaded a module: pid, its start time in clock ticks since boot (None if unknown), host."""

    pid: int
    start_ticks: int | None
    host: str


@dataclass(frozen=True)
class ModuleEntry:
    """One line of ``pactl list short modules``."""

    index: int
    name: str
    argument: str


def _check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise VirtualMicError(f"device name {name!r} must be letters, digits, '_', '.' or '-', e.g. 'metis_vmic'")
    return name


def _properties(description: str, owner: Owner) -> str:
    """The quoted proplist value of ``sink_properties=`` / ``source_properties=`` (outer '', inner "")."""
    bad = sorted(_UNSAFE_DESCRIPTION_CHARS & set(description))
    if bad or not description:
        raise VirtualMicError(f"description {description!r} must be non-empty without quotes, backslashes or tabs")
    marks = [f"{OWNER_KEY}={owner.pid}", f"{HOST_KEY}={_check_name(owner.host)}"]
    if owner.start_ticks is not None:
        marks.append(f"{OWNER_START_KEY}={owner.start_ticks}")
    return "'" + " ".join([f'device.description="{description}"', *marks]) + "'"


def null_sink_args(
    sink_name: str, description: str, owner: Owner, rate_hz: int | None = None, channels: int | None = None
) -> list[str]:
    """``pactl load-module`` arguments of the null sink the bridge plays into."""
    args = ["module-null-sink", f"sink_name={_check_name(sink_name)}"]
    args += [f"rate={int(rate_hz)}"] if rate_hz else []
    args += [f"channels={int(channels)}"] if channels else []
    return [*args, f"sink_properties={_properties(description, owner)}"]


def remap_source_args(sink_name: str, source_name: str, description: str, owner: Owner) -> list[str]:
    """``pactl load-module`` arguments of the source apps pick, remapped from the sink's monitor."""
    return [
        "module-remap-source",
        f"master={_check_name(sink_name)}.monitor",
        f"source_name={_check_name(source_name)}",
        f"source_properties={_properties(description, owner)}",
    ]


def parse_short_modules(text: str) -> list[ModuleEntry]:
    """Parse ``pactl list short modules``: ``index<TAB>name<TAB>argument<TAB>usage``; other lines are skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip().isdigit():
            continue
        argument = fields[2] if len(fields) > 2 else ""
        entries.append(ModuleEntry(int(fields[0]), fields[1].strip(), argument))
    return entries


def parse_owner(argument: str) -> Owner | None:
    """The owner marked in a module argument, or None when the module is not ours."""
    props = dict(_PROP_RE.findall(argument))
    if not props.get(OWNER_KEY, "").isdigit() or HOST_KEY not in props:
        return None
    start = props.get(OWNER_START_KEY, "")
    return Owner(int(props[OWNER_KEY]), int(start) if start.isdigit() else None, props[HOST_KEY])


def stale_modules(entries: list[ModuleEntry], host: str, is_alive: Callable[[Owner], bool]) -> list[ModuleEntry]:
    """Our modules (marked, same host) whose owner is gone; sources first, so each is unloaded before its sink."""
    stale = []
    for entry in entries:
        owner = parse_owner(entry.argument)
        if owner is not None and owner.host == host and not is_alive(owner):
            stale.append(entry)
    return sorted(stale, key=lambda e: (e.name != "module-remap-source", e.index))


# ----------------------------------------------------------------------------- processes
def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None if it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22; the command name may contain spaces and ')'


def current_owner() -> Owner:
    pid = os.getpid()
    return Owner(pid, process_start_ticks(pid), socket.gethostname())


def owner_alive(owner: Owner) -> bool:
    """Whether the owning process still runs (a reused pid with another start time counts as gone)."""
    start = process_start_ticks(owner.pid)
    if start is not None:
        return owner.start_ticks is None or start == owner.start_ticks
    if Path("/proc/self/stat").exists():
        return False  # /proc works here and has no entry for the pid
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- pactl
def _pactl(*args: str) -> str:
    """Run ``pactl`` and return its stdout; errors name the command and carry pactl's own message."""
    exe = shutil.which("pactl")
    if exe is None:
        raise VirtualMicError("pactl not found: install it (Debian/Ubuntu: apt-get install pulseaudio-utils)")
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=PACTL_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise VirtualMicError(f"`pactl {' '.join(args)}` did not answer within {PACTL_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        message = "; ".join((proc.stderr or proc.stdout).split("\n")).strip("; ") or f"exit status {proc.returncode}"
        if "Connection failure" in message or "pa_context_connect" in message:
            raise VirtualMicError(f"no PulseAudio/PipeWire server reachable ({message}); {_START_HINT}")
        raise VirtualMicError(f"`pactl {' '.join(args)}` failed: {message}")
    return proc.stdout


def check_server() -> None:
    """Raise :class:`VirtualMicError` unless ``pactl`` exists and reaches a sound server."""
    _pactl("info")


def list_modules() -> list[ModuleEntry]:
    return parse_short_modules(_pactl("list", "short", "modules"))


def _short_names(kind: str) -> set[str]:
    lines = _pactl("list", "short", kind).splitlines()
    return {line.split("\t")[1] for line in lines if line.count("\t") >= 1}


def pulse_endpoints() -> tuple[list[str], list[str]]:
    """(sources, sinks) by PulseAudio name: what ``pulse:NAME`` takes. VirtualMicError when pactl cannot say."""
    return sorted(_short_names("sources")), sorted(_short_names("sinks"))


def describe_pulse_endpoints() -> str:
    """The ``--list-devices`` section for PulseAudio / PipeWire-pulse, or one line saying why there is none."""
    try:
        sources, sinks = pulse_endpoints()
    except VirtualMicError as exc:
        return f"PulseAudio: no names to list ({exc})"
    lines = ["PulseAudio sources (--input pulse:NAME):"]
    lines += [f"  pulse:{name}" for name in sources] or ["  (none)"]
    lines.append("PulseAudio sinks (--output-device or --monitor pulse:NAME):")
    lines += [f"  pulse:{name}" for name in sinks] or ["  (none)"]
    return "\n".join(lines)


def default_state_dir() -> Path | None:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / STATE_SUBDIR if runtime else None


def cleanup_stale(state_dir: Path | None = None) -> list[int]:
    """Unload the modules of crashed earlier runs (ours, same host, owner gone); return their indices."""
    host = socket.gethostname()
    unloaded = []
    for entry in stale_modules(list_modules(), host, owner_alive):
        log.warning("unloading stale virtual-microphone module %d (%s) of a run that ended", entry.index, entry.name)
        try:
            _pactl("unload-module", str(entry.index))
            unloaded.append(entry.index)
        except VirtualMicError as exc:  # gone meanwhile: the remap source goes with its sink
            log.debug("stale module %d: %s", entry.index, exc)
    state_dir = state_dir or default_state_dir()
    for path in sorted(state_dir.glob("vmic-*.json")) if state_dir and state_dir.is_dir() else []:
        try:
            owner = Owner(**json.loads(path.read_text())["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner.host == host and not owner_alive(owner):
            path.unlink(missing_ok=True)
    return unloaded


# ----------------------------------------------------------------------------- the device
class VirtualMic:
    """A null sink the bridge plays into plus a remapped source that apps list as a microphone.

    ``with VirtualMic() as mic:`` creates both and removes them on exit; play into ``mic.sink_name``, apps pick
    the source described as ``description`` (``mic.source_name``).
    """

    def __init__(
        self,
        name: str = DEFAULT_SINK_NAME,
        description: str = DEFAULT_DESCRIPTION,
        rate_hz: int | None = None,
        channels: int | None = None,
        state_dir: Path | None = None,
        clean_stale: bool = True,
    ):
        self.sink_name = _check_name(name)
        self.source_name = _check_name(name + SOURCE_SUFFIX)
        self.description = description
        self.rate_hz, self.channels = rate_hz, channels
        self.state_dir = state_dir or default_state_dir()
        self.clean_stale = clean_stale
        self.module_indices: list[int] = []  # in load order: sink, source

    @property
    def created(self) -> bool:
        return bool(self.module_indices)

    def create(self) -> VirtualMic:
        """Load the sink and the source; on any failure unload what was loaded and raise."""
        if self.created:
            return self
        check_server()
        if self.clean_stale:
            cleanup_stale(self.state_dir)
        taken = {self.sink_name, self.source_name} & (_short_names("sinks") | _short_names("sources"))
        if taken:
            raise VirtualMicError(
                f"a sound device named {sorted(taken)} already exists (another bridge running?); pick another name"
            )
        owner = current_owner()
        atexit.register(self.remove)
        try:
            args = null_sink_args(
                self.sink_name, self.description + " (bridge output)", owner, self.rate_hz, self.channels
            )
            self._load(args)
            self._load(remap_source_args(self.sink_name, self.source_name, self.description, owner))
        except BaseException:
            self.remove()
            raise
        self._write_state(owner)
        log.info("virtual microphone %r ready: play into sink %r", self.description, self.sink_name)
        return self

    def _load(self, args: list[str]) -> None:
        try:
            out = _pactl("load-module", *args)
        except VirtualMicError as exc:
            raise VirtualMicError(f"could not load {args[0]}: {exc} (the sound server's log has details)") from exc
        self.module_indices.append(int(out.strip()))

    def remove(self) -> None:
        """Unload exactly the modules this object loaded (source first); safe to call repeatedly."""
        atexit.unregister(self.remove)
        errors = []
        while self.module_indices:
            index = self.module_indices.pop()
            try:
                _pactl("unload-module", str(index))
            except VirtualMicError as exc:
                errors.append(f"module {index}: {exc}")
        if self._state_path():
            self._state_path().unlink(missing_ok=True)
        if errors:
            log.warning("virtual microphone removal incomplete: %s", "; ".join(errors))

    def _state_path(self) -> Path | None:
        return self.state_dir / f"vmic-{self.sink_name}.json" if self.state_dir else None

    def _write_state(self, owner: Owner) -> None:
        path = self._state_path()
        if path is None:
            return
        state = {
            "owner": owner.__dict__,
            "modules": self.module_indices,
            "sink": self.sink_name,
            "source": self.source_name,
            "server": os.environ.get("PULSE_SERVER", ""),
        }
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.write_text(json.dumps(state))
        except OSError as exc:
            log.debug("could not write %s: %s", path, exc)

    def __enter__(self) -> VirtualMic:
        return self.create()

    def __exit__(self, *exc_info) -> None:
        self.remove()


def install_signal_handlers(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Turn ``signals`` into ``SystemExit(128 + signum)`` so ``with`` blocks and ``atexit`` remove the devices.

    Call from the main thread of a synchronous program (SIGINT already raises KeyboardInterrupt). Asyncio programs
    should use ``loop.add_signal_handler`` to cancel their main task instead.
    """

    def _exit(signum: int, _frame) -> None:
        raise SystemExit(128 + signum)

    for sig in signals:
        signal.signal(sig, _exit)
