"""A seeded generator and runner of hostile inputs against a running server (issue 18), with paced legit sessions
streaming alongside. Used bounded by ``tests/test_server_hardening.py`` and at length by ``bench/hostile.py``.

Every case opens its own connection (or HTTP request), sends something malformed, and is classified:

* ``unhandled``: the server closed with 1011 or answered HTTP 5xx (an exception escaped);
* ``hang``: no answer within ``REPLY_S``;
* ``crash``: the server stopped accepting connections;
* ``long_echo``: a reply longer than ``MAX_REPLY_CHARS`` (client text echoed);
* otherwise ``ok`` (a typed error event, a 4xx, a policy close, or a session that happened to be valid).

A paced session sends 20 ms packets at real-time pace and is ``exact`` when its output has as many samples as its
input and nothing was dropped or refused.
"""

from __future__ import annotations

import base64
import io
import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

RATE = 16000
PACKET = 320  # 20 ms
REPLY_S = 10.0
MAX_REPLY_CHARS = 400
START = {"type": "session.start", "protocol": 1, "task": "se", "sample_rate": RATE, "format": "f32le", "channels": 1}
FIELDS = ["type", "protocol", "task", "sample_rate", "output_sample_rate", "format", "channels", "voice"]
FIELDS += ["reference", "options", "stage1", "reference_text", "language", "zz" * 40]
UPDATE_FIELDS = ["options", "voice", "task", "reference_text", "language", "q"]
OPTION_FIELDS = ["bypass", "mix", "stage1_steps", "s2a_steps", "w"]


def odd_value(rng: random.Random, depth: int = 0):
    """A JSON value of a random kind, often one a parser trips on."""
    kinds = [
        None,
        True,
        False,
        0,
        -1,
        1,
        1.0,
        0.5,
        1e308,
        -(10 ** rng.randint(20, 4000)),
        "",
        "é" * rng.randint(1, 300),
        "\u0000\u202e",
        "x" * rng.choice([1, 64, 256, 5000]),
        "../" * 20,
        [],
        {},
    ]
    value = rng.choice(kinds)
    if depth < 3 and rng.random() < 0.2:
        return [odd_value(rng, depth + 1) for _ in range(rng.randint(1, 4))]
    if depth < 3 and rng.random() < 0.1:
        return {rng.choice(FIELDS + OPTION_FIELDS): odd_value(rng, depth + 1)}
    return value


def reference_file(rng: random.Random) -> str:
    """Base64 of a hostile reference upload."""
    kind = rng.randrange(5)
    buf = io.BytesIO()
    if kind == 0:  # 30 samples declared at 1 Hz
        sf.write(buf, np.zeros(30, np.float32), 1, format="WAV")
    elif kind == 1:  # minutes of silence: a tiny FLAC
        sf.write(buf, np.zeros(48000 * rng.randint(40, 120), np.float32), 48000, format="FLAC")
    elif kind == 2:  # a FLAC header claiming 2^36 samples
        sf.write(buf, np.zeros(32000, np.float32), RATE, format="FLAC")
        data = bytearray(buf.getvalue())
        data[18:26] = (int.from_bytes(data[18:26], "big") | (2**36 - 1)).to_bytes(8, "big")
        return base64.b64encode(bytes(data)).decode()
    elif kind == 3:  # truncated file
        sf.write(buf, np.zeros(32000, np.float32), RATE, format="WAV")
        return base64.b64encode(buf.getvalue()[: rng.randint(4, 200)]).decode()
    else:  # random bytes
        return base64.b64encode(rng.randbytes(rng.randint(1, 2000))).decode()
    return base64.b64encode(buf.getvalue()).decode()


def deep_json(rng: random.Random) -> str:
    n = rng.choice([40, 1000, 100_000])
    return '{"type": "flush", "a": ' + "[" * n + "]" * n + "}"


@dataclass
class Result:
    cases: int = 0
    ok: int = 0
    unhandled: int = 0
    hangs: int = 0
    crashes: int = 0
    long_echo: int = 0
    paced_sessions: int = 0
    paced_exact: int = 0
    failures: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "failures"} | {"failures": self.failures[:20]}


