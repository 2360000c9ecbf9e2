"""Protocol v1: pure parsing/encoding of messages and PCM frames."""

import base64
import json

import numpy as np
import pytest

from metis_rt.server import protocol as proto


def start(**fields):
    base = {"type": "session.start", "protocol": 1, "task": "se", "sample_rate": 48000, "format": "pcm_s16le"}
    return json.dumps({**base, **fields})


def test_valid_start_with_defaults():
    msg = proto.parse_client_message(start())
    assert msg == proto.SessionStart("se", 48000, "pcm_s16le", 48000)
    ref = proto.parse_client_message(
        start(
            task="tse",
            reference={"data": base64.b64encode(b"RIFF").decode()},
            output_sample_rate=24000,
            options={"mix": 0.5},
        )
    )
    assert ref.reference == b"RIFF" and ref.output_sample_rate == 24000 and ref.options.mix == 0.5


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"protocol": 2}, "unsupported_protocol"),
        ({"task": "l2s"}, "invalid_task"),
        ({"sample_rate": 96000}, "invalid_sample_rate"),
        ({"sample_rate": 16000.5}, "invalid_sample_rate"),
        ({"output_sample_rate": 4000}, "invalid_sample_rate"),
        ({"format": "mp3"}, "invalid_format"),
        ({"channels": 2}, "invalid_channels"),
        ({"task": "vc"}, "reference_required"),
        ({"task": "vc", "voice": "a", "reference": {"data": "AAAA"}}, "invalid_reference"),
        ({"task": "vc", "reference": {"data": "not base64!"}}, "invalid_reference"),
        ({"options": {"mix": 2}}, "invalid_options"),
        ({"options": {"bypass": "yes"}}, "invalid_options"),
        ({"options": {"volume": 1}}, "invalid_options"),
        ({"options": {"s2a_steps": [0]}}, "invalid_options"),
        ({"colour": "red"}, "invalid_message"),
    ],
)
def test_invalid_start_fields(fields, code):
    with pytest.raises(proto.ProtocolError) as info:
        proto.parse_client_message(start(**fields))
    assert info.value.code == code and info.value.message


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{oops", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"type": 3}', "invalid_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "session.update", "options": {"mix": -1}}', "invalid_options"),
        ('{"type": "session.update", "task": "l2s"}', "invalid_task"),
        ('{"type": "session.update", "task": 1}', "invalid_task"),
        ('{"type": "session.update", "voice": 7}', "invalid_voice"),
        ('{"type": "session.update", "mix": 0.5}', "invalid_message"),
    ],
)
def test_invalid_messages(text, code):
    with pytest.raises(proto.ProtocolError) as info:
        proto.parse_client_message(text)
    assert info.value.code == code


def test_control_messages():
    assert proto.parse_client_message('{"type": "flush"}') == proto.Flush()
    assert proto.parse_client_message('{"type": "session.end"}') == proto.SessionEnd()
    update = proto.parse_client_message('{"type": "session.update", "options": {"bypass": true}, "voice": "bob"}')
    assert update == proto.SessionUpdate({"bypass": True}, "bob")
    switch = proto.parse_client_message('{"type": "session.update", "task": "vc", "voice": "bob"}')
    assert switch == proto.SessionUpdate({}, "bob", "vc")
    assert proto.parse_client_message('{"type": "session.update", "task": null}').task is None


@pytest.mark.parametrize("fmt", ["pcm_s16le", "f32le"])
def test_pcm_round_trip(fmt):
    x = np.linspace(-0.9, 0.9, 480).astype(np.float32)
    y = proto.decode_pcm(proto.encode_pcm(x, fmt), fmt, 48000)
    assert y.dtype == np.float32 and np.abs(y - x).max() <= (1 / 32768 if fmt == "pcm_s16le" else 0)


def test_bad_frames():
    with pytest.raises(proto.ProtocolError, match="whole number"):
        proto.decode_pcm(b"\x00\x01\x02", "pcm_s16le", 16000)
    with pytest.raises(proto.ProtocolError, match="at most 1 s"):
        proto.decode_pcm(b"\x00\x00" * 16001, "pcm_s16le", 16000)
    with pytest.raises(proto.ProtocolError, match="NaN"):
        proto.decode_pcm(np.array([np.inf], "<f4").tobytes(), "f32le", 16000)
    with pytest.raises(proto.ProtocolError):
        proto.decode_pcm(b"", "f32le", 16000)
    assert proto.encode_pcm(np.array([2.0, -2.0], np.float32), "pcm_s16le") == b"\xff\x7f\x00\x80"  # clipped


def test_server_messages_encode_with_their_type():
    ready = json.loads(proto.encode(proto.SessionReady("1", 16000, 16000, "f32le", 415.0, 240)))
    assert ready["type"] == "session.ready" and ready["protocol"] == 1
    assert json.loads(proto.encode(proto.Busy(5)))["type"] == "busy"
    updated = json.loads(proto.encode(proto.Updated({"mix": 0.5}, None, "vc", 4, [8, 4, 1])))
    assert updated == {
        "type": "session.updated",
        "options": {"mix": 0.5},
        "voice": None,
        "task": "vc",
        "stage1_steps": 4,
        "s2a_steps": [8, 4, 1],
    }
