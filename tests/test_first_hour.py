"""A new user's first hour: partial model directories, a mistyped --model-dir, a port in use, inputs checked
before the model stack is imported. Real files, real sockets on loopback, the tiny models of tests/data/parity."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from metis_rt.cli import main
from metis_rt.errors import MissingWeightsError
from metis_rt.models import hub
from metis_rt.server import main as server_main

REPO = Path(__file__).resolve().parents[1]


def _serve_args(*extra: str) -> list[str]:
    return ["--port", "0", "--deterministic", *extra]


def test_serve_runs_the_tasks_a_partial_model_dir_holds_and_says_how_to_get_the_rest(parity_dir, caplog):
    args = server_main.build_parser().parse_args(_serve_args("--model-dir", str(parity_dir / "se")))
    with caplog.at_level(logging.WARNING):
        server = server_main.build_server(args)  # default --tasks se,tse,vc; the folder holds only SE
    assert server.tasks == ("se",)
    note = " ".join(r.getMessage() for r in caplog.records)
    assert "running se only" in note and "tse, vc" in note
    assert f"metis-rt download --tasks tse,vc --model-dir {parity_dir / 'se'}" in note


def test_serve_fails_only_when_no_task_is_present(parity_dir):
    args = server_main.build_parser().parse_args(_serve_args("--model-dir", str(parity_dir / "se"), "--tasks", "vc"))
    with pytest.raises(MissingWeightsError, match="metis-rt download --tasks vc"):
        server_main.build_server(args)


def test_a_mistyped_model_dir_is_named_as_missing(tmp_path, capsys):
    typo = tmp_path / "modles"
    assert server_main.main(_serve_args("--model-dir", str(typo))) == 2
    err = capsys.readouterr().err
    assert f"model directory '{typo}' does not exist; check --model-dir" in err
    assert "lacks" not in err and err.count("\n") == 1  # one line, not a list of 12 files


def test_a_port_in_use_is_reported_in_one_line_before_any_model_loads(parity_dir, monkeypatch, capsys):
    import metis_rt.pipeline.components as components

    def no_loading(*args, **kwargs):
        raise AssertionError("models were loaded before the port was checked")

    monkeypatch.setattr(components, "load_components", no_loading)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = server_main.main(["--port", str(port), "--model-dir", str(parity_dir / "se"), "--tasks", "se"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is already in use" in err


def test_eval_models_cover_the_tasks_the_directory_holds(parity_dir, caplog):
    from metis_rt.eval.systems import MetisModels

    with caplog.at_level(logging.WARNING):
        models = MetisModels(parity_dir / "tse", ["se", "tse", "vc"])
    assert models.tasks == ("tse",)
    assert "metis-rt download --tasks se,vc" in caplog.text
    with pytest.raises(MissingWeightsError):
        MetisModels(parity_dir / "tse", ["vc"])


def test_task_availability_names_missing_download_targets(parity_dir):
    avail = hub.task_availability(parity_dir / "omni", ["se", "tts"], targets_of=lambda t: ["omni"])
    assert avail.present == ("se", "tts") and not avail.missing
    avail = hub.task_availability(parity_dir / "omni", ["se", "tts"])
    assert avail.present == () and set(avail.missing) == {"se", "tts"}


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_input", "does not exist"),
        ("missing_reference", "does not exist"),
        ("unreadable_input", "cannot read"),
        ("bad_output", "use one of the extensions"),
        ("missing_model_dir", "model directory"),
    ],
)
def test_process_reports_bad_inputs_without_importing_the_model_stack(tmp_path, case, message):
    good = REPO / "examples" / "speech_noisy.wav"
    src, ref, out, task = good, None, tmp_path / "out.wav", "se"
    if case == "missing_input":
        src = tmp_path / "nope.wav"
    elif case == "missing_reference":
        task, ref = "tse", tmp_path / "nobody.wav"
    elif case == "unreadable_input":
        src = tmp_path / "text.wav"
        src.write_text("not audio")
    elif case == "bad_output":
        out = tmp_path / "out.mp4"
    model_dir = tmp_path / ("no_such_folder" if case == "missing_model_dir" else "")
    argv = ["process", "--task", task, str(src), "-o", str(out), "--model-dir", str(model_dir)]
    if ref is not None:
        argv += ["--reference", str(ref)]
    code = (
        "import sys; from metis_rt.cli import main; rc = main(sys.argv[1:]); "
        "print('heavy:', sorted(m for m in ('torch', 'transformers') if m in sys.modules)); sys.exit(rc)"
    )
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr
    assert "heavy: []" in run.stdout  # neither torch nor transformers was imported to say so


def test_clipping_error_speaks_the_cli_flag_on_the_command_line(parity_dir, tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    from metis_rt.audio.files import validate_speech
    from metis_rt.errors import AudioInputError

    rng = np.random.default_rng(0)
    clipped = np.clip(3.0 * rng.standard_normal(48000), -1.0, 1.0).astype(np.float32)
    with pytest.raises(AudioInputError) as info:
        validate_speech(clipped, 16000)
    assert "allow_clipped=True" in str(info.value) and "--allow-clipped" not in str(info.value)

    src = tmp_path / "clipped.wav"
    sf.write(src, clipped, 16000, subtype="FLOAT")
    out = tmp_path / "o.wav"
    assert main(["process", "--task", "se", str(src), "-o", str(out), "--model-dir", str(parity_dir / "se")]) == 2
    err = capsys.readouterr().err
    assert "--allow-clipped" in err and "allow_clipped=True" not in err
