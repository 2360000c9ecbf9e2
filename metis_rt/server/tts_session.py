"""One TTS session: its voice, its request queue, and the worker coroutine that speaks the requests in order.

A ``tts.speak`` request is spoken sentence by sentence (``TtsSynthesizer.stream``): each sentence is one call on
the engine thread, whose audio is resampled (24 kHz -> the session's output rate), encoded and split into frames
there, then sent; the next sentence is computed while those frames go out. ``tts.done`` follows the request's last
frame. Every accepted request ends in exactly one ``tts.done``, or in an ``error`` carrying its id (it could not be
spoken), or in the ``dropped`` list of a ``tts.cancelled``.

Overload policy (bounded everywhere, nothing grows with the load):

* at most ``max_pending`` requests wait behind the one being spoken (each at most ``MAX_TEXT_CHARS`` characters);
  one more is **rejected**: an ``error`` ``tts_queue_full`` with its id says it was dropped; the queue is unchanged;
* ``flush`` / ``session.end`` markers wait in the same queue (consecutive flushes share one entry, one ``session.end``
  ends the reading), so the queue holds at most ``2 * max_pending + 2`` entries;
* at most one sentence of encoded audio waits for the socket: the next sentence's frames are queued only after
  the previous ones were written (a slow client slows its own session, never the server's memory);
* the device is shared with the live streams: a sentence is one engine call between batch steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from metis_rt.audio.stream_resampler import StreamResampler
from metis_rt.errors import AudioInputError, TextInputError
from metis_rt.pipeline.offline import OUTPUT_SAMPLE_RATE
from metis_rt.pipeline.tts import TtsSynthesizer, TtsVoice
from metis_rt.server import protocol as proto
from metis_rt.server.outbox import Outbox
from metis_rt.server.tts_service import TtsService

log = logging.getLogger(__name__)

FRAME_MS = 240  # audio per binary frame sent (a sentence of several seconds goes out as several frames)


@dataclass(frozen=True)
class TtsRequest:
    text: str
    id: proto.RequestId
    language: str
    received: float  # perf_counter when the tts.speak arrived


@dataclass
class _Flush:
    count: int = 1  # flush messages answered together (consecutive flushes)


_END = object()  # session.end: speak what is queued, then the worker stops


@dataclass(frozen=True)
class Piece:
    """One sentence, ready to send: encoded frames at the output rate (the last piece carries the resampler tail)."""

    frames: list[bytes]
    samples: int
    compute_s: float
    last: bool


class Speech:
    """One request being spoken. :meth:`next_piece` runs on the engine thread (one call at a time)."""

    def __init__(self, synth: TtsSynthesizer, voice: TtsVoice, request: TtsRequest, noise, fmt: str, rate: int):
        self.sentences = synth.stream(voice, request.text, noise, request.language)
        self.resampler = StreamResampler(OUTPUT_SAMPLE_RATE, rate)
        self.fmt, self.rate = fmt, rate
        self.frame_samples = rate * FRAME_MS // 1000

    def next_piece(self) -> Piece:
        started = time.perf_counter()
        wav24 = next(self.sentences, None)
        compute_s = time.perf_counter() - started
        if wav24 is None:
            return self._piece(self.resampler.flush(), compute_s, last=True)
        return self._piece(self.resampler.push(wav24), compute_s, last=False)

    def tail(self) -> Piece:
        """What the resampler still holds (a request stopped early)."""
        return self._piece(self.resampler.flush(), 0.0, last=True)

    def _piece(self, samples: np.ndarray, compute_s: float, last: bool) -> Piece:
        step = self.frame_samples
        frames = [proto.encode_pcm(samples[i : i + step], self.fmt) for i in range(0, len(samples), step)]
        return Piece(frames, len(samples), compute_s, last)


@dataclass
class _Progress:
    """Counters of the request being spoken."""

    samples: int = 0
    compute_s: float = 0.0
    sentences: int = 0
    first_audio_s: float | None = None
    stopped: bool = False  # tts.cancel (or a closed connection) ended it after a sentence

    def stamp_first_audio(self, received: float) -> None:
        """Called by the connection's sender just before it writes the request's first frame."""
        self.first_audio_s = time.perf_counter() - received


class TtsSession:
    """The TTS state of one connection. Create on the event loop; run :meth:`run` as a task of the connection."""

    def __init__(
        self,
        service: TtsService,
        synth: TtsSynthesizer,
        voice: TtsVoice,
        language: str,
        fmt: str,
        output_rate: int,
        out: Outbox,
    ):
        self.service = service
        self.synth, self.voice, self.language = synth, voice, language
        self.fmt, self.output_rate = fmt, output_rate
        self.out = out
        self.max_pending = service.max_pending
        self.noise = service.noise()
        self.queue: deque = deque()  # TtsRequest | _Flush | _END
        self.pending = 0  # TtsRequests in the queue
        self.current: TtsRequest | None = None
        self.stop_current = False  # tts.cancel: stop the current request after its sentence
        self.ended = asyncio.Event()  # the worker is done (session.end reached, or the connection is gone)
        self._wake = asyncio.Event()

    @property
    def busy(self) -> bool:
        """Speaking or holding queued work (the connection's idle timeout does not apply)."""
        return self.current is not None or bool(self.queue)

    # --- requests (event loop, from the connection's receive loop) -------------------------------
    def speak(self, request: TtsRequest) -> None:
        if self.pending >= self.max_pending:
            raise proto.ProtocolError(
                "tts_queue_full",
                f"request dropped: {self.pending} requests already wait behind the one being spoken (at most "
                f"{self.max_pending}); wait for a tts.done, or send tts.cancel",
                request.id,
            )
        self._put(request)
        self.pending += 1

    def flush(self) -> None:
        """Answer ``flushed`` once everything queued so far was spoken."""
        if self.queue and isinstance(self.queue[-1], _Flush):
            self.queue[-1].count += 1
        else:
            self._put(_Flush())

    def end(self) -> None:
        """Speak everything queued, then stop (the connection closes after ``ended``)."""
        self._put(_END)

    def cancel(self) -> None:
        """Drop the queued requests (answered ``tts.cancelled``); stop the current one after its sentence."""
        dropped = [item.id for item in self.queue if isinstance(item, TtsRequest)]
        self.queue = deque(item for item in self.queue if not isinstance(item, TtsRequest))
        self.pending = 0
        self.stop_current = self.current is not None
        self.out.put(proto.encode(proto.TtsCancelled(dropped)))

    def _put(self, item) -> None:
        self.queue.append(item)
        self._wake.set()

    # --- the worker -----------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while not self.out.closed:
                item = await self._next()
                if item is _END:
                    return
                if isinstance(item, _Flush):
                    for _ in range(item.count):
                        self.out.put(proto.encode(proto.Flushed()))
                    continue
                self.pending -= 1
                self.current, self.stop_current = item, False
                try:
                    await self._speak(item)
                finally:
                    self.current = None
        finally:
            self.ended.set()

    async def _next(self):
        while not self.queue:
            self._wake.clear()
            await self._wake.wait()
        return self.queue.popleft()

    async def _speak(self, request: TtsRequest) -> None:
        started = time.perf_counter()
        speech = Speech(self.synth, self.voice, request, self.noise, self.fmt, self.output_rate)
        progress = _Progress()
        try:
            await self._sentences(speech, request, progress)
        except (TextInputError, AudioInputError) as exc:
            self._error(request, "invalid_text", str(exc))
            return
        except Exception as exc:  # a model failure ends this request, not the session
            log.exception("TTS request %r failed", request.id)
            self._error(request, "tts_failed", f"speaking failed: {exc}")
            return
        finished = time.perf_counter()
        first = progress.first_audio_s
        done = proto.TtsDone(
            request.id,
            None if first is None else round(first * 1000, 1),
            round(progress.samples * 1000 / self.output_rate, 3),
            round(progress.compute_s * 1000, 1),
            round((started - request.received) * 1000, 1),
            round((finished - request.received) * 1000, 1),
            progress.sentences,
            cancelled=progress.stopped,
        )
        self.out.put(proto.encode(done))

    async def _sentences(self, speech: Speech, request: TtsRequest, progress: _Progress) -> None:
        """Compute sentence k + 1 on the device while sentence k's frames go out."""
        computing = self._compute(speech.next_piece)
        try:
            while True:
                piece = await computing
                if not piece.last:
                    progress.sentences += 1
                    progress.stopped = self.stop_current or self.out.closed
                    if progress.stopped:
                        piece = _joined(piece, speech.tail())
                if progress.first_audio_s is None and piece.frames:
                    self.out.put(lambda: progress.stamp_first_audio(request.received))  # run as it goes out
                for frame in piece.frames:
                    self.out.put(frame)
                progress.samples += piece.samples
                progress.compute_s += piece.compute_s
                if not (piece.last or progress.stopped):
                    computing = self._compute(speech.next_piece)
                await self.out.drained()
                if piece.last or progress.stopped:
                    return
        finally:
            computing.cancel()  # the connection went away mid-sentence: the engine skips it if not yet started

    def _compute(self, fn: Callable[[], Piece]) -> asyncio.Future:
        return asyncio.ensure_future(self.service.on_device(fn))

    def _error(self, request: TtsRequest, code: str, message: str) -> None:
        self.out.put(proto.encode(proto.RequestError(code, message, request.id)))


def _joined(a: Piece, b: Piece) -> Piece:
    return Piece(a.frames + b.frames, a.samples + b.samples, a.compute_s + b.compute_s, True)
