"""Plain HTTP on the WebSocket port: ``/healthz``, ``/metrics``, the web client, and the auth gate of ``/v1/stream``.

Pure helpers that build ``websockets`` HTTP responses; no asyncio.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable
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


def response(status: HTTPStatus, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"), *extra]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, data: dict) -> Response:
    return response(status, json.dumps(data).encode(), "application/json")


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
    return given is not None and any(hmac.compare_digest(given, t) for t in tokens)


def static_file(path: str) -> Response | None:
    name = "index.html" if path in ("", "/") else path.lstrip("/")
    if "/" in name or name.startswith("."):
        return None
    file = WEB_DIR / name
    if not file.is_file() or file.suffix not in CONTENT_TYPES:
        return None
    return response(HTTPStatus.OK, file.read_bytes(), CONTENT_TYPES[file.suffix])


def route(request: Request, tokens: frozenset[str], health: Callable[[], dict], metrics: Callable[[], str]):
    """The response for a plain HTTP request, or None to let the WebSocket upgrade of /v1/stream proceed."""
    path = urlsplit(request.path).path
    if path == STREAM_PATH:
        if not authorised(request, tokens):
            return response(
                HTTPStatus.UNAUTHORIZED,
                b"missing or wrong token\n",
                "text/plain; charset=utf-8",
                [("WWW-Authenticate", "Bearer")],
            )
        return None
    if path == "/healthz":
        return json_response(HTTPStatus.OK, health())
    if path == "/metrics":
        return response(HTTPStatus.OK, metrics().encode(), "text/plain; version=0.0.4; charset=utf-8")
    found = static_file(path)
    if found is not None:
        return found
    return response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
