"""Pure MQTT control-plane logic: broker URLs, topic layout and command validation.

No asyncio and no MQTT library here: everything takes strings/bytes and returns typed values,
so it is tested in milliseconds. The asyncio shell is ``metis_rt.control.mqtt``.

Topic layout (``<prefix>`` defaults to ``metis``; ``<node>`` names this process):

- ``<prefix>/<node>/set/<setting>``                   command to the bridge's own session
- ``<prefix>/<node>/session/<id>/set/<setting>``      command to one server session
- ``<prefix>/<node>/status``                          retained ``online`` / ``offline``
- ``<prefix>/<node>/state``, ``.../session/<id>/state`` retained JSON of current settings
- ``<prefix>/<node>/stats``, ``.../session/<id>/stats`` periodic JSON, not retained
- ``<prefix>/<node>/error``                           JSON ``{"topic", "payload", "reason"}``
"""

from __future__ import annotations

import json
import math
import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from metis_rt.errors import MetisError

DEFAULT_PREFIX = "metis"
MQTT_PASSWORD_ENV = "METIS_RT_MQTT_PASSWORD"  # read by the entry points, so a password need not be on the command line
DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
SETTINGS = ("bypass", "mix", "task", "voice", "steps", "strength")
STRENGTH_RANGE_DB = (0.0, 100.0)  # = metis_rt.denoisers.STRENGTH_RANGE_DB (attenuation limit of the CPU denoisers)
TASKS = ("se", "tse", "vc")
S2A_STAGES = 12
MAX_VOICE_CHARS = 128
MAX_ECHOED_PAYLOAD_CHARS = 200
_TRUE_WORDS = frozenset({"true", "1", "on"})
_FALSE_WORDS = frozenset({"false", "0", "off"})
_OUTPUT_LEAVES = frozenset({"status", "state", "stats", "error"})
_FORBIDDEN_TOPIC_CHARS = frozenset("/+#\0")


