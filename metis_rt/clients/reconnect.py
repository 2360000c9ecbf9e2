"""Opening a stream again after its connection was lost or drained: the one reconnect loop of every client.

:func:`reopen` tries the URLs in turn (one URL behind a balancer is the usual case), sends ``session.resume`` with
the latest checkpoint's token (or ``session.start`` without one), waits between failed attempts by a
:class:`~metis_rt.clients.resume.Backoff` (honouring a server's ``Retry-After``) and gives up with a
:class:`~metis_rt.clients.wire.ClientError` once the backoff is spent or a failure cannot be retried (HTTP 401, a
bad URL). A refused token (``error`` after ``session.resume``) is reported to ``on_refused``, and the next attempt
starts afresh.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from metis_rt.clients import wire
from metis_rt.clients.live_resume import LiveStream
from metis_rt.clients.resume import RESUMABLE_CLOSE_CODES, RESUMABLE_HTTP_STATUS, Backoff
from metis_rt.clients.uplink import Uplink

log = logging.getLogger(__name__)


def retry_after(exc: wire.ClientError) -> float | None:
    """The wait a failed connection attempt asks for (0: none given), or None when retrying cannot help."""
    if isinstance(exc, wire.ServerBusy):
        return exc.retry_after_s
    cause = exc.__cause__
    if isinstance(cause, InvalidStatus):
        if cause.response.status_code not in RESUMABLE_HTTP_STATUS:
            return None
        value = cause.response.headers.get("Retry-After", "")
        return float(value) if value.isdigit() else 0.0
    if isinstance(cause, (OSError, TimeoutError, ConnectionClosed)):
        return 0.0
    return None


def should_move(close_code: int | None) -> bool:
    """A connection closed with this code is worth reopening (lost, service restart, try again later)."""
    return close_code in RESUMABLE_CLOSE_CODES


async def wait_to_retry(backoff: Backoff, wait_hint: float | None, exc: wire.ClientError) -> None:
    """Sleep the backoff's next wait; raise ``exc`` when retrying cannot help, ClientError once the budget is spent."""
    if wait_hint is None:
        raise exc
    wait = backoff.next_wait_s(wait_hint or None)
    if wait is None:
        raise wire.ClientError(f"gave up reconnecting after {backoff.max_total_s:g} s of waiting: {exc}") from exc
    await asyncio.sleep(wait)


async def reopen(
    urls: Sequence[str],
    start: str,
    resume_token: Callable[[], str | None],
    on_refused: Callable[[wire.ClientError], None],
    backoff: Backoff,
    token: str | None = None,
) -> tuple[ClientConnection, wire.Ready]:
    """Connect to the next URL that takes the stream: ``session.resume`` while ``resume_token()`` gives a token,
    ``session.start`` otherwise. Returns the connection and its ``session.resumed`` / ``session.ready``."""
    for url in itertools.cycle(urls):
        held = resume_token()
        message = start if held is None else wire.resume_message(held)
        try:
            return await wire.open_session(wire.stream_url(url), message, token)
        except wire.ServerRejected as exc:
            if held is None:
                raise
            log.warning("%s refused the resume (%s): starting afresh", url, exc)
            on_refused(exc)
        except wire.ClientError as exc:
            await wait_to_retry(backoff, retry_after(exc), exc)
    raise wire.ClientError("no server URL to connect to")


async def move_live(
    url: str,
    start: str,
    live: LiveStream,
    uplink: Uplink,
    backoff: Backoff,
    lost: ClientConnection,
    token: str | None = None,
    on_refused: Callable[[wire.ClientError], None] | None = None,
) -> tuple[ClientConnection, wire.Ready]:
    """A live stream's connection ``lost`` is gone: hold new input aside, wait, reconnect (resume, or start afresh)
    and queue what the new connection sends first (the mic client and the bridge)."""
    uplink.moving()
    await wait_to_retry(backoff, 0.0, wire.ClientError(f"connection lost ({wire.close_description(lost)})"))

    def refused(exc: wire.ClientError) -> None:
        live.refused()
        if on_refused is not None:
            on_refused(exc)

    ws, ready = await reopen([url], start, live.resume_token, refused, backoff, token)
    uplink.resumed(live.resumed(ready))
    return ws, ready
