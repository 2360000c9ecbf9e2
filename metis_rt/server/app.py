"""The real-time server: one engine (own thread) behind a WebSocket endpoint, plus HTTP on the same port.

``python run_server.py`` / ``metis-rt serve``. With ``mqtt`` configured, sessions can also be steered and watched
over MQTT (``metis_rt.server.mqtt``; the broker is optional at any moment). Shutdown (SIGINT/SIGTERM): stop
accepting, flush every streaming session (a TTS session drops its queue and finishes its current sentence) and
close it (1001), clear the sessions' MQTT state, stop the engine, exit 0.

``stage1`` names the stage-1 families loaded (``task``: each task's own checkpoint, ``omni``: Metis-Omni); a session
picks one (default: the first). With ``tts`` among the tasks the server also speaks text (``tts_service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from metis_rt.config import STAGE1_FAMILIES, OfficialConfig, stage1_variant
from metis_rt.errors import ConfigError
from metis_rt.server import http
from metis_rt.server import protocol as proto
from metis_rt.server.config import ServerConfig, mqtt_settings
from metis_rt.server.connection import CLOSE_GOING_AWAY, Connection
from metis_rt.server.engines import EngineCatalogue
from metis_rt.server.voices import VoiceLibrary
from metis_rt.streaming.config import StreamConfig, stream_decoding
from metis_rt.streaming.engine import Engine
from metis_rt.streaming.geometry import Geometry
from metis_rt.streaming.processor import WindowProcessor
from metis_rt.streaming.session import SessionSpec, StreamSession
from metis_rt.streaming.window import ReferenceTokens

if TYPE_CHECKING:
    from metis_rt.server.mqtt import ServerMqtt
    from metis_rt.server.tts_service import TtsService
    from metis_rt.text.tokenizer import PhoneTokenizer

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0
WARMUP_REFERENCE_S = 1.0


class MetisServer:
    def __init__(
        self,
        processor: WindowProcessor | None,
        official: OfficialConfig,
        stream_cfg: StreamConfig,
        cfg: ServerConfig,
        *,
        tasks: Iterable[str],
        stage1: Iterable[str] = ("task",),
        tokenizer: PhoneTokenizer | None = None,
        tokens: Iterable[str] = (),
        deterministic: bool = False,
        mqtt_password: str | None = None,
        frame_engines: Iterable[str] = (),
    ):
        self.processor = processor
        self.official = official
        self.stream_cfg = stream_cfg
        self.cfg = cfg
        self.metis_tasks = tuple(tasks) if processor is not None else ()  # tasks the Metis models were loaded for
        self.catalogue = EngineCatalogue(self.metis_tasks, tuple(frame_engines), stream_cfg.engine)
        self.tasks = self.catalogue.tasks()  # every task some engine serves
        self.stage1 = tuple(stage1)  # loaded stage-1 families; the first is the sessions' default
        if not self.stage1 or set(self.stage1) - set(STAGE1_FAMILIES):
            raise ConfigError(f"stage1 must name some of {', '.join(STAGE1_FAMILIES)}, got {list(self.stage1)}")
        self.tokens = frozenset(tokens)
        self.deterministic = deterministic
        self.geometry = Geometry.from_config(stream_cfg.geometry)
        self.engine = Engine(processor, stream_cfg.engine)
        self.voices = VoiceLibrary(cfg.voices_dir)
        self.tts_service = self._tts_service(tokenizer) if "tts" in self.tasks else None
        self.mqtt_settings = mqtt_settings(cfg, mqtt_password)  # ConfigError now, not when a client is waiting
        self.connections: set[Connection] = set()
        self.sessions: dict[str, Connection] = {}  # open sessions by id (MQTT commands address them)
        self.mqtt: ServerMqtt | None = None  # while running with a broker configured (connected or not)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stop: asyncio.Event | None = None
        self.port: int | None = None
        self.ready = False
        self.sessions_served = 0

    def _tts_service(self, tokenizer: PhoneTokenizer | None) -> TtsService:
        from metis_rt.server.tts_service import TtsService

        pipeline = getattr(self.processor, "pipeline", None)
        if tokenizer is None or pipeline is None:
            raise ConfigError("serving tts needs the Metis models (a MetisWindowProcessor) and a PhoneTokenizer")
        submit = self.engine.submit
        return TtsService(
            pipeline, tokenizer, self.official, self.cfg, self.voices, submit, deterministic=self.deterministic
        )

    # --- sessions -------------------------------------------------------------------------------
    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise proto.ProtocolError("task_unavailable", f"this server runs {', '.join(self.tasks)}; not {task!r}")

    def check_stage1(self, family: str | None, task: str) -> str:
        """The stage-1 family a session of ``task`` runs on (None: the server's default); ProtocolError if none."""
        family = family or self.stage1[0]
        if family not in self.stage1:
            raise proto.ProtocolError(
                "stage1_unavailable",
                f"this server loaded the stage-1 model family {', '.join(self.stage1)}; not {family!r} "
                "(start the server with --stage1 task,omni to offer both)",
            )
        try:
            stage1_variant(task, family)
        except ConfigError as exc:
            raise proto.ProtocolError("stage1_unavailable", str(exc)) from None
        return family

    def acquire(self, conn: Connection) -> bool:
        with self._lock:
            if len(self.connections) >= self.cfg.max_sessions:
                return False
            self.connections.add(conn)
            self.sessions_served += 1
            return True

    def release(self, conn: Connection) -> None:
        with self._lock:
            self.connections.discard(conn)
            registered = self.sessions.get(conn.session_id) is conn
            if registered:
                del self.sessions[conn.session_id]
        if conn.session is not None:
            self.engine.remove(conn.session.id)
            self.catalogue.remove(conn.session.id)
        if registered and self.mqtt is not None:
            self.mqtt.clear(conn.session_id)

    def session_opened(self, conn: Connection) -> None:
        with self._lock:
            self.sessions[conn.session_id] = conn
        self.session_changed(conn)

    def session_changed(self, conn: Connection) -> None:
        """The session's settings changed (open, or an update from its client or MQTT): publish its state."""
        if self.mqtt is not None and self.sessions.get(conn.session_id) is conn:
            self.mqtt.publish_state(conn)

    def session_stats(self, conn: Connection, stats: proto.Stats) -> None:
        if self.mqtt is not None and self.sessions.get(conn.session_id) is conn:
            self.mqtt.publish_stats(conn, stats)

    def new_session_id(self) -> str:
        return str(next(self._ids))

    def prepare_reference(self, audio16: np.ndarray, audio24: np.ndarray) -> ReferenceTokens:
        """Blocking; runs the models on the engine thread (call from a worker thread, not the event loop)."""
        return self.engine.submit(lambda: self.processor.prepare_reference(audio16, audio24)).result()

    # --- HTTP -----------------------------------------------------------------------------------
    def health(self) -> dict:
        mqtt = self.mqtt
        return {
            "status": "ok" if self.ready else "starting",
            "ready": self.ready,
            "tasks": list(self.tasks),
            "engines": self.catalogue.health(),
            "engine_latency_ms": {**self.catalogue.latency_ms(), **self._metis_latency()},
            "stage1": list(self.stage1),
            "sessions": len(self.connections),
            "max_sessions": self.cfg.max_sessions,
            "algorithmic_latency_ms": self.geometry.latency_ms,
            "chunk_ms": self.geometry.chunk_ms,
            "voices": self.voices.names(),
            "tts_voices": self.voices.with_transcript() if self.tts_service is not None else [],
            "protocol": proto.PROTOCOL_VERSION,
            "mqtt": None if mqtt is None else {"node": mqtt.control.topics.node, "connected": mqtt.connected},
        }

    def _metis_latency(self) -> dict[str, float]:
        return {"metis": self.geometry.latency_ms} if self.metis_tasks else {}

    def metrics_text(self) -> str:
        steps = list(self.engine.step_ms)
        batches = list(self.engine.batch_sizes)
        lines = [
            "# TYPE metis_sessions_active gauge",
            f"metis_sessions_active {len(self.connections)}",
            "# TYPE metis_sessions_max gauge",
            f"metis_sessions_max {self.cfg.max_sessions}",
            "# TYPE metis_sessions_total counter",
            f"metis_sessions_total {self.sessions_served}",
            "# TYPE metis_engine_step_ms gauge",
            f'metis_engine_step_ms{{quantile="0.5"}} {np.percentile(steps, 50) if steps else 0:.3f}',
            f'metis_engine_step_ms{{quantile="0.99"}} {np.percentile(steps, 99) if steps else 0:.3f}',
            "# TYPE metis_engine_batch_size gauge",
            f"metis_engine_batch_size {np.mean(batches) if batches else 0:.3f}",
            "# TYPE metis_session_dropped_ms gauge",
        ]
        for conn in list(self.connections):
            if conn.session is not None:
                snap = conn.session.metrics.snapshot()
                labels = f'session="{conn.session_id}",task="{conn.task}"'
                lines.append(f"metis_session_dropped_ms{{{labels}}} {snap['dropped_ms']:.1f}")
                lines.append(f"metis_session_rtf{{{labels}}} {snap['rtf']:.4f}")
        return "\n".join(lines) + "\n"

    # --- lifecycle ------------------------------------------------------------------------------
    async def run(
        self, host: str | None = None, port: int | None = None, on_ready: Callable[[int], None] | None = None
    ) -> None:
        self._stop = asyncio.Event()
        self.engine.start()
        self.catalogue.start()
        try:
            await asyncio.to_thread(self.warm_up)
            async with (
                serve(
                    self._handle,
                    host or self.cfg.host,
                    self.cfg.port if port is None else port,
                    process_request=lambda _conn, req: http.route(req, self.tokens, self.health, self.metrics_text),
                    max_size=self.cfg.max_message_bytes,
                ) as server,
                self._mqtt_running(),
            ):
                self.port = server.sockets[0].getsockname()[1]
                self.ready = True
                log.info("listening on ws://%s:%d%s", host or self.cfg.host, self.port, http.STREAM_PATH)
                if on_ready is not None:
                    on_ready(self.port)
                await self._stop.wait()
                self.ready = False
                server.close(close_connections=False)  # stop accepting
                await self._close_all()
        finally:
            self.engine.stop()
            self.catalogue.stop()

    @contextlib.asynccontextmanager
    async def _mqtt_running(self) -> AsyncIterator[None]:
        if self.mqtt_settings is None:
            yield
            return
        from metis_rt.server.mqtt import ServerMqtt  # imports aiomqtt: only when configured

        mqtt = ServerMqtt(self, self.mqtt_settings)
        broker = self.mqtt_settings.broker
        log.info("MQTT control on %s:%d, topics %s/#", broker.host, broker.port, mqtt.control.topics.base)
        async with mqtt.running():
            self.mqtt = mqtt
            try:
                yield
            finally:
                self.mqtt = None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)

    async def _handle(self, ws) -> None:
        conn = Connection(self, ws)
        try:
            await conn.run()
        except ConnectionClosed:
            log.debug("client went away")
        except Exception:  # one broken connection must not affect the others
            log.exception("connection failed")
            await ws.close(1011, "internal error")

    async def _close_all(self) -> None:
        async def close(conn: Connection) -> None:
            try:
                if conn.tts is not None:
                    conn.tts.cancel()
                    conn.tts.end()
                    async with asyncio.timeout(SHUTDOWN_FLUSH_S):
                        await conn.tts.ended.wait()
                        await conn.out.drained()
                elif conn.session is not None and not conn.session.done:
                    conn.session.finish()
                    async with asyncio.timeout(SHUTDOWN_FLUSH_S):
                        await conn.flushed.wait()
                        await conn.out.drained()
            except (TimeoutError, ConnectionClosed):
                pass
            await conn.ws.close(CLOSE_GOING_AWAY, "server shutting down")

        await asyncio.gather(*(close(c) for c in list(self.connections)), return_exceptions=True)

    def warm_up(self) -> None:
        """One hop per streaming task and stage-1 family through the engine, and one short TTS utterance per
        family, so the first client does not pay for lazy initialisation."""
        for family in self.stage1 if self.processor is not None else ():
            for task in self.metis_tasks:
                if task != "tts":
                    self._warm_up_stream(task, family)
        if self.tts_service is not None:
            self.tts_service.warm_up(self.stage1)
        log.info("warm-up done for %s (engines: %s)", ", ".join(self.tasks), self.catalogue.health())

    def _warm_up_stream(self, task: str, family: str) -> None:
        rate = 16000
        reference = None
        if task in ("tse", "vc"):
            silence16 = np.zeros(int(WARMUP_REFERENCE_S * rate) + 240, dtype=np.float32)
            reference = self.prepare_reference(silence16, np.zeros(24000, dtype=np.float32))
        settings = stream_decoding(self.official, task, self.stream_cfg.steps_for(task))
        session = StreamSession(
            -1,
            SessionSpec(task, rate, rate, settings, deterministic=True, stage1=family),
            self.geometry,
            self.stream_cfg.engine,
            self.processor.num_quantizers,
            reference,
        )
        self.engine.add(session)
        session.push(np.zeros(self.geometry.ssl_samples_needed(0), dtype=np.float32))
        self.engine.wait_idle()
        self.engine.remove(session.id)
