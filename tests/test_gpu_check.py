"""bench/gpu_check.sh --dry-run: the GPU capacity run's code path on the CPU with the tiny models (issue 20)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _gpu_check(tmp_path, *options, cap_s: int = 600):
    """``bench/gpu_check.sh tmp_path --dry-run *options``, its wall clock capped at ``cap_s``."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "GPU_CHECK_TIMEOUT_S": str(cap_s)}
    return subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), str(tmp_path), "--dry-run", *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=cap_s + 100,
    )


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_point_as_json_and_markdown(tmp_path):
    # the wall-clock cap is for the GPU run; a shared CI CPU can be slow
    done = _gpu_check(tmp_path, "--budget-s", "1400", cap_s=1500)
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


def test_gpu_check_measures_only_the_modes_and_geometries_asked_for(tmp_path):
    done = _gpu_check(tmp_path, "--modes", "eager", "--geometries", "low-latency")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert {(r["geometry"].split()[0], r["mode"], r["streams"]) for r in rows} == {
        ("low-latency", "eager", 1),
        ("low-latency", "eager", 2),
    }


def test_gpu_check_names_an_unknown_mode_before_building_anything(tmp_path):
    done = _gpu_check(tmp_path, "--modes", "eager,graphs")
    assert done.returncode != 0
    assert "--modes: unknown graphs (choose from eager, compiled)" in done.stdout + done.stderr
    assert not (tmp_path / "gpu_check.json").exists()
