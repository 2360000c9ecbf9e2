"""The bridge's server stream survives the loss of its connection, over real sockets: an in-process server with the
tiny model and a resume key aborts the bridge backend's socket mid-stream; the backend resumes, the call never goes
silent (the raw microphone fills the gap, position for position), and around the gap the output is the
uninterrupted stream's, sample for sample (deterministic mode)."""

# ruff: noqa: F401, F811  (the processor and speech fixtures come from test_server)
import asyncio
import time

import numpy as np
import pytest

from metis_rt.bridge.backends import BackendError, BridgeSettings
from metis_rt.bridge.gap_fill import PROCESSED
from metis_rt.bridge.remote import MoveOptions, RemoteBackend
from metis_rt.clients.file import FileStreamOptions, stream_file

from .test_server import processor, speech
from .test_server_resume import _server, _when

SPEED = 2.0  # blocks go out at twice real time (and never more than the latency ahead of the output)
MOVE = MoveOptions(reconnect_max_s=10, backoff_seed=3)


@pytest.fixture(scope="module")
def worker(processor):
    server = _server(processor)
    yield server
    server.stop()


def _abort_when(worker, checkpoints: int):
    """Abort the socket of the next new connection once it has sent ``checkpoints`` checkpoints (a lost worker)."""
    earlier = set(worker.server.connections)
    return _when(
        worker, lambda c: c not in earlier and c.checkpoints_sent >= checkpoints, lambda c: c.ws.transport.abort()
    )


async def _drive(backend: RemoteBackend, out: list, x: np.ndarray, sr: int) -> None:
    """Push 20 ms blocks like a microphone (paced, and while connected held back when the output lags, so the server
    never falls behind and drops input), then wait for the output of everything but the last window."""
    await backend.start()
    runner = asyncio.create_task(backend.run())
    block, began = sr // 50, time.monotonic()
    ahead = (backend.latency_ms + backend.chunk_ms / 2) / 1000 * sr
    delivered = lambda: sum(map(len, out))  # noqa: E731
    for i in range(0, len(x) - block + 1, block):
        # a microphone never waits for the output: while the stream moves the raw fill plays each block
        while (i - delivered() >= ahead and backend.processing != "raw") or i / sr > (time.monotonic() - began) * SPEED:
            await _unless_ended(runner, 0.005)
        backend.push(x[i : i + block])
        if backend.processing == "raw":  # meanwhile at half real time, so the resumed worker surely catches up
            await _unless_ended(runner, 2 * block / sr)
    deadline = time.monotonic() + 60
    while delivered() < len(x) - ahead - backend.chunk_ms / 1000 * sr and time.monotonic() < deadline:
        await _unless_ended(runner, 0.01)
    await backend.close()
    await runner


async def _unless_ended(runner: asyncio.Task, wait_s: float) -> None:
    """Sleep, unless the backend's run() has ended (then its result, or its BackendError, comes out)."""
    if runner.done():
        await runner
        raise AssertionError("the backend stopped before the test closed it")
    await asyncio.sleep(wait_s)


def test_a_lost_connection_moves_the_stream_and_the_raw_microphone_fills_the_gap(worker, speech):
    x, sr = speech
    reference, _ = asyncio.run(stream_file(worker.url, x, sample_rate=sr, options=FileStreamOptions()))
    out: list[np.ndarray] = []
    backend = RemoteBackend(worker.url, BridgeSettings("se"), sr, sr, out.append, move=MOVE)
    notices: list[str] = []
    backend.notice = notices.append
    watcher = _abort_when(worker, checkpoints=2)
    asyncio.run(_drive(backend, out, x, sr))
    watcher.join()

    y = np.concatenate(out)
    assert backend.moves == 1 and backend.live.restarts == 0 and backend.gap.state == PROCESSED
    assert len(y) == backend.live.delivered and len(y) > len(x) // 2
    first = int(np.argmax(y != reference[: len(y)]))  # where the gap began: the output left the stream there
    raw = backend.gap.raw_samples
    assert first > 0 and raw > 0 and 0 < backend.live.resumed_at < len(x) - sr // 4  # a move mid-stream
    np.testing.assert_array_equal(y[:first], reference[:first])
    np.testing.assert_array_equal(y[first : first + raw], x[first : first + raw])  # the microphone, in place
    fade = backend.gap.fade
    back = first + raw + fade
    assert back < len(y) - sr // 10  # the resumed stream played a while
    np.testing.assert_array_equal(y[back:], reference[back : len(y)])  # and it is the uninterrupted stream
    assert any("playing the raw microphone" in n for n in notices)
    assert any("stream resumed" in n for n in notices) and notices[-1] == "processed audio is back"
    assert backend.stats()["resumes"] == 1


def test_without_reconnect_a_lost_connection_fails_the_bridge(worker, speech):
    x, sr = speech
    out: list[np.ndarray] = []
    backend = RemoteBackend(worker.url, BridgeSettings("se"), sr, sr, out.append, move=MoveOptions(reconnect=False))
    watcher = _abort_when(worker, checkpoints=1)
    with pytest.raises(BackendError, match="the server closed the session: code 1006"):
        asyncio.run(_drive(backend, out, x, sr))
    watcher.join()
    assert backend.moves == 0
