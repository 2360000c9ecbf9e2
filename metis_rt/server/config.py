"""Server configuration (``configs/server.yaml``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from metis_rt.config import CONFIG_DIR, apply_overrides, from_dict, read_mapping

SERVER_CONFIG = CONFIG_DIR / "server.yaml"


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


def load_server_config(path: str | Path = SERVER_CONFIG, overrides: Sequence[str] = ()) -> ServerConfig:
    return from_dict(ServerConfig, apply_overrides(read_mapping(path), overrides), where=str(path))
