"""Plain HTTP on the WebSocket port: health, readiness, metrics, the web client, and the gate of ``/v1/stream``.

This is the server's edge, and every check of who may talk to it lives here (run in websockets'
``process_request`` hook, before any upgrade; docs/security.md):

* ``Host`` must name this server (a loopback name, an IP literal, the bound host or an ``--allow-host`` name),
  so a DNS-rebinding page gets 421 for every path, ``/healthz`` and ``/metrics`` included;
* ``Origin`` (sent by every browser on a WebSocket upgrade) must be the server's own page, a loopback origin or an
  ``--allow-origin`` entry: any other web page gets 403;
* the token (``Authorization: Bearer``, or ``?token=`` for browsers, which cannot set headers on a WebSocket) is
  compared in constant time; query tokens are redacted from the log (``redact``);
* a worker that takes no new stream (full, draining, starting) answers the upgrade with 503 and ``Retry-After``, before
  the upgrade, so a balancer can retry the request on another worker (docs/deploy.md). ``/readyz`` says the same to
  health checks (200 or 503); ``/healthz`` stays liveness (200 while the process serves HTTP).

Pure helpers that build ``websockets`` HTTP responses; no asyncio.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

STREAM_PATH = "/v1/stream"
WEB_DIR = Path(__file__).resolve().parent / "web"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_TOKEN_CHARS = 512
_TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']*", re.IGNORECASE)
_BEARER_IN_TEXT = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


@dataclass(frozen=True)
class Probes:
    """What the edge asks the server: health (JSON), metrics (Prometheus text), why it takes no new stream now
    (None: it does; else a short reason such as ``full``) with the readiness details, and a counter of refusals."""

    health: Callable[[], dict]
    metrics: Callable[[], str]
    readiness: Callable[[], tuple[str | None, dict]]
    refused: Callable[[str], None] = lambda _reason: None
    retry_after_s: float = 5.0


@dataclass(frozen=True)
class EdgePolicy:
    """Who may use the server: accepted tokens (none: open), extra allowed origins (``*``: any) and host names."""

    tokens: frozenset[str] = frozenset()
    allow_origins: frozenset[str] = frozenset()
    host_names: frozenset[str] = frozenset()  # besides loopback names and IP literals


def response(status: HTTPStatus, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"), *extra]
    )
    return Response(status.value, status.phrase, headers, body)


def text_response(status: HTTPStatus, text: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
    return response(status, text.encode(), "text/plain; charset=utf-8", extra)


def json_response(status: HTTPStatus, data: dict) -> Response:
    return response(status, json.dumps(data).encode(), "application/json")


# ----------------------------------------------------------------------------- checks
def token_of(request: Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :].strip()
    query = parse_qs(urlsplit(request.path).query)
    return query.get("token", [None])[0]


def authorised(request: Request, tokens: frozenset[str]) -> bool:
    if not tokens:
        return True
    given = token_of(request)
    if given is None or len(given) > MAX_TOKEN_CHARS:
        return False
    given_bytes = given.encode("utf-8", "surrogateescape")  # bytes: compare_digest refuses non-ASCII str
    return any(hmac.compare_digest(given_bytes, t.encode()) for t in tokens)


def host_name(value: str) -> str | None:
    """The host of a ``Host`` header or an origin's netloc (no port, lower case, IPv6 without brackets)."""
    try:
        name = urlsplit(f"//{value}").hostname
    except ValueError:
        return None
    return name.lower() if name else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(request: Request, policy: EdgePolicy) -> bool:
    """A rebinding page reaches us under its own domain name; an IP literal or one of our names cannot be that."""
    name = host_name(request.headers.get("Host", ""))
    return name is not None and (name in LOOPBACK_NAMES or _is_ip(name) or name in policy.host_names)


def origin_allowed(request: Request, policy: EdgePolicy) -> bool:
    """No Origin: not a browser (the clients, the bridge, curl). Otherwise the page's origin must be ours (same
    scheme-less host:port as the Host header), a loopback origin, or listed."""
    origins = request.headers.get_all("Origin")
    if not origins:
        return True
    if len(origins) > 1:
        return False
    origin = origins[0].strip().lower()
    if "*" in policy.allow_origins or origin in policy.allow_origins:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, files) and the like
    if parts.netloc == request.headers.get("Host", "").strip().lower():
        return True  # the server's own page
    return host_name(parts.netloc) in LOOPBACK_NAMES


@cache
def web_files() -> frozenset[str]:
    """The web client's files (listed once; requests are matched against this list, never looked up)."""
    return frozenset(p.name for p in WEB_DIR.iterdir() if p.suffix in CONTENT_TYPES)


def static_file(path: str) -> Response | None:
    name = "index.html" if path in ("", "/") else path.lstrip("/")
    if name not in web_files():  # a fixed list: no file-system lookup with client text
        return None
    file = WEB_DIR / name
    return response(HTTPStatus.OK, file.read_bytes(), CONTENT_TYPES[file.suffix])


# ----------------------------------------------------------------------------- routing
def retry_after(seconds: float) -> list[tuple[str, str]]:
    """The ``Retry-After`` header (whole seconds, at least 1)."""
    return [("Retry-After", str(max(1, math.ceil(seconds))))]


def readyz(probes: Probes) -> Response:
    """200 when the server takes new streams, else 503 with the reason and ``Retry-After``."""
    reason, details = probes.readiness()
    body = json.dumps({"ready": reason is None, "reason": reason, **details}).encode()
    if reason is None:
        return response(HTTPStatus.OK, body, "application/json")
    return response(HTTPStatus.SERVICE_UNAVAILABLE, body, "application/json", retry_after(probes.retry_after_s))


def stream_gate(request: Request, policy: EdgePolicy, probes: Probes) -> Response | None:
    """Origin, token, then admission: None lets the upgrade proceed."""
    if not origin_allowed(request, policy):
        return text_response(
            HTTPStatus.FORBIDDEN, "this web page's origin may not use the server (see --allow-origin)\n"
        )
    if not authorised(request, policy.tokens):
        return text_response(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n", [("WWW-Authenticate", "Bearer")])
    reason, _details = probes.readiness()
    if reason is None:
        return None
    probes.refused(reason)
    return text_response(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"this worker takes no new stream now ({reason}): retry later or on another worker\n",
        retry_after(probes.retry_after_s),
    )


def route(request: Request, policy: EdgePolicy, probes: Probes):
    """The response for a plain HTTP request, or None to let the WebSocket upgrade of /v1/stream proceed."""
    if not host_allowed(request, policy):
        return text_response(HTTPStatus.MISDIRECTED_REQUEST, "this server does not serve that host name\n")
    try:
        path = urlsplit(request.path).path
    except ValueError:
        return text_response(HTTPStatus.BAD_REQUEST, "malformed request path\n")
    if path == STREAM_PATH:
        return stream_gate(request, policy, probes)
    if path == "/healthz":
        return json_response(HTTPStatus.OK, probes.health())
    if path == "/readyz":
        return readyz(probes)
    if path == "/metrics":
        return response(HTTPStatus.OK, probes.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
    found = static_file(path)
    if found is not None:
        return found
    return text_response(HTTPStatus.NOT_FOUND, "not found\n")


# ----------------------------------------------------------------------------- logs
def redact(text: str) -> str:
    """``text`` with query tokens and bearer tokens replaced by ``***``."""
    return _BEARER_IN_TEXT.sub(r"\1***", _TOKEN_IN_TEXT.sub(r"\1***", text))


class RedactTokens(logging.Filter):
    """A log filter that keeps tokens out of the log (websockets logs request lines at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
