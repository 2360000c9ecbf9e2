"""``MqttControl``: the asyncio/aiomqtt shell around the pure ``metis_rt.control.commands``.

One connection at a time is an ``asyncio.TaskGroup`` of a reader (commands in) and a writer
(state/stats/errors out). When the broker goes away the group ends, and ``run()`` reconnects with
capped exponential backoff (with jitter); on every (re)connect it resubscribes, republishes
``online`` and every retained state it holds. The status topic carries a last will ``offline``.

Callers never wait for the network: ``publish_state``, ``publish_stats`` and ``clear_session`` are
plain methods that only update memory and wake the writer. Call them from the event-loop thread
(from another thread, go through ``loop.call_soon_threadsafe``).

Overload policy (nothing grows without bound):

- **state / clears** are retained and *coalesced by topic*: only the newest payload per topic is
  pending, so the pending set is bounded by the number of state topics (one per live session plus
  the bridge). A clear (empty retained payload) replaces a pending state of the same topic.
- **stats and error answers** go to a bounded ``asyncio.Queue`` (``transient_queue_size``); when it
  is full the *oldest* entry is dropped and counted in ``dropped_transient``. While disconnected they
  are dropped at once (stale stats are worthless) and counted too.
- **incoming commands** are bounded by aiomqtt's ``max_queued_incoming_messages``; beyond it aiomqtt
  drops them with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import secrets
import ssl
from collections.abc import Awaitable, Callable

import aiomqtt

from metis_rt.control.commands import (
    BrokerConfig,
    Command,
    CommandError,
    Topics,
    error_payload,
    parse_command,
)

log = logging.getLogger(__name__)

CommandHandler = Callable[[str | None, Command], Awaitable[None] | None]

QOS = 1
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
STOP_PUBLISH_TIMEOUT_S = 2.0
MAX_INCOMING_MESSAGES = 256


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that an inner ``asyncio.wait_for`` swallowed.

    On Python 3.11, ``wait_for`` (used inside aiomqtt's ``publish``) returns normally when its inner
    future completes in the same loop step as the cancel; the task then keeps running and its
    ``TaskGroup`` never exits. ``Task.cancelling()`` still counts the request, so we honour it here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class MqttControl:
    """Connects one node to an MQTT broker: commands in, retained state and stats out."""

    def __init__(
        self,
        broker: BrokerConfig,
        node: str,
        on_command: CommandHandler,
        *,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        keepalive_s: int = 30,
        transient_queue_size: int = 64,
    ):
        self.broker = broker
        self.topics = Topics(broker.prefix, node)
        self._on_command = on_command
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._keepalive_s = keepalive_s
        self._retained: dict[str, bytes] = {}  # topic -> current state JSON, republished on reconnect
        self._pending: dict[str, bytes] = {}  # topic -> newest retained payload not yet sent (b"" = clear)
        self._transient: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=transient_queue_size)
        self._wake = asyncio.Event()
        self._sent = asyncio.Event()  # set while no retained state/clear waits to be published
        self._sent.set()
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self.dropped_transient = 0
        self.connections = 0

    # ------------------------------------------------------------------ caller side (never blocks)
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until connected (subscribed, status published); ``TimeoutError`` after ``timeout_s``."""
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    def publish_state(self, session_id: str | None, state: dict) -> None:
        """Record ``state`` as the retained settings of a session (``None``: the bridge) and send it."""
        topic = self.topics.state(session_id)
        payload = json.dumps(state, sort_keys=True).encode()
        self._retained[topic] = payload
        self._pending[topic] = payload
        self._sent.clear()
        self._wake.set()

    def clear_session(self, session_id: str) -> None:
        """Forget a finished session and clear its retained state on the broker."""
        topic = self.topics.state(session_id)
        self._retained.pop(topic, None)
        self._pending[topic] = b""
        self._sent.clear()
        self._wake.set()

    def publish_stats(self, session_id: str | None, stats: dict) -> None:
        """Send (not retained) statistics; dropped while disconnected or when the queue is full."""
        self._enqueue_transient(self.topics.stats(session_id), json.dumps(stats, sort_keys=True).encode())

    def _enqueue_transient(self, topic: str, payload: bytes) -> None:
        if not self.connected:
            self.dropped_transient += 1
            return
        if self._transient.full():
            self._transient.get_nowait()  # drop the oldest
            self.dropped_transient += 1
            log.debug("MQTT outgoing queue full: dropped the oldest stats/error message")
        self._transient.put_nowait((topic, payload))
        self._wake.set()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every recorded state and clear has been published (True); False when disconnected or not
        done within ``timeout_s``. For a clean shutdown: ``clear_session(...)``, ``await flush(...)``, ``stop()``."""
        if not self.connected:
            return False
        try:
            await asyncio.wait_for(self._sent.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Connect, serve, reconnect with capped exponential backoff until ``stop()``."""
        if self._running:
            raise RuntimeError("MqttControl.run() is already running; create one component per node")
        self._running = True
        delay_s = self._reconnect_initial_s
        try:
            while not self._stopping.is_set():
                try:
                    await self._serve_once()
                    delay_s = self._reconnect_initial_s
                except* aiomqtt.MqttError as group:
                    log.warning("MQTT %s:%d unavailable (%s)", self.broker.host, self.broker.port, group.exceptions[0])
                finally:
                    self._connected.clear()
                if self._stopping.is_set():
                    break
                wait_s = delay_s * random.uniform(0.5, 1.0)
                log.info("MQTT reconnecting in %.2f s", wait_s)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._stopping.wait()
                delay_s = min(delay_s * 2, self._reconnect_max_s)
        finally:
            self._running = False
            self._stopped.set()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Publish ``offline`` (retained) if connected, disconnect cleanly and let ``run()`` return.

        Raises ``TimeoutError`` if ``run()`` has not returned within ``timeout_s``.
        """
        self._stopping.set()
        if self._running:
            await asyncio.wait_for(self._stopped.wait(), timeout_s)

    def _client(self) -> aiomqtt.Client:
        tls_context = None
        if self.broker.tls:
            tls_context = ssl.create_default_context(cafile=self.broker.ca_file)
            if self.broker.insecure:
                tls_context.check_hostname = False
                tls_context.verify_mode = ssl.CERT_NONE
        return aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            username=self.broker.username,
            password=self.broker.password,
            identifier=f"metis-{self.topics.node}-{secrets.token_hex(4)}",
            will=aiomqtt.Will(self.topics.status, STATUS_OFFLINE, qos=QOS, retain=True),
            keepalive=self._keepalive_s,
            tls_context=tls_context,
            tls_insecure=self.broker.insecure if self.broker.tls else None,
            max_queued_incoming_messages=MAX_INCOMING_MESSAGES,
        )

    async def _serve_once(self) -> None:
        async with self._client() as client:
            await client.subscribe(self.topics.subscription, qos=QOS)
            await client.publish(self.topics.status, STATUS_ONLINE, qos=QOS, retain=True)
            self._pending = {**self._pending, **self._retained}  # keep pending clears, republish states
            if self._pending:
                self._sent.clear()
            self.connections += 1
            self._connected.set()
            self._wake.set()
            log.info("MQTT connected to %s:%d as node %r", self.broker.host, self.broker.port, self.topics.node)
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._read(client), name="mqtt-read")
                writer = group.create_task(self._write(client), name="mqtt-write")
                await self._stopping.wait()
                self._connected.clear()
                reader.cancel()
                writer.cancel()
            try:
                async with asyncio.timeout(STOP_PUBLISH_TIMEOUT_S):
                    await client.publish(self.topics.status, STATUS_OFFLINE, qos=QOS, retain=True)
                log.info("MQTT published offline; disconnecting")
            except (TimeoutError, aiomqtt.MqttError) as exc:  # the broker still sends the will
                log.warning("MQTT could not publish offline on stop (%s); relying on the last will", exc)

    # ------------------------------------------------------------------ connection tasks
    async def _write(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                topic = next(iter(self._pending))
                payload = self._pending.pop(topic)
                try:
                    await client.publish(topic, payload, qos=QOS, retain=True)
                    _raise_if_cancelled()
                except BaseException:
                    self._pending.setdefault(topic, payload)  # resend after reconnect unless superseded
                    raise
            self._sent.set()
            while not self._transient.empty():
                topic, payload = self._transient.get_nowait()
                await client.publish(topic, payload, qos=0, retain=False)
                _raise_if_cancelled()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            raw = message.payload
            payload = bytes(raw) if isinstance(raw, bytes | bytearray) else b"" if raw is None else str(raw).encode()
            if self.topics.is_output(topic):
                continue
            await self._dispatch(topic, payload)
            _raise_if_cancelled()
        raise aiomqtt.MqttError("the broker connection ended the message stream")  # reconnect

    async def _dispatch(self, topic: str, payload: bytes) -> None:
        try:
            session_id, setting = self.topics.parse(topic)
            command = parse_command(setting, payload)
        except CommandError as exc:
            log.info("MQTT rejected %s: %s", topic, exc.reason)
            self._enqueue_transient(self.topics.error, error_payload(topic, payload, exc.reason))
            return
        try:
            result = self._on_command(session_id, command)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except CommandError as exc:  # the handler refused it (e.g. unknown session): say why, change nothing
            log.info("MQTT command %s refused: %s", topic, exc.reason)
            self._enqueue_transient(self.topics.error, error_payload(topic, payload, exc.reason))
        except Exception as exc:
            log.exception("MQTT command handler failed for %s", topic)
            reason = f"handler failed: {type(exc).__name__}: {exc}"
            self._enqueue_transient(self.topics.error, error_payload(topic, payload, reason))
