"""Engine choice (``--engine auto``): the rules of metis_rt.engines, and the README's command without weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metis_rt.denoisers import EngineUnavailable
from metis_rt.engines import choose_engine, engines_for
from metis_rt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NOISY = ROOT / "examples" / "speech_noisy.wav"
ALL_USABLE = {"deepfilternet3": None, "rnnoise": None}
MISSING = ["metis_base/model.safetensors"]


def choose(requested="auto", task="se", missing=(), device=None, cuda=False, status=ALL_USABLE, **kw):
    return choose_engine(requested, task, lambda: list(missing), device=device, cuda=cuda, status=lambda: status, **kw)


def test_auto_runs_metis_with_weights_and_cuda_or_an_explicit_device():
    assert (choose(cuda=True).engine, choose(cuda=True).device) == ("metis", "cuda")
    assert (choose(device="cpu").engine, choose(device="cpu").device) == ("metis", "cpu")
    assert choose(metis_options=True).engine == "metis"


def test_auto_denoises_on_the_cpu_without_weights_or_cuda_and_says_so_in_one_line():
    for kwargs, why in [({"missing": MISSING}, "weights missing"), ({"cuda": False}, "no CUDA device")]:
        choice = choose(**kwargs)
        assert choice.engine == "deepfilternet3" and choice.device is None
        assert why in choice.note and "metis-rt download --tasks se" in choice.note and "\n" not in choice.note
    assert choose(missing=MISSING, cuda=True, device="cuda").engine == "deepfilternet3"  # files first
    assert choose(missing=MISSING, status={"deepfilternet3": "no wheel", "rnnoise": None}).engine == "rnnoise"


def test_auto_without_any_engine_says_why_each_cannot_run():
    with pytest.raises(EngineUnavailable, match="no wheel.*missing lib|Metis: no CUDA"):
        choose(status={"deepfilternet3": "no wheel", "rnnoise": "missing lib"})


@pytest.mark.parametrize("task", ["tse", "vc", "tts"])
def test_other_tasks_are_metis_only(task):
    assert choose(task=task, missing=MISSING).engine == "metis"  # the Metis path then names the missing files
    assert choose(task=task).note == f"engine: metis on the CPU for {task} (slow, not real time)"
    with pytest.raises(ConfigError, match="only denoises"):
        choose("deepfilternet3", task=task)
    assert engines_for(task) == ("metis",)


def test_explicit_choices():
    assert choose("metis", missing=MISSING).engine == "metis"
    assert choose("rnnoise", cuda=True).engine == "rnnoise"
    with pytest.raises(EngineUnavailable, match="cannot run here: no wheel"):
        choose("deepfilternet3", status={"deepfilternet3": "no wheel", "rnnoise": None})
    with pytest.raises(ConfigError, match="unknown engine"):
        choose("dfn4")


def _cli(*args, model_dir: Path):
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "METIS_RT_MODEL_DIR": str(model_dir), "PATH": "/usr/bin"}
    return subprocess.run(
        [sys.executable, "-m", "metis_rt", *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT
    )


def test_readme_command_without_weights_denoises_with_deepfilternet3(tmp_path):
    from metis_rt.denoisers import open_denoiser
    from metis_rt.streaming.frame_session import denoise

    out = tmp_path / "out" / "enhanced.wav"
    out.parent.mkdir()
    proc = _cli("process", "--task", "se", NOISY, "-o", out, model_dir=tmp_path / "no-weights")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("engine: deepfilternet3") == 1 and "metis-rt download" in proc.stderr
    y, rate = sf.read(out, dtype="float32")
    x, in_rate = sf.read(NOISY, dtype="float32")
    assert rate == in_rate and len(y) == len(x)
    expected = denoise(open_denoiser("deepfilternet3"), x, rate)
    np.testing.assert_allclose(y, expected, atol=1 / 2**15)  # the file's sample format
    assert float(np.abs(y - x).max()) > 0.05  # it is not the input


def test_tse_without_weights_names_the_missing_files(tmp_path):
    out = tmp_path / "x.wav"
    (tmp_path / "no-weights").mkdir()  # an existing but empty directory: every missing file is named
    proc = _cli("process", "--task", "tse", NOISY, "--reference", NOISY, "-o", out, model_dir=tmp_path / "no-weights")
    assert proc.returncode == 2
    assert "metis_tse" in proc.stderr and "metis-rt download --tasks tse" in proc.stderr
    assert not out.exists()


def test_bridge_without_server_or_local_looks_for_a_server_on_loopback_first():
    import socket

    from metis_rt.bridge.main import build_parser, server_reachable

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert server_reachable(f"ws://127.0.0.1:{port}")
    assert not server_reachable(f"ws://127.0.0.1:{port}")  # closed now: the bridge processes locally
    args = build_parser().parse_args([])
    assert args.server is None and not args.local and args.engine == "auto"


def test_mqtt_set_strength_is_checked_and_becomes_a_session_update():
    from metis_rt.control.commands import CommandError, SetStrength, parse_command
    from metis_rt.server.mqtt import update_from_command

    assert parse_command("strength", b"12.5") == SetStrength(12.5)
    assert parse_command("strength", b"0") == SetStrength(0.0)
    assert update_from_command(SetStrength(12.5)).options == {"strength": 12.5}
    for bad in (b"150", b"-1", b"true", b"loud", b"NaN"):
        with pytest.raises(CommandError, match="strength got"):
            parse_command("strength", bad)


def test_eval_engine_keeps_that_engines_systems_and_the_unprocessed_row():
    from types import SimpleNamespace

    from metis_rt.eval.runner import engine_systems

    systems = [SimpleNamespace(name=n) for n in ("unprocessed", "rnnoise", "deepfilternet3", "deepfilternet3-stream")]
    names = lambda e: [s.name for s in engine_systems(systems, e)]  # noqa: E731
    assert names("auto") == ["unprocessed", "rnnoise", "deepfilternet3", "deepfilternet3-stream"]
    assert names("deepfilternet3") == ["unprocessed", "deepfilternet3", "deepfilternet3-stream"]
    with pytest.raises(ConfigError, match="metis systems need --model-dir"):
        engine_systems(systems, "metis")
