"""What the file and mic clients say: a TTS session is refused clearly (no KeyError), each server warning once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from metis_rt.clients import file as file_client
from metis_rt.clients import mic, wire
from metis_rt.server import protocol as proto

REPO = Path(__file__).resolve().parents[1]


def test_a_tts_session_ready_is_a_clear_client_error_not_a_key_error():
    event = json.loads(proto.encode(proto.TtsReady("7", 24000, "f32le", "en", None, 4)))
    with pytest.raises(wire.ClientError, match="--task tts speaks text"):
        wire.ready_from(event)


def test_file_client_refuses_task_tts_before_connecting(capsys):
    argv = [str(REPO / "examples/speech_noisy.wav"), "--task", "tts", "--server", "ws://127.0.0.1:9"]
    assert file_client.main(argv) == 2
    err = capsys.readouterr().err
    assert "--task tts speaks text" in err and "metis-rt process --task tts" in err


def test_mic_client_refuses_task_tts_before_opening_devices():
    args = mic.build_parser().parse_args(["--task", "tts"])
    with pytest.raises(Exception, match="--task tts speaks text"):
        mic.check_args(args)


def test_each_server_warning_is_printed_once(caplog):
    warnings = [
        {"type": "warning", "code": "overload", "message": "the server fell behind: dropped 240 ms of input"},
        {"type": "warning", "code": "overload", "message": "the server fell behind: dropped 240 ms of input"},
        {"type": "warning", "code": "overload", "message": "the server fell behind: dropped 480 ms of input"},
    ]
    lines = file_client.warning_lines(warnings)
    assert lines == [
        "warning overload: the server fell behind: dropped 240 ms of input (x2)",
        "warning overload: the server fell behind: dropped 480 ms of input",
    ]


class _Messages:
    """Stands in for the connection in the receiving loop: yields the given frames, then ends."""

    def __init__(self, frames):
        self.frames = list(frames)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.frames:
            raise StopAsyncIteration
        return self.frames.pop(0)


def test_a_warning_received_is_not_also_logged_at_the_default_level(caplog):
    import asyncio

    import numpy as np

    overload = {"type": "warning", "code": "overload", "message": "the server fell behind: dropped 240 ms of input"}
    ready = proto.SessionReady("1", 16000, 16000, "f32le", 400.0, 240)
    stream = file_client._Stream(np.zeros(160, np.float32), 16000, 16000, file_client.FileStreamOptions())
    stream.attach(_Messages([json.dumps(overload)]), ready)
    with caplog.at_level(logging.WARNING):
        asyncio.run(stream._receive())
    assert stream.events["warning"] == [overload]
    assert "fell behind" not in caplog.text  # printed once, by the report at the end
