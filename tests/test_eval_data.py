"""The evaluation set builder (metis_rt.data): mixing arithmetic, rooms, noises, and the quick build.

The builder tests read real recordings from Debian packages (see docs/evaluation.md for the apt-get line);
without them they fail with the SourceError that names the packages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metis_rt.data import EvalSetError, SourceError, build_eval_set
from metis_rt.data.mixing import (
    active_power,
    apply_rir,
    measure_sir_db,
    measure_snr_db,
    peak_safe_gain,
    scale_interferer_to_sir,
    scale_noise_to_snr,
)
from metis_rt.data.noise import SYNTHETIC_KINDS, coloured_noise, hum, synthetic_noise
from metis_rt.data.plan import make_plan, quick_subset
from metis_rt.data.rir import estimate_rt60, synthetic_rir
from metis_rt.data.sources import check_sources
from metis_rt.data.utterances import trim_to_speech

SR = 16000


def speech_like(rng: np.random.Generator, seconds: float = 4.0) -> np.ndarray:
    """Bursts of modulated tones separated by silences: active and inactive frames, like speech."""
    t = np.arange(round(seconds * SR)) / SR
    bursts = (np.sin(2 * np.pi * 2.0 * t) > 0.2).astype(float)
    return (0.1 * bursts * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * rng.standard_normal(t.size))).astype(np.float32)


def slope_db_per_octave(x: np.ndarray, lo_hz: float = 100.0, hi_hz: float = 6000.0, seg: int = 4096) -> float:
    """Least-squares slope of a Welch power spectrum against log2(frequency)."""
    frames = x[: x.size // seg * seg].reshape(-1, seg) * np.hanning(seg)
    power = np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)
    freqs = np.fft.rfftfreq(seg, 1.0 / SR)
    band = (freqs >= lo_hz) & (freqs <= hi_hz)
    return float(np.polyfit(np.log2(freqs[band]), 10 * np.log10(power[band]), 1)[0])


# ----------------------------------------------------------------------------- mixing (pure)
@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.5, 15.0])
def test_noise_scaled_to_exact_snr(snr_db):
    rng = np.random.default_rng(1)
    speech, noise = speech_like(rng), rng.standard_normal(4 * SR).astype(np.float32)
    scaled = scale_noise_to_snr(speech, noise, snr_db, SR)
    assert abs(measure_snr_db(speech, scaled, SR) - snr_db) < 0.1


def test_snr_uses_active_speech_only():
    """Half a sine and half silence: the speech level is that of the sine, pauses do not dilute it."""
    t = np.arange(2 * SR) / SR
    speech = np.where(t < 1.0, 0.5 * np.sin(2 * np.pi * 300 * t), 0.0)
    assert active_power(speech, SR) == pytest.approx(0.125, rel=0.01)
    noise = scale_noise_to_snr(speech, np.random.default_rng(2).standard_normal(speech.size), 10.0, SR)
    assert 10 * np.log10(0.125 / np.mean(noise**2)) == pytest.approx(10.0, abs=0.1)


@pytest.mark.parametrize("sir_db", [0.0, 5.0])
def test_interferer_scaled_to_exact_sir(sir_db):
    rng = np.random.default_rng(3)
    target, other = speech_like(rng), 3.0 * speech_like(rng)
    assert abs(measure_sir_db(target, scale_interferer_to_sir(target, other, sir_db, SR), SR) - sir_db) < 0.1


def test_peak_safe_gain_prevents_clipping():
    loud = np.array([0.5, -2.0, 1.0])
    assert np.max(np.abs(loud * peak_safe_gain(loud))) == pytest.approx(0.99)
    assert peak_safe_gain(np.array([0.1, -0.5])) == 1.0


def test_apply_rir_keeps_length_and_alignment():
    x = np.random.default_rng(4).standard_normal(SR).astype(np.float32)
    np.testing.assert_allclose(apply_rir(x, np.array([1.0], dtype=np.float32)), x, atol=1e-5)
    delayed = apply_rir(x, np.array([0.0, 0.0, 1.0], dtype=np.float32))
    assert delayed.shape == x.shape
    np.testing.assert_allclose(delayed[2:], x[:-2], atol=1e-5)


# ----------------------------------------------------------------------------- rooms
@pytest.mark.parametrize("rt60_s", [0.3, 0.6, 0.9])
def test_rir_has_requested_rt60_and_direct_path(rt60_s):
    rir = synthetic_rir(np.random.default_rng(5), SR, rt60_s, drr_db=3.0)
    assert rir[0] == 1.0 and int(np.argmax(np.abs(rir))) == 0
    assert estimate_rt60(rir, SR) == pytest.approx(rt60_s, rel=0.1)
    assert 10 * np.log10(1.0 / np.sum(rir[1:].astype(np.float64) ** 2)) == pytest.approx(3.0, abs=0.05)


# ----------------------------------------------------------------------------- noises
@pytest.mark.parametrize(("slope", "expected"), [(0.0, 0.0), (-10 * np.log10(2), -3.0), (-20 * np.log10(2), -6.0)])
def test_coloured_noise_spectral_slope(slope, expected):
    x = coloured_noise(np.random.default_rng(6), 8 * SR, SR, slope)
    assert slope_db_per_octave(x) == pytest.approx(expected, abs=0.3)


@pytest.mark.parametrize("mains_hz", [50.0, 60.0])
def test_hum_fundamental(mains_hz):
    x = hum(np.random.default_rng(7), 4 * SR, SR, mains_hz)
    spectrum = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(x.size, 1.0 / SR)
    assert freqs[np.argmax(spectrum)] == pytest.approx(mains_hz, abs=0.5)


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_synthetic_noise_is_seeded_and_unit_power(kind):
    a, params = synthetic_noise(kind, np.random.default_rng(8), SR, SR)
    b, _ = synthetic_noise(kind, np.random.default_rng(8), SR, SR)
    assert a.dtype == np.float32 and a.shape == (SR,) and np.array_equal(a, b)
    assert np.mean(a.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-3)
    assert isinstance(params, dict)


def test_trim_to_speech_keeps_the_speech_and_a_margin():
    speech = 0.3 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)
    clip = trim_to_speech(np.concatenate([np.zeros(SR), speech, np.zeros(SR)]).astype(np.float32))
    assert SR <= clip.size <= SR + round(0.15 * SR)
    assert trim_to_speech(np.zeros(SR, dtype=np.float32)) is None


# ----------------------------------------------------------------------------- plan (pure)
def test_plan_composition_and_quick_subset():
    plan = make_plan(0)
    assert (sum(2 * len(s.snrs_db) for s in plan.se), len(plan.tse), len(plan.vc)) == (180, 36, 18)
    quick = quick_subset(plan)
    assert (sum(2 * len(s.snrs_db) for s in quick.se), len(quick.tse), len(quick.vc)) == (8, 2, 2)
    for item in plan.tse:
        assert item.interferer.speaker != item.target.speaker and item.enrollment != item.target
    for item in plan.vc:
        assert item.reference.speaker != item.source.speaker
    assert make_plan(0) == plan and make_plan(1) != plan


# ----------------------------------------------------------------------------- the builder
def build(out_dir: Path, seed: int) -> dict:
    try:
        return build_eval_set(out_dir, seed=seed, quick=True, progress=False)
    except SourceError as exc:
        pytest.fail(f"the evaluation set's Debian sources are missing here:\n{exc}")


@pytest.fixture(scope="module")
def quick_builds(tmp_path_factory) -> dict[str, Path]:
    dirs = {name: tmp_path_factory.mktemp(name) for name in ("a", "b", "other_seed")}
    for name, seed in (("a", 0), ("b", 0), ("other_seed", 1)):
        build(dirs[name], seed)
    return dirs


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_quick_build_is_deterministic(quick_builds):
    first, second = files_of(quick_builds["a"]), files_of(quick_builds["b"])
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    other = files_of(quick_builds["other_seed"])
    assert other["manifest.json"] != first["manifest.json"]
    assert any(other.get(name) not in (None, data) for name, data in first.items() if name.endswith(".wav"))


def test_manifest_references_existing_16k_files(quick_builds):
    root = quick_builds["a"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert (manifest["version"], manifest["sample_rate"], manifest["seed"]) == (1, 16000, 0)
    assert all(set(s) >= {"name", "package", "version", "path", "licence"} for s in manifest["sources"])
    assert {i["task"] for i in manifest["items"]} == {"se", "tse", "vc"} and len(manifest["items"]) == 12
    assert {i["split"] for i in manifest["items"]} == {"test", "heldout"}
    listed = set()
    for item in manifest["items"]:
        assert item["clean"] is not None if item["task"] in ("se", "tse") else item["clean"] is None
        assert item["enrollment"] is not None if item["task"] in ("tse", "vc") else item["enrollment"] is None
        for key in ("input", "clean", "enrollment"):
            if item[key] is not None:
                info = sf.info(root / item[key])
                assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
                listed.add(item[key])
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.wav")}
    assert on_disk == listed  # no stray files


def test_written_se_items_have_their_snr(quick_builds):
    root = quick_builds["a"]
    manifest = json.loads((root / "manifest.json").read_text())
    for item in manifest["items"]:
        if item["task"] == "se" and not item["condition"]["reverb"]:
            noisy, _ = sf.read(root / item["input"])
            clean, _ = sf.read(root / item["clean"])
            assert measure_snr_db(clean, noisy - clean, SR) == pytest.approx(item["condition"]["snr_db"], abs=0.1)


def test_quick_items_equal_the_full_sets(quick_builds, tmp_path):
    manifest = build_eval_set(tmp_path, seed=0, quick=False, progress=False)
    assert len(manifest["items"]) == 234
    quick = files_of(quick_builds["a"])
    full = files_of(tmp_path)
    assert all(full[name] == data for name, data in quick.items() if name.endswith(".wav"))


def test_rebuild_replaces_an_earlier_build_and_refuses_foreign_folders(quick_builds, tmp_path):
    build(tmp_path, seed=1)
    build(tmp_path, seed=0)
    assert files_of(tmp_path) == files_of(quick_builds["a"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(EvalSetError, match="not empty"):
        build_eval_set(foreign, quick=True, progress=False)


def test_missing_sources_name_the_packages(tmp_path):
    empty_root = tmp_path / "root"
    empty_root.mkdir()
    with pytest.raises(SourceError) as info:
        build_eval_set(tmp_path / "out", quick=True, progress=False, root=empty_root)
    message = str(info.value)
    assert "asterisk-core-sounds-en-g722" in message and "fillets-ng-data-cs" in message
    assert "apt-get install -y --no-install-recommends" in message
    assert not (tmp_path / "out").exists()


def test_one_missing_package_of_a_shared_folder_is_named(tmp_path):
    """Both Fish Fillets packs install into one folder: the Dutch one is missing although the folder exists."""
    czech = tmp_path / "usr/share/games/fillets-ng/sound/level/cs/lvl-m-line.ogg"
    czech.parent.mkdir(parents=True)
    czech.write_bytes(b"")
    with pytest.raises(SourceError) as info:
        check_sources(["fillets-cs", "fillets-nl"], root=tmp_path)
    assert "fillets-ng-data-nl" in str(info.value) and "fillets-ng-data-cs" not in str(info.value)
