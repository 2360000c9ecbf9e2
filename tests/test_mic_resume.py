"""The mic client moves its stream by itself, over real sockets: an in-process server with the tiny model and a
resume key aborts the client's socket mid-stream; the client reconnects with session.resume, re-sends what the
server had not acknowledged (the microphone kept capturing), drops what it had already played, and the output it
plays is the uninterrupted stream's, sample for sample (deterministic mode). The sound card is a fake that runs
the PortAudio callbacks from threads, at half real time so that a busy machine never makes the server drop input."""

# ruff: noqa: F401, F811  (the processor and speech fixtures come from test_server)
import asyncio
import io
import threading
import time

import numpy as np

from metis_rt.clients.file import FileStreamOptions, stream_file
from metis_rt.clients.mic import MicClient, MicConfig
from metis_rt.clients.terminal import StatusDisplay

from .test_bridge_resume import _abort_when, worker
from .test_server import processor, speech

PACE = 0.5  # the fake sound card runs at half real time
BLOCK_MS = 20


class FakeSoundDevice:
    """``sd.InputStream`` plays ``source`` (then silence) into the callback; ``sd.OutputStream`` pulls blocks."""

    def __init__(self, source: np.ndarray):
        self.source = source
        self.captured = 0  # samples of the source delivered to the client
        parent = self

        class Stream:
            def __init__(self, *, blocksize, callback, **_):
                self.blocksize, self.callback = blocksize, callback
                self.stopped = threading.Event()

            def start(self):
                threading.Thread(target=self._run, daemon=True).start()

            def close(self, ignore_errors=True):
                self.stopped.set()

            def _run(self):
                while not self.stopped.wait(BLOCK_MS / 1000 / PACE):
                    self.tick(np.zeros((self.blocksize, 1), np.float32))

        class InputStream(Stream):
            def tick(self, block):
                n = min(self.blocksize, len(parent.source) - parent.captured)
                if n > 0:
                    block[:n, 0] = parent.source[parent.captured : parent.captured + n]
                    parent.captured += n
                self.callback(block, self.blocksize, None, None)

        class OutputStream(Stream):
            def tick(self, block):
                self.callback(block, self.blocksize, None, None)

        self.InputStream, self.OutputStream = InputStream, OutputStream


def test_the_mic_client_resumes_its_stream_after_a_lost_connection(worker, speech):
    x, sr = speech
    reference, report = asyncio.run(stream_file(worker.url, x, sample_rate=sr, options=FileStreamOptions()))
    # the reference ends with a flush, the microphone with silence: compare where the windows hold only the speech
    within = len(x) - round((report["algorithmic_latency_ms"] + report["chunk_ms"]) * sr / 1000)
    sd = FakeSoundDevice(x)
    log = io.StringIO()
    cfg = MicConfig(url=worker.url, input_rate=sr, output_rate=sr, reconnect_max_s=10)
    played: list[np.ndarray] = []

    async def body() -> MicClient:
        client = MicClient(cfg, sd, StatusDisplay(log))
        output = client.live.output
        client.live.output = lambda samples: played.append(output(samples)) or played[-1]
        runner = asyncio.create_task(client.run())
        deadline = time.monotonic() + 60
        while sum(map(len, played)) < len(x) and time.monotonic() < deadline and not runner.done():
            await asyncio.sleep(0.02)
        client.request_quit()
        await runner
        return client

    watcher = _abort_when(worker, checkpoints=2)
    client = asyncio.run(body())
    watcher.join()

    text = log.getvalue()
    y = np.concatenate(played)
    assert client.live.moves == 1 and client.live.restarts == 0, text
    assert 0 < client.live.resumed_at < within - sr // 4  # the move came mid-stream
    assert "server connection lost (code 1006): moving the stream" in text
    assert "stream resumed: session" in text and ", moves 1" in text
    assert len(y) >= within and client.uplink.dropped_samples == 0
    np.testing.assert_array_equal(y[:within], reference[:within])  # nothing repeated or missing: the same stream
    assert client.counters.server_stats["resumes"] == 1