class CommandError(MetisError):
    """A control message (topic or payload) is invalid; ``reason`` says what was expected."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class BrokerUrlError(MetisError):
    """A broker URL cannot be parsed."""


# ----------------------------------------------------------------------------- broker URL
@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect. ``ca_file``/``insecure`` only matter when ``tls`` is set."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    tls: bool = False
    prefix: str = DEFAULT_PREFIX
    ca_file: str | None = None
    insecure: bool = False


def parse_broker_url(url: str, *, ca_file: str | None = None, insecure: bool = False) -> BrokerConfig:
    """Parse ``mqtt://[user:pass@]host[:port][/prefix]`` or ``mqtts://...`` (TLS).

    The port defaults to 1883 (``mqtt``) or 8883 (``mqtts``); the prefix (the URL path, which may
    hold several levels such as ``home/metis``) defaults to ``metis``. User and password are
    percent-decoded, so ``p%40ss`` means ``p@ss``.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("mqtt", "mqtts"):
        raise BrokerUrlError(
            f"broker URL {url!r} has scheme {parts.scheme!r}; expected mqtt://host[:port] or mqtts://host[:port]"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise BrokerUrlError(f"broker URL {url!r} has an invalid port; expected 1..65535") from exc
    if not parts.hostname:
        raise BrokerUrlError(f"broker URL {url!r} has no host; expected e.g. mqtt://127.0.0.1:1883")
    if "?" in url or "#" in url:
        raise BrokerUrlError(f"broker URL {url!r} has a query or fragment; remove everything from '?' or '#'")
    tls = parts.scheme == "mqtts"
    prefix = parts.path.strip("/") or DEFAULT_PREFIX
    try:
        check_topic_levels(prefix, what="prefix")
    except CommandError as exc:
        raise BrokerUrlError(f"broker URL {url!r}: {exc.reason}") from exc
    return BrokerConfig(
        host=parts.hostname,
        port=port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=tls,
        prefix=prefix,
        ca_file=ca_file,
        insecure=insecure,
    )


def check_topic_levels(value: str, *, what: str, allow_slash: bool = True) -> None:
    """Raise ``CommandError`` unless ``value`` is usable as (a run of) literal topic level(s)."""
    levels = value.split("/") if allow_slash else [value]
    for level in levels:
        bad = _FORBIDDEN_TOPIC_CHARS & set(level)
        if not level or bad:
            raise CommandError(
                f"{what} {value!r} must be a non-empty topic name without wildcards ('+', '#')"
                + ("" if allow_slash else " or slashes")
            )


def default_node(hostname: str | None = None, fallback: str = "metis-server") -> str:
    """This machine's name as one MQTT topic level: characters other than letters, digits, ``-``, ``_`` and
    ``.`` become ``-`` (``gpu box/1`` -> ``gpu-box-1``)."""
    name = socket.gethostname() if hostname is None else hostname
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or fallback


# ----------------------------------------------------------------------------- topics
class Topics:
    """Builds and parses every topic of one node under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, node: str = "default"):
        check_topic_levels(prefix, what="prefix")
        check_topic_levels(node, what="node name", allow_slash=False)
        self.prefix = prefix
        self.node = node
        self.base = f"{prefix}/{node}"

    @property
    def subscription(self) -> str:
        """The one filter we subscribe to: everything under our node (outputs are ignored)."""
        return f"{self.base}/#"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def error(self) -> str:
        return f"{self.base}/error"

    def _scope(self, session_id: str | None) -> str:
        if session_id is None:
            return self.base
        check_topic_levels(session_id, what="session id", allow_slash=False)
        return f"{self.base}/session/{session_id}"

    def command(self, session_id: str | None, setting: str) -> str:
        return f"{self._scope(session_id)}/set/{setting}"

    def state(self, session_id: str | None) -> str:
        return f"{self._scope(session_id)}/state"

    def stats(self, session_id: str | None) -> str:
        return f"{self._scope(session_id)}/stats"

    def _levels(self, topic: str) -> list[str] | None:
        head = self.base + "/"
        return topic[len(head) :].split("/") if topic.startswith(head) else None

    def is_output(self, topic: str) -> bool:
        """True for topics this node publishes itself (status, state, stats, error): not commands."""
        levels = self._levels(topic)
        if levels is None:
            return False
        if len(levels) == 1:
            return levels[0] in _OUTPUT_LEAVES
        return len(levels) == 3 and levels[0] == "session" and levels[2] in ("state", "stats")

    def parse(self, topic: str) -> tuple[str | None, str]:
        """Return ``(session_id or None, setting)`` for a command topic; raise ``CommandError`` otherwise."""
        levels = self._levels(topic)
        if levels is None:
            raise CommandError(f"topic {topic!r} is not under {self.base + '/'!r}")
        if len(levels) == 2 and levels[0] == "set":
            session_id, setting = None, levels[1]
        elif len(levels) == 4 and levels[0] == "session" and levels[2] == "set" and levels[1]:
            session_id, setting = levels[1], levels[3]
        else:
            raise CommandError(
                f"unknown topic {topic!r}; expected {self.base}/set/<setting> or {self.base}/session/<id>/set/<setting>"
            )
        if setting not in SETTINGS:
            raise CommandError(f"unknown setting {setting!r}; expected one of {', '.join(SETTINGS)}")
        return session_id, setting


def error_payload(topic: str, payload: bytes, reason: str) -> bytes:
    """The JSON answer published on ``Topics.error`` (the payload is echoed, truncated, as text)."""
    text = payload.decode("utf-8", errors="replace")[:MAX_ECHOED_PAYLOAD_CHARS]
    return json.dumps({"topic": topic, "payload": text, "reason": reason}).encode()


# ----------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class SetBypass:
    enabled: bool


@dataclass(frozen=True)
class SetMix:
    mix: float


@dataclass(frozen=True)
class SetTask:
    task: str


@dataclass(frozen=True)
class SetVoice:
    voice: str


@dataclass(frozen=True)
class SetSteps:
    stage1: int | None = None
    s2a: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SetStrength:
    """Attenuation limit of a CPU denoiser in dB (0 = no reduction, 100 = unlimited)."""

    db: float


Command = SetBypass | SetMix | SetTask | SetVoice | SetSteps | SetStrength


def _decode(payload: bytes) -> tuple[str, object]:
    """Return the stripped text and, if the text is JSON, the decoded value (else the text itself)."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise CommandError("payload is not UTF-8 text") from exc
    if not text:
        raise CommandError("payload is empty")
    try:
        return text, json.loads(text)
    except ValueError:
        return text, text


def _parse_bypass(text: str, value: object) -> SetBypass:
    if isinstance(value, bool):
        return SetBypass(value)
    word = (value if isinstance(value, str) else text).strip().lower()
    if word in _TRUE_WORDS:
        return SetBypass(True)
    if word in _FALSE_WORDS:
        return SetBypass(False)
    raise CommandError(f"bypass got {text!r}; expected true/false, 1/0 or on/off")


def _parse_mix(text: str, value: object) -> SetMix:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"mix got {text!r}; expected a number between 0 and 1")
    mix = float(value)
    if not math.isfinite(mix) or not 0.0 <= mix <= 1.0:
        raise CommandError(f"mix got {text!r}; expected a number between 0 and 1")
    return SetMix(mix)


