"""Stream an audio file through the metis-rt server, save the output and measure latency per packet.

``python clients/file_client.py input.wav -o out.wav [--realtime] [--packet-ms 20] [--rate 16000]``

Pacing: ``realtime`` sends packet i at ``i * packet_ms`` on the wall clock, as a microphone would (the server drops
input if it falls behind). Otherwise packets go as fast as the server takes them: the client keeps at most
``max_ahead_ms`` of input ahead of the output received (default: the server's algorithmic latency plus half a
chunk: the next hop's window is complete when the previous hop's output arrives, the one after it is not), so
the server never holds two complete windows, which its overload rule would cut; ``0`` sends everything at once.
At the end the client sends ``flush``, waits for ``flushed`` and ends the session, so the output lasts exactly as
long as the input (less any input the server dropped).

Moving between workers: the client keeps the latest ``session.checkpoint`` (its token and ``input_samples_acked``;
the input itself is the file, held whole). When the connection is lost (1006), the worker drains (1012) or is busy
(1013, HTTP 502/503/504, refused), it reconnects with bounded, jittered backoff (to the next of the URLs given,
round robin), sends ``session.resume``, keeps only the ``output_samples`` of output the new worker does not
produce again, and re-sends the input after ``input_samples_acked``. Without a checkpoint, or when the token is
refused, it starts afresh from the file's beginning (the output so far is discarded). The report counts the moves.

Latency of a packet: from sending it to receiving the output sample that corresponds to its first sample (output
sample k belongs to input sample k on the same clock; with different rates, to the same instant).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed

from metis_rt.audio.files import read_audio, resample, to_mono, write_audio
from metis_rt.clients import reconnect, wire
from metis_rt.clients.live_resume import Checkpoint, parse_checkpoint
from metis_rt.clients.resume import Backoff
from metis_rt.errors import AudioInputError, MetisError
from metis_rt.server.protocol import FORMATS, MAX_FRAME_S, MAX_RATE, MIN_RATE, TASKS, SessionResumed

log = logging.getLogger("metis_rt.clients.file")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
STALL_TIMEOUT_S = 60.0  # no output for this long while waiting for it: give up
CLOSE_TIMEOUT_S = 10.0  # after session.end, wait this long for the server to close


@dataclass(frozen=True)
class FileStreamOptions:
    task: str = "se"
    rate: int | None = None  # resample the input to this rate first (default: the file's rate)
    output_rate: int | None = None  # default: the input rate
    packet_ms: float = 20.0
    realtime: bool = False
    fmt: str = "f32le"
    voice: str | None = None
    reference: bytes | None = None  # raw bytes of a reference audio file (tse, vc)
    max_ahead_ms: float | None = None  # fast pacing only; None = latency + half a chunk, 0 = unlimited
    options: dict[str, Any] | None = None  # session.start options (mix, bypass, steps)
    reconnect: bool = True  # move to another worker (or wait for this one) when the connection is lost / drained
    reconnect_max_s: float = 30.0  # give up after waiting this long in total between attempts
    backoff_seed: int | None = None  # reconnect jitter (tests)


class LatencyTracker:
    """Pure bookkeeping: packet send times, output arrival -> per-packet latency (ms)."""

    def __init__(self, input_rate: int, output_rate: int):
        self.input_rate, self.output_rate = input_rate, output_rate
        self.pending: list[tuple[int, float]] = []  # (output sample index of the packet's first sample, sent at)
        self.next_pending = 0
        self.latencies_ms: list[float] = []

    def sent(self, first_sample: int, at_s: float) -> None:
        index = (first_sample * self.output_rate + self.input_rate // 2) // self.input_rate
        self.pending.append((index, at_s))

    def received(self, total_output_samples: int, at_s: float) -> None:
        while self.next_pending < len(self.pending) and self.pending[self.next_pending][0] < total_output_samples:
            self.latencies_ms.append((at_s - self.pending[self.next_pending][1]) * 1000)
            self.next_pending += 1

    def rewind(self) -> None:
        """A resume: packets whose output has not arrived are sent again (and recorded again)."""
        del self.pending[self.next_pending :]

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None


def load_input(source: str | Path | np.ndarray, sample_rate: int | None, rate: int | None) -> tuple[np.ndarray, int]:
    """A file (any format soundfile reads) or an array -> mono float32 at ``rate`` (default: its own rate)."""
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise ValueError("stream_file needs sample_rate when given an array")
        samples, native = source.astype(np.float32, copy=False), sample_rate
    else:
        samples, native = read_audio(source)
    mono = to_mono(samples)
    target = rate or native
    if not MIN_RATE <= target <= MAX_RATE:
        raise AudioInputError(f"the server takes {MIN_RATE}-{MAX_RATE} Hz; the input is {target} Hz: pass --rate")
    return resample(mono, native, target).astype(np.float32, copy=False), target


class _Stream:
    """One file streamed over one or more connections (moves between workers): per connection a sender task and the
    receiving loop (the TaskGroup body); the progress (sent, received, output, last checkpoint) spans them."""

    def __init__(self, x: np.ndarray, rate: int, out_rate: int, opts: FileStreamOptions):
        self.x, self.rate, self.out_rate, self.opts = x, rate, out_rate, opts
        self.tracker = LatencyTracker(rate, out_rate)
        self.outputs: list[np.ndarray] = []
        self.received = 0
        self.sent = 0
        self.progress = asyncio.Event()
        self.flushed = asyncio.Event()
        self.events: dict[str, list[dict]] = {"stats": [], "warning": [], "error": []}
        self.checkpoint: Checkpoint | None = None
        self.moves, self.restarts, self.checkpoints = 0, 0, 0
        self.ended = False
        self.failure: wire.ClientError | None = None

    def attach(self, ws, ready: wire.Ready) -> None:
        """A new connection: a resumed stream continues where its checkpoint stands."""
        self.ws, self.ready = ws, ready
        self.flushed.clear()
        if isinstance(ready, SessionResumed):
            self._keep_output(ready.output_samples)
            self.sent = ready.input_samples_acked
            self.tracker.rewind()

    def start_afresh(self) -> None:
        """No usable checkpoint: stream the whole file again; the output so far is discarded."""
        self.checkpoint = None
        self._keep_output(0)
        self.sent = 0
        self.tracker = LatencyTracker(self.rate, self.out_rate)
        self.restarts += 1

    def _keep_output(self, samples: int) -> None:
        out = self.output()
        if len(out) < samples:  # output lost on the way (dropped for a slow reader): silence keeps the timing
            log.warning("resume: %d output samples missing; filled with silence", samples - len(out))
            out = np.concatenate([out, np.zeros(samples - len(out), np.float32)])
        self.outputs, self.received = [out[:samples]], samples

    def ahead_limit_ms(self) -> float:
        if self.opts.realtime or self.opts.max_ahead_ms == 0:
            return float("inf")
        if self.opts.max_ahead_ms is None:
            return self.ready.algorithmic_latency_ms + self.ready.chunk_ms / 2
        return self.opts.max_ahead_ms

    def ahead_ms(self) -> float:
        return self.sent * 1000 / self.rate - self.received * 1000 / self.out_rate

    @property
    def complete(self) -> bool:
        """All output is in (``flushed`` came): a close after it loses nothing."""
        return self.flushed.is_set()

    async def run(self) -> bool:
        """Stream over the attached connection until it closes: True when the stream is complete."""
        if self.ahead_limit_ms() <= self.ready.algorithmic_latency_ms:
            raise wire.ClientError(
                f"max_ahead_ms={self.opts.max_ahead_ms:g} can never produce output: it must exceed the server's "
                f"algorithmic latency ({self.ready.algorithmic_latency_ms:g} ms); leave it unset for the default"
            )
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(self._send(), name="sender")
            await self._receive()
            sender.cancel()
        if self.failure is not None:
            raise self.failure
        return self.complete or (self.ended and self.ws.close_code == 1000)

    def closed_early(self) -> wire.ClientError:
        errors = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in self.events["error"])
        return wire.ClientError(
            f"the server closed the connection early: {wire.close_description(self.ws)}"
            + (f"; errors: {errors}" if errors else "")
        )

    async def _send(self) -> None:
        try:
            await self._send_all()
        except ConnectionClosed:
            return  # the receiver says why
        except TimeoutError:  # recorded, not raised: the connection's tasks end through the receiver
            self.failure = wire.ClientError(f"the server sent no output for {STALL_TIMEOUT_S:g} s; giving up")
            await self.ws.close()

    async def _send_all(self) -> None:
        packet = max(1, min(round(self.rate * self.opts.packet_ms / 1000), int(MAX_FRAME_S * self.rate)))
        limit_ms, loop = self.ahead_limit_ms(), asyncio.get_running_loop()
        started, first = loop.time(), self.sent
        for start in range(first, len(self.x), packet):
            if self.opts.realtime:
                await asyncio.sleep(max(0.0, started + (start - first) / self.rate - loop.time()))
            async with asyncio.timeout(STALL_TIMEOUT_S):
                while self.ahead_ms() >= limit_ms:
                    self.progress.clear()
                    await self.progress.wait()
            chunk = self.x[start : start + packet]
            self.tracker.sent(start, time.perf_counter())
            await self.ws.send(wire.encode_audio(chunk, self.opts.fmt))
            self.sent = start + len(chunk)
        await self.ws.send(wire.control_message("flush"))
        async with asyncio.timeout(STALL_TIMEOUT_S):
            await self.flushed.wait()
        self.ended = True
        await self.ws.send(wire.control_message("session.end"))
        await asyncio.sleep(CLOSE_TIMEOUT_S)  # cancelled when the server closes, as it should
        log.warning("the server did not close within %g s of session.end; closing", CLOSE_TIMEOUT_S)
        await self.ws.close()

    async def _receive(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                if isinstance(message, bytes):
                    if self.complete:
                        continue  # nothing follows flushed but a fresh (empty) stream
                    samples = wire.decode_audio(message, self.opts.fmt)
                    self.outputs.append(samples)
                    self.received += len(samples)
                    self.tracker.received(self.received, time.perf_counter())
                    self.progress.set()
                    continue
                event = wire.parse_event(message)
                kind = event["type"]
                if kind == "flushed":
                    self.flushed.set()
                elif kind == "session.checkpoint" and not self.complete:
                    self._checkpoint(event)
                elif kind in self.events:
                    self.events[kind].append(event)
                    if kind != "stats":  # the report lists each once at the end; -v shows them as they come
                        log.info("server %s %s: %s", kind, event.get("code"), event.get("message"))

    def _checkpoint(self, event: dict[str, Any]) -> None:
        checkpoint = parse_checkpoint(event)
        if checkpoint is None:
            log.warning("ignoring a malformed session.checkpoint")
            return
        self.checkpoint = checkpoint
        self.checkpoints += 1

    def resume_token(self) -> str | None:
        return None if self.checkpoint is None else self.checkpoint.token

    def refused(self, exc: wire.ClientError) -> None:
        """The new worker refused the token: start afresh."""
        self.start_afresh()

    def output(self) -> np.ndarray:
        return np.concatenate(self.outputs) if self.outputs else np.zeros(0, dtype=np.float32)


async def stream_file(
    url: str | Sequence[str],
    source: str | Path | np.ndarray,
    *,
    sample_rate: int | None = None,
    options: FileStreamOptions | None = None,
    token: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Stream ``source`` (a path, or a mono array at ``sample_rate``) to the server at ``url`` (``ws://HOST:PORT``
    or the full ``/v1/stream`` URL; several: the workers to move between, tried in turn). Returns (output float32
    [N] at the output rate, report dict)."""
    opts = options or FileStreamOptions()
    urls = [url] if isinstance(url, str) else list(url)
    x, rate = load_input(source, sample_rate, opts.rate)
    out_rate = opts.output_rate or rate
    start = wire.start_message(
        opts.task, rate, opts.fmt, out_rate, voice=opts.voice, reference=opts.reference, options=opts.options
    )
    began = time.perf_counter()
    stream = _Stream(x, rate, out_rate, opts)
    backoff = Backoff(max_total_s=opts.reconnect_max_s, seed=opts.backoff_seed)
    for offset in itertools.count():
        order = urls[offset % len(urls) :] + urls[: offset % len(urls)]  # a move goes to the next worker first
        if opts.reconnect:
            ws, ready = await reconnect.reopen(order, start, stream.resume_token, stream.refused, backoff, token)
        else:
            ws, ready = await wire.open_session(wire.stream_url(order[0]), start, token)
        checkpoints_before = stream.checkpoints
        async with ws:
            stream.attach(ws, ready)
            if await stream.run():
                break
        if not (opts.reconnect and reconnect.should_move(ws.close_code)):
            raise stream.closed_early()
        if stream.checkpoints > checkpoints_before:
            backoff.succeeded()  # the stream made progress on that worker
        log.info("connection lost (%s): moving the stream", wire.close_description(ws))
        stream.moves += 1
        if stream.checkpoint is None:
            stream.start_afresh()
        await reconnect.wait_to_retry(backoff, 0.0, stream.closed_early())
    out = stream.output()
    return out, _report(stream, stream.ready, opts, time.perf_counter() - began)


