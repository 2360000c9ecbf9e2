"""Resume tokens: a valid token round-trips; tampered, foreign-key, expired, foreign-model and hostile ones are
refused with the reason's code, before anything inside an unsigned token is parsed."""

import base64
import hashlib
import hmac
import json
import struct
import zlib

import pytest

from metis_rt.errors import ConfigError
from metis_rt.server.resume_token import (
    MAX_STATE_BYTES,
    MIN_KEY_BYTES,
    ResumeKeys,
    ResumeTokenError,
    fingerprint,
    sign,
    verify,
)

KEYS = ResumeKeys((b"k" * MIN_KEY_BYTES,))
OTHER = ResumeKeys((b"o" * MIN_KEY_BYTES,))
FP = fingerprint("tiny-se", {"chunk_ms": 240})
STATE = bytes(range(256)) * 40
T0 = 1_000_000.0


def _verify(token, keys=KEYS, fp=FP, now=T0 + 1, max_age_s=60.0):
    return verify(token, keys, fingerprint=fp, now=now, max_age_s=max_age_s)


def _code(token, **kw) -> str:
    with pytest.raises(ResumeTokenError) as info:
        _verify(token, **kw)
    return info.value.code


def test_a_token_round_trips_its_state_and_header():
    token = sign(STATE, KEYS, fingerprint=FP, now=T0)
    got = _verify(token)
    assert (got.state, got.fingerprint, got.protocol, got.issued_at) == (STATE, FP, 1, T0)
    assert len(token) < len(STATE)  # compressed


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_every_flipped_byte_is_refused():
    body, mac = (_unb64(part) for part in sign(b"state", KEYS, fingerprint=FP, now=T0).split("."))
    for part in ("body", "mac"):
        data = body if part == "body" else mac
        for i in range(len(data)):
            flipped = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
            token = _b64(flipped) + "." + _b64(mac) if part == "body" else _b64(body) + "." + _b64(flipped)
            assert _code(token) == "bad_signature", (part, i)


def test_another_key_is_refused_and_rotation_accepts_the_old_key():
    token = sign(STATE, OTHER, fingerprint=FP, now=T0)
    assert _code(token) == "bad_signature"
    rotated = ResumeKeys(KEYS.keys + OTHER.keys)  # new key first, old still accepted
    assert _verify(token, keys=rotated).state == STATE
    assert _verify(sign(STATE, rotated, fingerprint=FP, now=T0)).state == STATE  # signs with the first


def test_expired_and_foreign_model_tokens_are_refused():
    token = sign(STATE, KEYS, fingerprint=FP, now=T0)
    assert _verify(token, now=T0 + 60).state == STATE
    assert _code(token, now=T0 + 61) == "expired"
    assert _code(token, fp=fingerprint("tiny-se", {"chunk_ms": 160})) == "foreign_model"


def _forge(header: bytes, payload: bytes, version: int = 1, keys=KEYS) -> str:
    """A token signed with the right key around any envelope (a worker bug or a leaked key: still parsed safely)."""
    envelope = struct.pack(">3sBI", b"MRT", version, len(header)) + header + payload
    mac = hmac.new(keys.keys[0], envelope, hashlib.sha256).digest()
    return _b64(envelope) + "." + _b64(mac)


def test_signed_but_broken_envelopes_are_refused_with_their_reason():
    good_header = json.dumps({"protocol": 1, "fingerprint": FP, "iat": T0}).encode()
    assert _code(_forge(good_header, zlib.compress(b"x"), version=2)) == "unsupported_version"
    other_protocol = json.dumps({"protocol": 2, "fingerprint": FP, "iat": T0}).encode()
    assert _code(_forge(other_protocol, zlib.compress(b"x"))) == "unsupported_version"
    assert _code(_forge(b"{not json", zlib.compress(b"x"))) == "malformed"
    assert _code(_forge(json.dumps({"protocol": True, "fingerprint": FP, "iat": T0}).encode(), b"")) == "malformed"
    assert _code(_forge(good_header, b"not zlib")) == "malformed"
    bomb = zlib.compress(b"\0" * (MAX_STATE_BYTES + 1), 9)  # ~8 KB that would inflate past the bound
    assert _code(_forge(good_header, bomb)) == "malformed"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "é.é", 42, None, "A" * (1 << 20) + ".A"])
def test_garbage_is_malformed(token):
    assert _code(token) == "malformed"


def test_short_or_missing_keys_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="too short"):
        ResumeKeys((b"short",))
    path = tmp_path / "resume.key"
    path.write_text("# rotation: first line signs\n" + "a" * 64 + "\n" + "b" * 64 + "\n")
    assert ResumeKeys.from_file(path).keys == (b"a" * 64, b"b" * 64)
    with pytest.raises(ConfigError, match="cannot read"):
        ResumeKeys.from_file(tmp_path / "absent.key")


def test_the_command_line_sets_the_resume_limits_and_refuses_impossible_ones(tmp_path):
    from metis_rt.server.main import build_parser, resume_settings

    path = tmp_path / "resume.key"
    path.write_text("k" * 64 + "\n")
    args = build_parser().parse_args(["--resume-key-file", str(path), "--checkpoint-interval-s", "0.5"])
    settings = resume_settings(args)
    assert settings.checkpoint_interval_s == 0.5 and settings.max_age_s == 300
    assert resume_settings(build_parser().parse_args([])) is None  # no key file: no resume
    bad = build_parser().parse_args(["--resume-key-file", str(path), "--checkpoint-interval-s", "0"])
    with pytest.raises(ConfigError, match="checkpoint interval"):
        resume_settings(bad)
