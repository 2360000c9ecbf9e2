"""A ``metis-rt serve`` child process for the server benches (hostile.py, soak.py): start, RSS, health, stop.

The server runs in its own process so its resident memory is measured alone (``/proc/PID/status`` VmRSS).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO / "tests" / "data" / "parity" / "se"
FAST_STREAMING = REPO / "bench" / "streaming_fast.yaml"  # the tests' fewer decoding steps
READY = re.compile(r"ready on port (\d+)")


class ServerProcess:
    """``processor``: "tiny" (``metis-rt serve`` with the Metis engine on the CPU over ``model_dir``, the tiny
    reference-layout models by default; ``fast_steps``: the tests' fewer decoding steps, else the model directory's
    streaming settings; ``threads``: ``--threads`` and ``OMP_NUM_THREADS``, None = the engine's own choice) or
    "identity" (``bench/identity_server.py``: the server without a model; ``extra`` = its flags). The server's log
    goes to a file (a pipe nobody reads would stall it once full)."""

    def __init__(
        self,
        processor: str = "tiny",
        extra: tuple[str, ...] = (),
        threads: int | None = 1,
        *,
        model_dir: Path = DEFAULT_MODEL_DIR,
        tasks: str = "se",
        fast_steps: bool = True,
        deterministic: bool = True,
    ):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        if processor == "tiny":
            command = [sys.executable, "-m", "metis_rt", "serve", "--model-dir", str(model_dir), "--tasks", tasks]
            command += ["--engine", "metis", "--device", "cpu", "--port", "0"]
            if threads is not None:
                env["OMP_NUM_THREADS"] = str(threads)
                command += ["--threads", str(threads)]
            if deterministic:
                command.append("--deterministic")
            if fast_steps:
                command += ["--stream-config", str(FAST_STREAMING)]
            command += list(extra)
        else:
            command = [sys.executable, str(REPO / "bench" / "identity_server.py"), *extra]
        self.command = command
        self.log_path = Path(tempfile.mkdtemp(prefix="metis_rt_server_")) / "server.log"
        with open(self.log_path, "w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            found = READY.search(line)
            if found:
                self.port = int(found.group(1))
                break
        else:
            raise RuntimeError("server did not start")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep its stdout drained
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream"
        self.base = f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def health(self) -> dict:
        return json.loads(urllib.request.urlopen(self.base + "/healthz", timeout=10).read())

    def metric(self, name: str) -> float:
        """One unlabelled value of /metrics."""
        text = urllib.request.urlopen(self.base + "/metrics", timeout=10).read().decode()
        return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE).group(1))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        """SIGTERM, wait; the server's stderr (its log: WARNING and above)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.log_path.read_text()
