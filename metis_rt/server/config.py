"""Server configuration (``configs/server.yaml``) and the MQTT settings derived from it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from metis_rt.config import CONFIG_DIR, apply_overrides, from_dict, read_mapping
from metis_rt.control.commands import (
    BrokerConfig,
    BrokerUrlError,
    CommandError,
    Topics,
    default_node,
    parse_broker_url,
)
from metis_rt.errors import ConfigError

SERVER_CONFIG = CONFIG_DIR / "server.yaml"
MQTT_RECONNECT_INITIAL_S = 0.5


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 16
    idle_timeout_s: float = 30.0
    stats_interval_s: float = 1.0
    max_message_bytes: int = 8 * 1024 * 1024
    voices_dir: str | None = None
    busy_retry_after_s: float = 5.0
    admission: str = "measured"  # "measured": also refuse sessions the engine cannot carry in real time; "fixed"
    handshake_timeout_s: float = 10.0  # a connection must send a valid session.start within this; else closed 1008
    max_unstarted: int = 32  # connections open without a session; beyond: closed at once (1013)
    send_timeout_s: float = 10.0  # a frame that cannot be written for this long: the client stopped reading (closed)
    allow_origins: tuple[str, ...] = ()  # web origins allowed besides the server's own page and loopback ("*": any)
    allow_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback names, IP literals and the bound host
    tls_cert: str | None = None  # PEM certificate (chain): serve wss:// and https://
    tls_key: str | None = None  # its PEM private key
    insecure: bool = False  # allow a non-loopback bind without a token (trusted networks only)
    mqtt: str | None = None  # broker URL mqtt[s]://[user[:pass]@]host[:port][/prefix]; None = no MQTT
    mqtt_node: str | None = None  # this server's topic level; None = the host name, sanitised
    mqtt_ca_file: str | None = None  # PEM bundle to trust for mqtts:// (default: the system store)
    mqtt_insecure: bool = False  # mqtts:// without certificate checks (testing only)
    mqtt_reconnect_max_s: float = 30.0  # reconnect backoff doubles from 0.5 s up to this
    tts_max_pending: int = 4  # tts.speak requests queued behind the one being spoken; beyond: rejected (error)
    tts_stage1_steps: int | None = None  # TTS decoding steps (None: configs/metis.yaml's, the official 25)
    tts_s2a_steps: tuple[int, ...] | None = None  # per S2A layer, 12 values (None: the official [40, 16, 1, ...])


@dataclass(frozen=True)
class MqttSettings:
    broker: BrokerConfig
    node: str
    reconnect_initial_s: float
    reconnect_max_s: float


def load_server_config(path: str | Path = SERVER_CONFIG, overrides: Sequence[str] = ()) -> ServerConfig:
    return from_dict(ServerConfig, apply_overrides(read_mapping(path), overrides), where=str(path))


def mqtt_settings(cfg: ServerConfig, password: str | None = None) -> MqttSettings | None:
    """Broker and node of ``cfg`` (None when ``cfg.mqtt`` is unset); ConfigError for anything unusable.

    ``password`` (from ``METIS_RT_MQTT_PASSWORD``) is used when the URL names a user but no password, so the
    password need not appear on the command line.
    """
    if not cfg.mqtt:
        return None
    try:
        broker = parse_broker_url(cfg.mqtt, ca_file=cfg.mqtt_ca_file, insecure=cfg.mqtt_insecure)
    except BrokerUrlError as exc:
        raise ConfigError(f"mqtt: {exc}") from exc
    if not broker.tls and (cfg.mqtt_ca_file or cfg.mqtt_insecure):
        raise ConfigError("mqtt_ca_file / mqtt_insecure only apply to TLS: use an mqtts:// broker URL")
    if cfg.mqtt_ca_file and not Path(cfg.mqtt_ca_file).is_file():
        raise ConfigError(f"mqtt_ca_file {cfg.mqtt_ca_file!r} is not a readable file (expected a PEM bundle)")
    if password and broker.username is not None and broker.password is None:
        broker = dataclasses.replace(broker, password=password)
    node = cfg.mqtt_node or default_node()
    try:
        Topics(broker.prefix, node)
    except CommandError as exc:
        raise ConfigError(f"mqtt_node: {exc.reason}") from exc
    if cfg.mqtt_reconnect_max_s <= 0:
        raise ConfigError(f"mqtt_reconnect_max_s must be positive, got {cfg.mqtt_reconnect_max_s}")
    return MqttSettings(broker, node, min(MQTT_RECONNECT_INITIAL_S, cfg.mqtt_reconnect_max_s), cfg.mqtt_reconnect_max_s)
