"""bench/gpu_check.sh --dry-run: the GPU capacity run's code path on the CPU with the tiny models (issue 20)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_point_as_json_and_markdown(tmp_path):
    # the wall-clock cap is for the GPU run; a shared CI CPU can be slow
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "GPU_CHECK_TIMEOUT_S": "1500"}
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), str(tmp_path), "--dry-run", "--budget-s", "1400"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["machine"]["dry_run"] and result["machine"]["size"] == "tiny"
    assert result["machine"]["dtype"] == "bfloat16"  # the GPU run's dtype, met here first
    rows = result["rows"]
    points = {(r["geometry"].split()[0], r["mode"], r["streams"]) for r in rows}
    assert points == {(g, m, n) for g in ("default", "low-latency") for m in ("eager", "compiled") for n in (1, 2)}
    for r in rows:
        assert "skipped" not in r, r  # the dry run measures every point
        assert 0 < r["hop_ms_p50"] <= r["hop_ms_p99"] and r["chunk_ms"] in (240, 160)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| default 240/160/240 | compiled | 2 |" in table and "real-time streams per GPU" in table
