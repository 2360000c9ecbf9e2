"""Resume-token size per task: what a stream's state costs to carry (docs/protocol.md, "Resume").

An in-process server over the tiny reference-layout models (tests/data/parity: the sizes of the state depend on
the stream geometry, the reference and the codec's token layout, not on the weights' width), with a resume key
and the streaming geometry given (default: configs/streaming.yaml). Per task one session streams ``--seconds`` of
the example speech at real-time pace (tse/vc with the server-side voice ``alice`` = examples/reference.wav); every
``session.checkpoint`` token's length is recorded (characters of the base64url text on the wire).

  python bench/token_size.py [--seconds 6] [--tasks se,tse,vc]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from websockets.sync.client import connect  # noqa: E402

from metis_rt.pipeline.components import load_components, resolve_config_for_tasks  # noqa: E402
from metis_rt.server.app import MetisServer  # noqa: E402
from metis_rt.server.config import ServerConfig  # noqa: E402
from metis_rt.server.resume_token import ResumeKeys, ResumeSettings  # noqa: E402
from metis_rt.streaming.config import StepsConfig, load_stream_config  # noqa: E402
from metis_rt.streaming.processor import MetisWindowProcessor  # noqa: E402
from tests.conftest import EXAMPLES_DIR, make_combined_model_dir  # noqa: E402
from tests.realparts import ServerThread  # noqa: E402

FAST = StepsConfig(stage1=1, s2a=(1,) * 12)  # the steps do not change the state's size, only the run time


def measure(url: str, task: str, x: np.ndarray, rate: int) -> list[int]:
    start = {"type": "session.start", "protocol": 1, "task": task, "sample_rate": rate, "format": "f32le"}
    start["channels"] = 1
    if task in ("tse", "vc"):
        start["voice"] = "alice"
    sizes: list[int] = []
    with connect(url, max_size=2**24) as ws:
        ws.send(json.dumps(start))
        ready = json.loads(ws.recv(timeout=120))
        assert ready["type"] == "session.ready", ready
        for i in range(0, len(x), rate // 50):  # at real-time pace: checkpoints are taken between hops
            ws.send(x[i : i + rate // 50].astype("<f4").tobytes())
            time.sleep(0.02)
        ws.send(json.dumps({"type": "session.end"}))
        while True:
            try:
                message = ws.recv(timeout=300)
            except Exception:
                break
            if isinstance(message, str):
                event = json.loads(message)
                if event["type"] == "session.checkpoint":
                    sizes.append(len(event["token"]))
                elif event["type"] == "error":
                    raise RuntimeError(event)
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--tasks", default="se,tse,vc")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "token_size.json")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    x, rate = sf.read(EXAMPLES_DIR / "speech_noisy.wav", dtype="float32")
    x = np.tile(x, int(np.ceil(args.seconds * rate / len(x))))[: int(args.seconds * rate)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_combined_model_dir(Path(tmp) / "tiny")
        voices = Path(tmp) / "voices"
        voices.mkdir()
        shutil.copy(EXAMPLES_DIR / "reference.wav", voices / "alice.wav")
        cfg, official = resolve_config_for_tasks(model_dir, ["se", "tse", "vc"])
        proc = MetisWindowProcessor(load_components(model_dir, ["se", "tse", "vc"], cfg))
        stream_cfg = dataclasses.replace(load_stream_config(), steps={t: FAST for t in ("se", "tse", "vc")})
        resume = ResumeSettings(ResumeKeys((b"bench-key-" * 4,)), max_age_s=60, checkpoint_interval_s=0.5)
        server_cfg = ServerConfig(port=0, voices_dir=str(voices), max_sessions=4, admission="fixed")
        server = MetisServer(
            proc, official, stream_cfg, server_cfg, tasks=tuple(tasks), deterministic=True, resume=resume
        )
        thread = ServerThread(server, 120)
        try:
            g = stream_cfg.geometry
            rows = {task: measure(thread.url, task, x, rate) for task in tasks}
        finally:
            thread.stop()
    result = {
        "geometry_ms": [g.chunk_ms, g.lookahead_ms, g.left_context_ms],
        "seconds": args.seconds,
        "token_chars": rows,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"geometry chunk/lookahead/left ms: {result['geometry_ms']}")
    print("| task | checkpoints | token chars min / median / max |")
    print("|---|---|---|")
    for task, sizes in rows.items():
        if sizes:
            print(f"| {task} | {len(sizes)} | {min(sizes)} / {int(np.median(sizes))} / {max(sizes)} |")
        else:
            print(f"| {task} | 0 | – |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