def _report(stream: _Stream, ready: wire.Ready, opts: FileStreamOptions, wall_s: float) -> dict[str, Any]:
    tracker, stats = stream.tracker, stream.events["stats"]
    input_s = len(stream.x) / stream.rate
    return {
        "input_s": input_s,
        "output_s": stream.received / stream.out_rate,
        "input_rate": stream.rate,
        "output_rate": stream.out_rate,
        "input_samples": len(stream.x),
        "output_samples": stream.received,
        "packets": len(tracker.pending),
        "packet_ms": opts.packet_ms,
        "realtime": opts.realtime,
        "max_ahead_ms": None if stream.ahead_limit_ms() == float("inf") else stream.ahead_limit_ms(),
        "algorithmic_latency_ms": ready.algorithmic_latency_ms,
        "chunk_ms": ready.chunk_ms,
        "latency_ms": tracker.latencies_ms,
        "latency_ms_p50": tracker.percentile(50),
        "latency_ms_p99": tracker.percentile(99),
        "wall_s": wall_s,
        "speed": input_s / wall_s if wall_s > 0 else None,  # x real time, handshake included
        "server_stats": stats[-1] if stats else None,
        "warnings": stream.events["warning"],
        "errors": stream.events["error"],
        "moves": stream.moves,  # reconnections after a lost / drained connection
        "restarts": stream.restarts,  # of them, how many started afresh (no checkpoint, or the token was refused)
        "checkpoints": stream.checkpoints,
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    def ms(value):
        return "n/a" if value is None else f"{value:.1f} ms"

    server = report["server_stats"]
    ahead = f", at most {report['max_ahead_ms']:.0f} ms ahead" if report["max_ahead_ms"] else ""
    lines = [
        f"audio: {report['input_s']:.2f} s in ({report['input_rate']} Hz), {report['output_s']:.2f} s out "
        f"({report['output_rate']} Hz) in {report['wall_s']:.2f} s ({report['speed']:.2f}x real time)",
        f"pacing: {'real time' if report['realtime'] else 'as fast as possible'}, {report['packets']} packets of "
        f"{report['packet_ms']:g} ms{ahead}",
        f"latency per packet (send -> its first output sample): p50 {ms(report['latency_ms_p50'])}, "
        f"p99 {ms(report['latency_ms_p99'])}; algorithmic {report['algorithmic_latency_ms']:.1f} ms",
    ]
    if server:
        lines.append(
            f"server: rtf {server['rtf']:.3f}, compute per hop {server['hop_compute_ms']:.1f} ms, latency "
            f"{server['latency_ms']:.1f} ms, dropped {server['dropped_ms']:.0f} ms, hops {server['hops']}"
        )
    return lines + warning_lines(report["warnings"])


def warning_lines(warnings: list[dict[str, Any]]) -> list[str]:
    """One line per distinct server warning, with how often it came (an overload repeats every hop)."""
    counts = Counter((str(w.get("code")), str(w.get("message"))) for w in warnings)
    return [f"warning {code}: {message}" + (f" (x{n})" if n > 1 else "") for (code, message), n in counts.items()]


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="file_client", description="stream an audio file through a metis-rt server")
    p.add_argument("input", type=Path, help="audio file (wav, flac, ogg, ...; any rate, mixed to mono)")
    p.add_argument("-o", "--output", type=Path, help="write the output here (.wav, .flac, .ogg)")
    p.add_argument(
        "--server",
        action="append",
        help=f"server URL (default {wire.DEFAULT_URL}); repeat to name the workers a stream may move between",
    )
    p.add_argument("--no-reconnect", action="store_true", help="fail when the connection is lost or drained")
    p.add_argument("--token", help="bearer token, if the server requires one")
    p.add_argument("--task", choices=TASKS, default="se")
    voice = p.add_mutually_exclusive_group()
    voice.add_argument("--voice", help="a named voice on the server (tse, vc)")
    voice.add_argument("--reference", type=Path, help="a reference recording of the target voice (tse, vc)")
    p.add_argument("--rate", type=int, help="resample the input to this rate first (default: the file's rate)")
    p.add_argument("--output-rate", type=int, help="output sample rate (default: the input rate)")
    p.add_argument("--packet-ms", type=float, default=20.0, help="audio per packet (default 20)")
    p.add_argument("--realtime", action="store_true", help="pace packets in real time (default: as fast as possible)")
    p.add_argument("--max-ahead-ms", type=float, help="fast pacing: input ahead of output (default latency + chunk/2)")
    p.add_argument("--format", dest="fmt", choices=sorted(FORMATS), default="f32le", help="wire PCM format")
    p.add_argument("--json", type=Path, help="also write the full report (per-packet latencies included) here")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.task == "tts":
        print(f"file_client: error: {wire.TTS_NOT_HERE}", file=sys.stderr)
        return EXIT_USAGE
    if args.packet_ms <= 0 or args.packet_ms > MAX_FRAME_S * 1000:
        print(f"file_client: error: --packet-ms must be in (0, {MAX_FRAME_S * 1000:g}]", file=sys.stderr)
        return EXIT_USAGE
    try:
        reference = args.reference.read_bytes() if args.reference else None
    except OSError as exc:
        print(f"file_client: error: cannot read --reference {args.reference}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    opts = FileStreamOptions(
        task=args.task,
        rate=args.rate,
        output_rate=args.output_rate,
        packet_ms=args.packet_ms,
        realtime=args.realtime,
        fmt=args.fmt,
        voice=args.voice,
        reference=reference,
        max_ahead_ms=args.max_ahead_ms,
        reconnect=not args.no_reconnect,
    )
    servers = args.server or [wire.DEFAULT_URL]
    try:
        out, report = asyncio.run(stream_file(servers, args.input, options=opts, token=args.token))
        if args.output is not None:
            write_audio(args.output, out, report["output_rate"])
    except AudioInputError as exc:
        print(f"file_client: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MetisError as exc:
        print(f"file_client: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print("\n".join(report_lines(report)))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return EXIT_OK
