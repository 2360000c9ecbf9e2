"""The `metis-rt` command line on the reference vector directories (tiny models laid out like the official repos)."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from metis_rt.cli import main

from .conftest import EXAMPLES_DIR

SOURCE = EXAMPLES_DIR / "speech_noisy.wav"
REFERENCE = EXAMPLES_DIR / "reference.wav"


def _run_cli(*args):
    """The installed console command, exactly as a user (and the README) runs it."""
    return subprocess.run(
        [sys.executable, "-m", "metis_rt", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def test_parity_passes_on_se_tse_vc(parity_dir):
    proc = _run_cli("parity", parity_dir / "se", parity_dir / "tse", parity_dir / "vc")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("==")]
    checks = lines[:-1]
    assert len(checks) == 19 + 18 + 18
    assert all(" ok max_abs_err=" in ln for ln in checks), [ln for ln in checks if " ok " not in ln]
    assert lines[-1] == "55 ok, 0 failed, 0 unsupported"


def test_parity_passes_every_tts_omni_and_l2s_check(parity_dir, capsys):
    dirs = [str(parity_dir / d) for d in ("tts", "omni", "l2s")]
    assert main(["parity", "--strict", *dirs]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    checks = [ln for ln in lines if not ln.startswith("==") and " ok, " not in ln]
    assert len(checks) == 6 + 8 + 5
    assert all(" ok max_abs_err=" in ln for ln in checks), [ln for ln in checks if " ok " not in ln]
    assert "g2p_en ok max_abs_err=0.000e+00  [30 cases exact]" in lines
    assert lines[-1] == "19 ok, 0 failed, 0 unsupported"


def test_parity_rejects_a_directory_without_manifest(tmp_path, capsys):
    assert main(["parity", str(tmp_path)]) == 2
    assert "no cases/manifest.json" in capsys.readouterr().err


def test_parity_takes_the_readme_glob_and_the_parent_folder(parity_dir):
    """`metis-rt parity tests/data/parity/*` also matches README.md (skipped); the parent folder names them all."""
    from metis_rt.parity import vector_dirs

    tasks = ["l2s", "omni", "se", "tse", "tts", "vc"]
    assert vector_dirs([parity_dir]) == [parity_dir / t for t in tasks]
    assert vector_dirs(sorted(parity_dir.iterdir())) == [parity_dir / t for t in tasks]
    assert (parity_dir / "README.md").is_file()


def test_process_se_readme_example(parity_dir, tmp_path):
    out = tmp_path / "enhanced.wav"
    proc = _run_cli("process", "--task", "se", SOURCE, "-o", out, "--model-dir", parity_dir / "se", "--deterministic")
    assert proc.returncode == 0, proc.stderr
    wav, sr = sf.read(out)
    assert sr == 24000 and wav.ndim == 1 and np.isfinite(wav).all()
    in_s = sf.info(SOURCE).duration
    assert abs(len(wav) / sr - in_s) < 0.03  # one 20 ms frame at most


@pytest.mark.parametrize("task", ["tse", "vc"])
def test_process_with_reference_is_reproducible(parity_dir, tmp_path, task):
    outs = []
    for i in range(2):
        out = tmp_path / f"{task}{i}.flac"
        args = [
            "process",
            "--task",
            task,
            str(SOURCE),
            "--reference",
            str(REFERENCE),
            "-o",
            str(out),
            "--model-dir",
            str(parity_dir / task),
            "--seed",
            "5",
            "--no-progress",
        ]
        assert main(args) == 0
        outs.append(sf.read(out)[0])
    assert np.array_equal(outs[0], outs[1])
    assert outs[0].std() > 0


def test_process_long_input_in_segments(parity_dir, tmp_path):
    src, sr = sf.read(SOURCE)
    long_in = tmp_path / "long.wav"
    sf.write(long_in, np.tile(src, 3), sr)
    out = tmp_path / "out.wav"
    args = [
        "process",
        "--task",
        "se",
        str(long_in),
        "-o",
        str(out),
        "--model-dir",
        str(parity_dir / "se"),
        "--deterministic",
        "--max-segment-s",
        "5",
        "--stage1-steps",
        "2",
        "--s2a-steps",
        "4,2,1,1,1,1,1,1,1,1,1,1",
    ]
    assert main(args) == 0
    assert abs(sf.info(out).duration - 3 * len(src) / sr) < 0.1


def _write(path, x, sr=16000):
    sf.write(path, x, sr, subtype="FLOAT")
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("nan", "NaN"),
        ("silent", "silent"),
        ("short", "too short"),
        ("no_reference", "needs --reference"),
        ("bad_extension", "use one of the extensions"),
        ("no_models", "metis-rt download --tasks se"),
        ("not_audio", "cannot read audio file"),
    ],
)
def test_process_bad_input_gets_a_clear_error_and_writes_nothing(parity_dir, tmp_path, capsys, case, message):
    rng = np.random.default_rng(0)
    speech = 0.3 * rng.standard_normal(16000 * 2)
    src, task, out, model_dir = SOURCE, "se", tmp_path / "out.wav", parity_dir / "se"
    if case == "nan":
        speech[100] = np.nan
        src = _write(tmp_path / "nan.wav", speech)
    elif case == "silent":
        src = _write(tmp_path / "silent.wav", np.zeros(32000))
    elif case == "short":
        src = _write(tmp_path / "short.wav", speech[:800])
    elif case == "no_reference":
        task, model_dir = "tse", parity_dir / "tse"
    elif case == "bad_extension":
        out = tmp_path / "out.mp4"
    elif case == "no_models":
        model_dir = tmp_path / "empty"
    elif case == "not_audio":
        src = tmp_path / "notes.wav"
        src.write_text("not audio")
    engine = ["--engine", "metis"] if case == "no_models" else []  # auto would denoise on the CPU instead
    code = main(["process", "--task", task, str(src), "-o", str(out), "--model-dir", str(model_dir), *engine])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command, usage", [("serve", "usage: metis-rt serve"), ("bridge", "usage: metis-rt bridge")])
def test_serve_and_bridge_take_their_own_options(command, usage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])  # options after the subcommand reach its own parser, --help included
    assert exit_info.value.code == 0 and usage in capsys.readouterr().out
    assert main([command, "--rate" if command == "bridge" else "--threads", "0"]) == 2
    assert "error" in capsys.readouterr().err
