"""Resume tokens: a stream's state, signed so that any worker sharing the key can continue the stream.

Pure (no I/O, no clock of its own): ``sign`` and ``verify`` take the time as an argument. A token is
``base64url(envelope) "." base64url(HMAC-SHA256(key, envelope))`` where the envelope is::

    magic "MRT" | version u8 | header length u32 (big endian) | header (JSON) | zlib(state)

and the header holds the protocol version, the issue time and the *fingerprint* of the model and configuration
that produced the state. A worker refuses a token that is malformed, oversized, signed with another key (or
tampered with), of another token version or protocol, older than ``max_age_s``, or issued for another fingerprint
(a different model or configuration cannot continue the stream exactly). The state itself is opaque bytes here:
the streaming session decides what it holds.

Keys: at least ``MIN_KEY_BYTES`` random bytes, shared by the workers (``--resume-key-file``). Several keys may be
given for rotation: the first signs, any of them verifies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from metis_rt.errors import ConfigError, MetisError

TOKEN_VERSION = 1
MAGIC = b"MRT"
MIN_KEY_BYTES = 32
MAX_TOKEN_CHARS = 1 << 20  # a token is a few KB to tens of KB; anything near this is hostile
MAX_STATE_BYTES = 8 << 20  # decompressed state bound (a zlib bomb stops here)
MAX_HEADER_BYTES = 4096
DEFAULT_MAX_AGE_S = 300.0  # --resume-max-age-s
DEFAULT_CHECKPOINT_INTERVAL_S = 1.0  # a session.checkpoint about once a second
_PREFIX = struct.Struct(">3sBI")  # magic, version, header length


class ResumeTokenError(MetisError):
    """A token that cannot resume a stream; ``code`` says why (for the protocol's error event)."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class ResumeKeys:
    """The keys a worker signs with (the first) and accepts (all)."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("resume keys: at least one key is needed")
        for key in self.keys:
            if len(key) < MIN_KEY_BYTES:
                raise ConfigError(
                    f"resume key of {len(key)} bytes is too short: use at least {MIN_KEY_BYTES} random bytes "
                    "(e.g. `openssl rand -hex 32 > resume.key`)"
                )

    @classmethod
    def from_file(cls, path: str | Path) -> ResumeKeys:
        """One key per non-empty line (hex or any text of at least MIN_KEY_BYTES bytes); the first line signs."""
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"--resume-key-file {path}: cannot read it ({exc.strerror or exc})") from exc
        keys = tuple(line.strip().encode() for line in lines if line.strip() and not line.startswith("#"))
        if not keys:
            raise ConfigError(f"--resume-key-file {path}: no key in it (one key per line)")
        return cls(keys)


@dataclass(frozen=True)
class ResumeSettings:
    """A worker's resume configuration: its keys, the oldest token it accepts, how often it sends checkpoints."""

    keys: ResumeKeys
    max_age_s: float = DEFAULT_MAX_AGE_S
    checkpoint_interval_s: float = DEFAULT_CHECKPOINT_INTERVAL_S

    def __post_init__(self) -> None:
        if not (self.max_age_s > 0 and self.checkpoint_interval_s > 0):
            raise ConfigError(
                f"resume: max age ({self.max_age_s:g} s) and checkpoint interval ({self.checkpoint_interval_s:g} s) "
                "must be positive"
            )


@dataclass(frozen=True)
class TokenContents:
    """What a valid token carries."""

    state: bytes
    fingerprint: str
    protocol: int
    issued_at: float


def fingerprint(*parts: object) -> str:
    """A short, stable digest of what must match for a state to be resumable (model files, configuration)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts], separators=(",", ":")).encode())
    return digest.hexdigest()[:32]


def sign(state: bytes, keys: ResumeKeys, *, fingerprint: str, now: float, protocol: int = 1) -> str:
    """The token of ``state`` (opaque bytes), issued at ``now`` (seconds, any epoch shared by the workers)."""
    header = json.dumps({"protocol": protocol, "fingerprint": fingerprint, "iat": round(now, 3)}).encode()
    envelope = _PREFIX.pack(MAGIC, TOKEN_VERSION, len(header)) + header + zlib.compress(state, 6)
    mac = hmac.new(keys.keys[0], envelope, hashlib.sha256).digest()
    return _b64(envelope) + "." + _b64(mac)


def verify(
    token: object, keys: ResumeKeys, *, fingerprint: str, now: float, max_age_s: float, protocol: int = 1
) -> TokenContents:
    """The contents of a valid token; ResumeTokenError (code: malformed, bad_signature, unsupported_version,
    expired, foreign_model) otherwise. The signature is checked before anything inside the token is read."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS or token.count(".") != 1:
        raise ResumeTokenError("malformed", "resume token: not a token (expected two base64url parts joined by '.')")
    body, mac_text = token.split(".")
    envelope, mac = _unb64(body), _unb64(mac_text)
    if not any(hmac.compare_digest(hmac.new(k, envelope, hashlib.sha256).digest(), mac) for k in keys.keys):
        raise ResumeTokenError("bad_signature", "resume token: signature does not match (tampered, or another key)")
    if len(envelope) < _PREFIX.size:
        raise ResumeTokenError("malformed", "resume token: envelope too short")
    magic, version, header_len = _PREFIX.unpack_from(envelope)
    if magic != MAGIC or version != TOKEN_VERSION:
        raise ResumeTokenError(
            "unsupported_version", f"resume token: version {version} (this worker reads {TOKEN_VERSION})"
        )
    header = _header(envelope[_PREFIX.size : _PREFIX.size + header_len], header_len)
    if header["protocol"] != protocol:
        raise ResumeTokenError(
            "unsupported_version", f"resume token: protocol {header['protocol']} (this worker speaks {protocol})"
        )
    age = now - header["iat"]
    if age > max_age_s:
        raise ResumeTokenError("expired", f"resume token: issued {age:.0f} s ago, older than {max_age_s:g} s")
    if header["fingerprint"] != fingerprint:
        raise ResumeTokenError("foreign_model", "resume token: issued by a worker with another model or configuration")
    state = _inflate(envelope[_PREFIX.size + header_len :])
    return TokenContents(state, header["fingerprint"], header["protocol"], header["iat"])


def _header(raw: bytes, declared: int) -> dict:
    if declared > MAX_HEADER_BYTES or len(raw) != declared:
        raise ResumeTokenError("malformed", "resume token: header length out of range")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeTokenError("malformed", "resume token: header is not JSON") from exc
    ok = (
        isinstance(header, dict)
        and type(header.get("protocol")) is int
        and isinstance(header.get("fingerprint"), str)
        and type(header.get("iat")) in (int, float)
    )
    if not ok:
        raise ResumeTokenError("malformed", "resume token: header lacks protocol, fingerprint or iat")
    return header


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        state = inflater.decompress(data, MAX_STATE_BYTES)
    except zlib.error as exc:
        raise ResumeTokenError("malformed", "resume token: state is not zlib data") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise ResumeTokenError("malformed", f"resume token: state larger than {MAX_STATE_BYTES} bytes or truncated")
    return state


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ResumeTokenError("malformed", "resume token: not base64url") from exc
