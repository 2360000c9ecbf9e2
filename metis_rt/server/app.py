"""The real-time server: one engine (own thread) behind a WebSocket endpoint, plus HTTP on the same port.

``python run_server.py`` / ``metis-rt serve``. With ``mqtt`` configured, sessions can also be steered and watched
over MQTT (``metis_rt.server.mqtt``; the broker is optional at any moment). Shutdown (SIGINT): stop accepting,
flush every streaming session (a TTS session drops its queue and finishes its current sentence) and close it
(1001), clear the sessions' MQTT state, stop the engine, exit 0. Drain (SIGTERM, or :meth:`MetisServer.drain`):
``draining`` becomes True (``/readyz`` says not ready), no new session is admitted, every resumable stream gets a
final ``session.checkpoint`` and is closed 1012 so its client resumes on another worker (``resume_connection``);
the others close as at shutdown; then the server stops.

``stage1`` names the stage-1 families loaded (``task``: each task's own checkpoint, ``omni``: Metis-Omni); a session
picks one (default: the first). With ``tts`` among the tasks the server also speaks text (``tts_service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import secrets
import signal
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from metis_rt.config import STAGE1_FAMILIES, OfficialConfig, stage1_variant
from metis_rt.errors import ConfigError
from metis_rt.server import admission, http, resume_connection
from metis_rt.server import protocol as proto
from metis_rt.server.config import ServerConfig, mqtt_settings
from metis_rt.server.connection import CLOSE_GOING_AWAY, CLOSE_TRY_LATER, Connection
from metis_rt.server.engines import EngineCatalogue
from metis_rt.server.resume import Resumer, server_fingerprint
from metis_rt.server.resume_token import ResumeSettings
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
SESSION_ID_BYTES = 12  # session ids are random (MQTT topics address sessions by id): 96 bits, not guessable
WS_MAX_QUEUE = 4  # received frames websockets buffers per connection (each up to max_message_bytes)


@dataclass
class Counters:
    """Events counted for /metrics (event loop only)."""

    closed_not_reading: int = 0  # clients closed because they stopped reading (outbox full / send timed out)
    refused_capacity: int = 0  # session.start refused: the engine is at its measured capacity
    refused_unstarted: int = 0  # connections closed at once: too many open without a session
    handshake_timeouts: int = 0  # connections closed: no valid session.start in time
    upgrades_refused: dict[str, int] = field(default_factory=dict)  # 503 to a /v1/stream upgrade, by reason


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
        resume: ResumeSettings | None = None,
        model_identity: str = "",
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
        self._engine_ids = itertools.count(1)
        self.counters = Counters()
        self.unstarted = 0  # connections open without a session yet
        self._lock = threading.Lock()
        self._stop: asyncio.Event | None = None
        self.port: int | None = None
        self.ready = False
        self.draining = False  # set when a drain begins (SIGTERM / drain()); /readyz reports not ready from then on
        self.sessions_served = 0
        fingerprint = server_fingerprint(
            official=official,
            stream_cfg=stream_cfg,
            processor=processor,
            deterministic=deterministic,
            model_identity=model_identity,
        )
        self.resumer = None if resume is None or processor is None else Resumer(resume, fingerprint)

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

    def capacity(self) -> int:
        """Sessions admitted now: max_sessions, or fewer when the measured step times say the engine cannot carry
        more in real time (``admission: measured``)."""
        if self.cfg.admission != "measured":
            return self.cfg.max_sessions
        cost = admission.step_cost(list(self.engine.step_ms), list(self.engine.batch_sizes))
        return admission.capacity(cost, self.geometry.chunk_ms, self.stream_cfg.engine.max_batch, self.cfg.max_sessions)

    def readiness(self) -> tuple[str | None, dict]:
        """Why this worker takes no new stream now (None: it takes one), with the numbers behind it.

        ``starting``: not listening yet or models warming up; ``draining``: shutting down or handing its streams
        on; ``full``: sessions plus connections about to start one reach the capacity. (Connections beyond
        ``max_unstarted`` are a flood, not load: they are still upgraded and closed 1013, as before.)"""
        capacity = self.capacity()
        pending = len(self.connections) + self.unstarted
        details = {"sessions": len(self.connections), "unstarted": self.unstarted, "capacity_sessions": capacity}
        if (self._stop is not None and self._stop.is_set()) or getattr(self, "draining", False):
            return "draining", details
        if not self.ready:
            return "starting", details
        if pending >= capacity:
            return "full", details
        return None, details

    def upgrade_refused(self, reason: str) -> None:
        refused = self.counters.upgrades_refused
        refused[reason] = refused.get(reason, 0) + 1

    def probes(self) -> http.Probes:
        return http.Probes(
            self.health, self.metrics_text, self.readiness, self.upgrade_refused, self.cfg.busy_retry_after_s
        )

    def acquire(self, conn: Connection) -> bool:
        capacity = self.capacity()
        with self._lock:
            if self.draining:
                return False
            if len(self.connections) >= capacity:
                if capacity < self.cfg.max_sessions:
                    self.counters.refused_capacity += 1
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
        """A session's public id: random, so one client cannot guess another's (MQTT addresses sessions by id)."""
        return secrets.token_hex(SESSION_ID_BYTES)

    def new_engine_id(self) -> int:
        """The engine's key of a stream session (internal, never shown to clients)."""
        return next(self._engine_ids)

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
            "capacity_sessions": self.capacity(),  # what admission allows now (measured step times)
            "capacity_measured": self._cost() is not None,
            "algorithmic_latency_ms": self.geometry.latency_ms,
            "chunk_ms": self.geometry.chunk_ms,
            "voices": self.voices.names(),
            "tts_voices": self.voices.with_transcript() if self.tts_service is not None else [],
            "protocol": proto.PROTOCOL_VERSION,
            "mqtt": None if mqtt is None else {"node": mqtt.control.topics.node, "connected": mqtt.connected},
        }

    def _cost(self) -> admission.StepCost | None:
        return admission.step_cost(list(self.engine.step_ms), list(self.engine.batch_sizes))

    def _metis_latency(self) -> dict[str, float]:
        return {"metis": self.geometry.latency_ms} if self.metis_tasks else {}

    def metrics_text(self) -> str:
        steps = list(self.engine.step_ms)
        batches = list(self.engine.batch_sizes)
        counters = self.counters
        lines = [
            "# TYPE metis_capacity_sessions gauge",
            f"metis_capacity_sessions {self.capacity()}",
            "# TYPE metis_connections_unstarted gauge",
            f"metis_connections_unstarted {self.unstarted}",
            "# TYPE metis_clients_closed_not_reading_total counter",
            f"metis_clients_closed_not_reading_total {counters.closed_not_reading}",
            "# TYPE metis_sessions_refused_capacity_total counter",
            f"metis_sessions_refused_capacity_total {counters.refused_capacity}",
            "# TYPE metis_connections_refused_unstarted_total counter",
            f"metis_connections_refused_unstarted_total {counters.refused_unstarted}",
            "# TYPE metis_handshake_timeouts_total counter",
            f"metis_handshake_timeouts_total {counters.handshake_timeouts}",
            "# TYPE metis_upgrades_refused_total counter",
            *(f'metis_upgrades_refused_total{{reason="{r}"}} {n}' for r, n in counters.upgrades_refused.items()),
            "# TYPE metis_ready gauge",
            f"metis_ready {int(self.readiness()[0] is None)}",
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
        bind = host or self.cfg.host
        check_exposure(bind, self.tokens, self.cfg.insecure)
        policy = edge_policy(self.cfg, bind, self.tokens)
        tls = tls_context(self.cfg)
        probes = self.probes()
        self.catalogue.start()
        try:
            await asyncio.to_thread(self.warm_up)
            async with (
                serve(
                    self._handle,
                    bind,
                    self.cfg.port if port is None else port,
                    process_request=lambda _conn, req: http.route(req, policy, probes),
                    max_size=self.cfg.max_message_bytes,
                    max_queue=WS_MAX_QUEUE,
                    ssl=tls,
                    logger=ws_logger(),
                ) as server,
                self._mqtt_running(),
            ):
                self.port = server.sockets[0].getsockname()[1]
                self.ready = True
                scheme = "wss" if tls is not None else "ws"
                log.info("listening on %s://%s:%d%s", scheme, bind, self.port, http.STREAM_PATH)
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
        """SIGINT: shut down (flush, 1001). SIGTERM: drain (checkpoints, 1012), then shut down."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGTERM, self.begin_drain, True)

    def begin_drain(self, then_stop: bool = False) -> asyncio.Task:
        """Start :meth:`drain` from synchronous code on the event loop (a signal handler); stop afterwards if asked."""

        async def drain() -> None:
            await self.drain()
            if then_stop:
                self.stop()

        task = asyncio.get_running_loop().create_task(drain(), name="drain")
        self._drain_task = task  # keep a reference: the loop holds tasks weakly
        return task

    async def drain(self) -> None:
        """Stop admitting, give every resumable stream a final checkpoint and close it 1012 (others: flush, 1001)."""
        self.draining = True
        log.info("draining %d session(s)", len(self.connections))
        resumable = [c for c in list(self.connections) if resume_connection.resumable(c)]
        others = [c for c in list(self.connections) if c not in resumable]
        await asyncio.gather(
            *(resume_connection.close_for_drain(c) for c in resumable),
            *(self._close_one(c) for c in others),
            return_exceptions=True,
        )

    async def _handle(self, ws) -> None:
        if self.unstarted >= self.cfg.max_unstarted:
            self.counters.refused_unstarted += 1
            await ws.close(CLOSE_TRY_LATER, "too many connections without a session")
            return
        conn = Connection(self, ws)
        try:
            await conn.run()
        except ConnectionClosed:
            log.debug("client went away")
        except Exception:  # one broken connection must not affect the others
            log.exception("connection failed")
            await ws.close(1011, "internal error")

    async def _close_all(self) -> None:
        await asyncio.gather(*(self._close_one(c) for c in list(self.connections)), return_exceptions=True)

    async def _close_one(self, conn: Connection) -> None:
        if conn.ws.close_code is not None:  # closed already (a drain's 1012, or the client left)
            return
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

    def warm_up(self) -> None:
        """One hop per streaming task and stage-1 family through the engine, and one short TTS utterance per
        family, so the first client does not pay for lazy initialisation."""
        for family in self.stage1 if self.processor is not None else ():
            for task in self.metis_tasks:
                if task != "tts":
                    self._warm_up_stream(task, family)
        if self.tts_service is not None:
            self.tts_service.warm_up(self.stage1)
        self.engine.step_ms.clear()  # first steps pay for lazy initialisation: not what sessions will cost
        self.engine.batch_sizes.clear()
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


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (``localhost`` or a loopback address)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def check_exposure(bind: str, tokens: frozenset[str], insecure: bool) -> None:
    """ConfigError for a non-loopback bind without a token, unless ``insecure`` says the network is trusted."""
    if not is_loopback(bind) and not tokens and not insecure:
        raise ConfigError(
            f"refusing to listen on {bind!r} (reachable from other machines) without a token: give --token or "
            "--token-file (and --tls-cert/--tls-key beyond a trusted LAN), or --insecure on a network you trust"
        )


def edge_policy(cfg: ServerConfig, bind: str, tokens: frozenset[str]) -> http.EdgePolicy:
    """The HTTP edge's checks for this server: its tokens, extra origins, and the host names it answers to."""
    names = {name.lower() for name in (*cfg.allow_hosts, bind) if name}
    return http.EdgePolicy(tokens, frozenset(o.lower().rstrip("/") for o in cfg.allow_origins), frozenset(names))


def tls_context(cfg: ServerConfig) -> ssl.SSLContext | None:
    """wss:// and https:// with ``tls_cert`` + ``tls_key``; ConfigError when only one is given or they do not load."""
    if cfg.tls_cert is None and cfg.tls_key is None:
        return None
    if cfg.tls_cert is None or cfg.tls_key is None:
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cfg.tls_cert} / key {cfg.tls_key}: {exc}") from exc
    return context


def ws_logger() -> logging.Logger:
    """websockets' logger, with query and bearer tokens redacted (its DEBUG lines quote request lines)."""
    logger = logging.getLogger("metis_rt.server.websockets")
    if not any(isinstance(f, http.RedactTokens) for f in logger.filters):
        logger.addFilter(http.RedactTokens())
    return logger