class HostileRun:
    def __init__(self, url: str, *, seed: int, cases: int, paced_sessions: int = 1, paced_s: float = 6.0):
        self.url = url
        self.base = url.replace("ws://", "http://").rsplit("/v1/", 1)[0]
        self.rng = random.Random(seed)
        self.cases = cases
        self.paced_sessions, self.paced_s = paced_sessions, paced_s
        self.result = Result(paced_sessions=paced_sessions)
        self._lock = threading.Lock()

    # --- legit sessions alongside ---------------------------------------------------------------
    def _paced(self, i: int) -> None:
        x = (0.1 * np.random.default_rng(i).standard_normal(int(self.paced_s * RATE))).astype(np.float32)
        try:
            with connect(self.url, max_size=2**24) as ws:
                ws.send(json.dumps(START))
                ready = ws.recv(timeout=60)
                if json.loads(ready)["type"] != "session.ready":
                    return self._fail(f"paced session {i} refused: {ready[:200]}")
                t0 = time.perf_counter()
                for k, i0 in enumerate(range(0, len(x), PACKET)):
                    delay = t0 + k * PACKET / RATE - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    ws.send(x[i0 : i0 + PACKET].tobytes())
                ws.send(json.dumps({"type": "session.end"}))
                samples, bad = 0, []
                try:
                    while True:
                        msg = ws.recv(timeout=60)
                        if isinstance(msg, bytes):
                            samples += len(msg) // 4
                        elif json.loads(msg)["type"] in ("error", "warning"):
                            bad.append(msg[:200])
                except ConnectionClosed:
                    pass
            if samples == len(x) and not bad:
                with self._lock:
                    self.result.paced_exact += 1
            else:
                self._fail(f"paced session {i}: {samples} of {len(x)} samples; {bad[:3]}")
        except Exception as exc:  # noqa: BLE001 - a paced session failing is counted as not exact
            self._fail(f"paced session {i}: {exc!r}"[:200])

    # --- cases ----------------------------------------------------------------------------------
    def _fail(self, what: str) -> None:
        with self._lock:
            self.result.failures.append(what)

    def _count(self, kind: str, outcome: str, detail: str = "") -> None:
        with self._lock:
            r = self.result
            r.cases += 1
            r.kinds[kind] = r.kinds.get(kind, 0) + 1
            setattr(r, outcome, getattr(r, outcome) + 1)
        if outcome != "ok":
            self._fail(f"{kind}: {outcome} {detail}"[:300])

    def _ws_case(self, kind: str, before: list, messages: list) -> None:
        """Send ``before`` (which must be accepted: a start), then each of ``messages``; one reply each."""
        try:
            with connect(self.url, max_size=2**24, open_timeout=REPLY_S) as ws:
                for m in before:
                    ws.send(m)
                    ws.recv(timeout=REPLY_S)
                for m in messages:
                    ws.send(m)
                    if isinstance(m, bytes) and self._frame_ok(m):
                        continue  # valid audio gets no reply of its own
                    reply = ws.recv(timeout=REPLY_S)
                    if isinstance(reply, str) and len(reply) > MAX_REPLY_CHARS:
                        return self._count(kind, "long_echo", reply[:100])
            self._count(kind, "ok")
        except TimeoutError:
            self._count(kind, "hangs", repr(messages)[:100])
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            self._count(kind, "unhandled" if code == 1011 else "ok", f"close {code}: {repr(messages)[:100]}")
        except (ConnectionRefusedError, InvalidHandshake, OSError) as exc:
            if isinstance(exc, InvalidStatus) and exc.response.status_code < 500:
                return self._count(kind, "ok")
            self._count(kind, "crashes" if isinstance(exc, ConnectionRefusedError) else "unhandled", repr(exc))

    @staticmethod
    def _frame_ok(frame: bytes) -> bool:
        return 0 < len(frame) <= 4 * RATE and len(frame) % 4 == 0 and np.isfinite(np.frombuffer(frame, "<f4")).all()

    def _http_case(self, kind: str, path: str, headers: dict) -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(self.base + path, headers=headers), timeout=REPLY_S)
            self._count(kind, "ok")
        except urllib.error.HTTPError as exc:
            self._count(kind, "unhandled" if exc.code >= 500 else "ok", f"{exc.code} {path[:80]}")
        except TimeoutError:
            self._count(kind, "hangs", path[:80])
        except (urllib.error.URLError, ConnectionError) as exc:
            refused = isinstance(getattr(exc, "reason", exc), ConnectionRefusedError)
            self._count(kind, "crashes" if refused else "ok", repr(exc)[:100])

    def _flood(self) -> None:
        """A client that sends junk and never reads (item 1), then vanishes."""
        try:
            with connect(self.url, max_size=2**24) as ws:
                ws.send(json.dumps(START))
                for _ in range(self.rng.randint(5, 40)):
                    ws.send(json.dumps({"type": "q" * 65536}))
            self._count("flood", "ok")
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            self._count("flood", "unhandled" if code == 1011 else "ok", f"close {code}")

    def one_case(self) -> None:
        rng, start = self.rng, json.dumps(START)
        kind = rng.choice(["start", "start", "update", "text", "frame", "reference", "http", "flood"])
        if kind == "start":
            message = dict(START)
            for _ in range(rng.randint(1, 3)):
                message[rng.choice(FIELDS)] = odd_value(rng)
            self._ws_case(kind, [], [json.dumps(message)])
        elif kind == "update":
            update = {"type": "session.update"}
            for _ in range(rng.randint(1, 3)):
                name = rng.choice(UPDATE_FIELDS)
                update[name] = {rng.choice(OPTION_FIELDS): odd_value(rng)} if name == "options" else odd_value(rng)
            self._ws_case(kind, [start], [json.dumps(update)])
        elif kind == "text":
            text = rng.choice(
                [deep_json(rng), "{" * rng.randint(1, 50), '{"type": ' + "9" * rng.choice([10, 5000]) + "}", "é"]
            )
            self._ws_case(kind, [], [text])
        elif kind == "frame":
            frame = rng.choice(
                [rng.randbytes(rng.randint(1, 7)), b"\x00" * (4 * RATE + 4), np.full(8, np.nan, "<f4").tobytes()]
            )
            self._ws_case(kind, [start], [frame])
        elif kind == "reference":
            message = {**START, "task": rng.choice(["vc", "tse"]), "reference": {"data": reference_file(rng)}}
            self._ws_case(kind, [], [json.dumps(message)])
        elif kind == "http":
            path = rng.choice(["/" + "a" * rng.randint(100, 4000), "/%00", "/..%2f..%2fetc/passwd", "/v1/stream"])
            path = rng.choice([path, "/v1/stream?token=%C3%A9", "/healthz", "/metrics"])
            headers = rng.choice([{}, {"Host": "rebound.example"}, {"Origin": "https://evil.example"}])
            self._http_case(kind, path, headers)
        else:
            self._flood()

    def run(self) -> Result:
        paced = [threading.Thread(target=self._paced, args=(i,)) for i in range(self.paced_sessions)]
        for t in paced:
            t.start()
        for _ in range(self.cases):
            self.one_case()
        for t in paced:
            t.join(self.paced_s + 120)
        return self.result