def _parse_strength(text: str, value: object) -> SetStrength:
    low, high = STRENGTH_RANGE_DB
    expected = f"expected an attenuation limit in dB between {low:g} and {high:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"strength got {text!r}; {expected}")
    db = float(value)
    if not math.isfinite(db) or not low <= db <= high:
        raise CommandError(f"strength got {text!r}; {expected}")
    return SetStrength(db)


def _parse_task(text: str, value: object) -> SetTask:
    task = value.strip().lower() if isinstance(value, str) else None
    if task not in TASKS:
        raise CommandError(f"task got {text!r}; expected one of {', '.join(TASKS)}")
    return SetTask(task)


def _parse_voice(text: str, value: object) -> SetVoice:
    voice = value.strip() if isinstance(value, str) else text
    if not voice or "/" in voice or "\\" in voice or len(voice) > MAX_VOICE_CHARS or not voice.isprintable():
        raise CommandError(
            f"voice got {text!r}; expected a printable name of 1..{MAX_VOICE_CHARS} characters without slashes"
        )
    return SetVoice(voice)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _parse_steps(text: str, value: object) -> SetSteps:
    expected = f'expected JSON like {{"stage1": 8, "s2a": [{S2A_STAGES} integers >= 1]}} (either key optional)'
    if not isinstance(value, dict) or not value:
        raise CommandError(f"steps got {text!r}; {expected}")
    unknown = sorted(set(value) - {"stage1", "s2a"})
    if unknown:
        raise CommandError(f"steps got unknown key(s) {unknown}; {expected}")
    stage1 = value.get("stage1")
    if stage1 is not None and not _is_count(stage1):
        raise CommandError(f"steps.stage1 got {stage1!r}; expected an integer >= 1")
    s2a = value.get("s2a")
    if s2a is not None:
        if not isinstance(s2a, list) or len(s2a) != S2A_STAGES or not all(_is_count(n) for n in s2a):
            raise CommandError(f"steps.s2a got {s2a!r}; expected a list of {S2A_STAGES} integers >= 1")
        s2a = tuple(s2a)
    return SetSteps(stage1=stage1, s2a=s2a)


_PARSERS = {
    "bypass": _parse_bypass,
    "mix": _parse_mix,
    "task": _parse_task,
    "voice": _parse_voice,
    "steps": _parse_steps,
    "strength": _parse_strength,
}


def parse_command(setting: str, payload: bytes) -> Command:
    """Validate one payload for ``setting``; raise ``CommandError`` with what was expected."""
    parser = _PARSERS.get(setting)
    if parser is None:
        raise CommandError(f"unknown setting {setting!r}; expected one of {', '.join(SETTINGS)}")
    text, value = _decode(payload)
    return parser(text, value)
