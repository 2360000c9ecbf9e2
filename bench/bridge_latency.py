"""The bridge's latency from microphone to virtual microphone, measured through PulseAudio.

A private PulseAudio daemon with a null sink ``fake_mic`` (the microphone: the bridge captures its monitor) runs
``metis-rt bridge --local`` (DeepFilterNet3 by default), which creates the virtual microphone ``metis_vmic_mic``.
``paplay`` plays a train of test events into ``fake_mic``; two ``parec`` recorders with the same small latency
record ``fake_mic.monitor`` (the moment the sound is at the microphone) and ``metis_vmic_mic`` (the moment an app
can read it). Each recorder's samples are stamped with the monotonic clock as they arrive; an event's time in each
recording is found by cross-correlation with the event itself, and latency = its time at the virtual microphone -
its time at the microphone (the recorders' own buffering is the same on both sides and cancels).

Events: ``click`` (a 1-sample impulse, the classic probe) and ``speech`` (a 0.4 s burst of clean speech, which a
denoiser must keep; a denoiser may remove a lone click). 1.5 s of silence separates the events.

  python bench/bridge_latency.py [--events 12] [--signal speech|click] [--bridge-arg=--engine=deepfilternet3 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metis_rt.audio.files import resample  # noqa: E402
from tests.realparts import PulseDaemon, null_sink, stop_process  # noqa: E402

RATE = 48000
READ_SAMPLES = 240  # 5 ms per read: the time stamp resolution of a recording
GAP_S, BURST_S = 1.5, 0.4
RECORD_LATENCY_MS = 10


class Recorder:
    """``parec`` of one source in a thread: samples and, per read, (samples so far, monotonic time)."""

    def __init__(self, pulse: PulseDaemon, source: str):
        self.proc = subprocess.Popen(
            ["parec", "-d", source, f"--rate={RATE}", "--channels=1", "--format=float32le", "--raw"]
            + [f"--latency-msec={RECORD_LATENCY_MS}"],
            env=pulse.env,
            stdout=subprocess.PIPE,
        )
        self.chunks: list[bytes] = []
        self.stamps: list[tuple[int, float]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        count = 0
        while chunk := self.proc.stdout.read1(READ_SAMPLES * 4):
            now = time.monotonic()
            self.chunks.append(chunk)
            count += len(chunk) // 4
            self.stamps.append((count, now))

    def stop(self) -> tuple[np.ndarray, float]:
        """The recording and the monotonic time of its sample 0 (earliest arrival of any read, less its length)."""
        stop_process(self.proc)
        self.thread.join(5)
        x = np.frombuffer(b"".join(self.chunks), dtype="<f4")
        t0 = min(t - n / RATE for n, t in self.stamps)  # the least-buffered read fixes the time line
        return x, t0


def events(kind: str, count: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The played signal, one event, and where each event starts in it (samples)."""
    if kind == "click":
        event = np.zeros(RATE // 100, np.float32)
        event[0] = 0.9
    else:
        clean, rate = sf.read(REPO / "examples" / "reference.wav", dtype="float32")
        clean = resample(clean, rate, RATE).astype(np.float32)
        start = int(np.argmax(np.abs(clean) > 0.1 * np.max(np.abs(clean))))
        event = clean[start : start + int(BURST_S * RATE)]
    gap = int(GAP_S * RATE)
    starts = [gap + i * (gap + event.shape[0]) for i in range(count)]
    signal = np.zeros(starts[-1] + event.shape[0] + gap, np.float32)
    for s in starts:
        signal[s : s + event.shape[0]] = event
    return signal, event, starts


def locate(recording: np.ndarray, event: np.ndarray, threshold: float) -> list[int]:
    """Starts of the events in a recording: peaks of the normalised cross-correlation above ``threshold``."""
    n = 1 << int(np.ceil(np.log2(recording.shape[0] + event.shape[0])))
    corr = np.fft.irfft(np.fft.rfft(recording, n) * np.conj(np.fft.rfft(event, n)), n)[: recording.shape[0]]
    power = np.concatenate([np.cumsum(recording.astype(np.float64) ** 2), np.zeros(event.shape[0])])
    power[recording.shape[0] :] = power[recording.shape[0] - 1]
    lead = np.concatenate([[0.0], power[: recording.shape[0] - 1]])
    energy = power[event.shape[0] - 1 : event.shape[0] - 1 + recording.shape[0]] - lead  # sum x[i : i + len(event)]
    event_energy = float(np.sum(event.astype(np.float64) ** 2))
    score = corr / (np.sqrt(energy * event_energy) + 1e-12)
    score[energy < 0.05 * event_energy] = 0.0  # near-silence: no event there (and no division by ~0)
    found, guard = [], int(GAP_S * RATE / 2)
    i = 0
    while i < score.shape[0]:
        if score[i] >= threshold:
            j = i + int(np.argmax(score[i : i + guard]))
            found.append(j)
            i = j + guard
        else:
            i += 1
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=12)
    ap.add_argument("--signal", choices=["speech", "click"], default="speech")
    ap.add_argument("--threshold", type=float, default=0.5, help="normalised correlation that counts as found")
    ap.add_argument("--bridge-arg", action="append", default=[], help="extra argument for metis-rt bridge")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bridge_latency.json")
    args = ap.parse_args()
    signal, event, _ = events(args.signal, args.events)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        pulse = PulseDaemon(tmp / "pulse", [null_sink("fake_mic")])
        bridge = None
        try:
            log = (tmp / "bridge.log").open("wb")
            bridge = subprocess.Popen(
                [sys.executable, "-m", "metis_rt", "bridge", "--local", "--input", "pulse:fake_mic.monitor"]
                + ["-v", *args.bridge_arg],
                cwd=REPO,
                env={**pulse.env, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 120
            while "metis_vmic_mic" not in pulse.pactl("list", "short", "sources").stdout:
                if bridge.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("no virtual microphone:\n" + (tmp / "bridge.log").read_text()[-3000:])
                time.sleep(0.1)
            time.sleep(2.0)  # the bridge settles (engine warm-up, buffer prefill)
            mic, vmic = Recorder(pulse, "fake_mic.monitor"), Recorder(pulse, "metis_vmic_mic")
            time.sleep(0.5)
            sf.write(tmp / "events.wav", signal, RATE, subtype="FLOAT")
            subprocess.run(["paplay", "-d", "fake_mic", str(tmp / "events.wav")], env=pulse.env, check=True)
            time.sleep(1.0)
            (x_mic, t_mic), (x_vmic, t_vmic) = mic.stop(), vmic.stop()
        finally:
            if bridge is not None:
                stop_process(bridge)
            pulse.stop()
        bridge_log = (tmp / "bridge.log").read_text(errors="replace")
    at_mic, at_vmic = locate(x_mic, event, args.threshold), locate(x_vmic, event, args.threshold)
    latencies = []
    for a in at_mic:  # pair each event with the first one found at the virtual mic after it
        t_a = t_mic + a / RATE
        later = [t_vmic + b / RATE for b in at_vmic if t_vmic + b / RATE >= t_a - 0.005]
        if later and later[0] - t_a < GAP_S:
            latencies.append(1000 * (later[0] - t_a))
    engine_lines = [line for line in bridge_log.splitlines() if "engine" in line.lower()][:3]
    row = {
        "signal": args.signal,
        "events_played": args.events,
        "found_at_mic": len(at_mic),
        "found_at_virtual_mic": len(at_vmic),
        "latency_ms": latencies,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "max_ms": float(np.max(latencies)) if latencies else None,
        "min_ms": float(np.min(latencies)) if latencies else None,
        "bridge_args": args.bridge_arg,
        "engine_log": engine_lines,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row))
    args.out.with_suffix(".bridge.log").write_text(bridge_log)
    print(json.dumps({k: v for k, v in row.items() if k != "latency_ms"}, indent=1))
    print("latencies ms:", " ".join(f"{v:.1f}" for v in latencies))


if __name__ == "__main__":
    main()
