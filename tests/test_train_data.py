"""The training data pipeline (metis_rt.train): clean speech rendered deterministically, degraded on the fly.

The builder tests run the real TTS engines and read real recordings from Debian packages (espeak-ng, flite,
festival and its voices, ktuberling-data; see docs/training.md); without them they fail with the
TrainDataError that names the packages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metis_rt.audio.files import resample
from metis_rt.data.catalog import HELDOUT_SPEAKERS
from metis_rt.data.mixing import measure_sir_db, measure_snr_db
from metis_rt.train import degrade, timbre
from metis_rt.train.corpus import MANIFEST_NAME, STORE_RATE, build_train_set
from metis_rt.train.data import TrainingExamples, describe
from metis_rt.train.example import Example
from metis_rt.train.recordings import (
    EVALUATION_DIRS,
    EVALUATION_SPEAKERS,
    check_not_evaluation,
    recorded_speakers,
    recorded_utterances,
)
from metis_rt.train.sources import TrainDataError
from metis_rt.train.texts import split_sentences
from metis_rt.train.voices import synthesize, tts_voices

SR = 16000
TINY = {"minutes": 0.5, "sources": ("espeak-ng", "flite"), "progress": False}  # 6 utterances, 2 voices
NO_EXTRAS = degrade.DegradeConfig(reverb_prob=0.0, band_limit_prob=0.0, clip_prob=0.0, tse_noise_prob=0.0)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def speech_like(rng: np.random.Generator, seconds: float = 3.0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    bursts = (np.sin(2 * np.pi * 2.0 * t) > 0.2).astype(float)
    return (0.1 * bursts * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * rng.standard_normal(t.size))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "set"
    build_train_set(out, seed=0, **TINY)
    return out


# ----------------------------------------------------------------------------- builder
def test_builder_is_deterministic(tiny_set, tmp_path):
    again = build_train_set(tmp_path / "again", seed=0, **TINY).parent
    other = build_train_set(tmp_path / "other", seed=1, **TINY).parent
    first = tree_bytes(tiny_set)
    assert first == tree_bytes(again)
    assert len(first) == 7  # 6 utterances and the manifest
    assert first[MANIFEST_NAME] != tree_bytes(other)[MANIFEST_NAME]


def test_manifest_lists_sources_licences_and_no_evaluation_speaker(tiny_set):
    manifest = json.loads((tiny_set / MANIFEST_NAME).read_text())
    assert manifest["text"]["licence"].startswith("public domain")
    assert {s["name"] for s in manifest["sources"]} == {"espeak-ng", "flite"}
    assert all(s["licence"] and s["packages"] for s in manifest["sources"])
    speakers = {u["speaker"] for u in manifest["utterances"]}
    assert len(speakers) == 2 and not speakers & EVALUATION_SPEAKERS and not speakers & set(HELDOUT_SPEAKERS)
    assert set(manifest["excluded"]["speakers"]) == EVALUATION_SPEAKERS
    for utt in manifest["utterances"]:
        assert utt["text"] and utt["split"] in ("train", "valid") and utt["samples"] % 3 == 0
        assert (tiny_set / utt["path"]).is_file()
    assert describe(tiny_set)["train"]["utterances"] == 6


def test_evaluation_speakers_and_files_are_refused():
    with pytest.raises(TrainDataError, match="allison"):
        check_not_evaluation(["espeak-en-us+m3", "allison"], [])
    with pytest.raises(TrainDataError):
        check_not_evaluation([], [f"{EVALUATION_DIRS[0]}/x.g722"])


def test_recorded_speakers_are_not_evaluation_speakers():
    speakers = recorded_speakers()
    assert not {s.id for s in speakers} & EVALUATION_SPEAKERS
    english = next(s for s in speakers if s.language == "en")
    (audio, files), *_ = recorded_utterances(english, seed=0, count=1, sr=STORE_RATE)
    assert audio.size >= 2 * STORE_RATE and files and all(f.startswith("/usr/share/ktuberling/") for f in files)


@pytest.mark.parametrize("engine", ["espeak-ng", "flite", "festival"])
def test_each_engine_reads_a_sentence(engine):
    voice = tts_voices([engine])[0]
    ((audio, sr),) = synthesize(voice, ['Alice said "hello" to the rabbit.'], [1.0])
    assert sr >= SR and audio.size > 0.5 * sr and np.max(np.abs(audio)) > 0.01


def test_missing_tool_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TrainDataError, match=r"apt-get install .*flite") as info:
        build_train_set(tmp_path / "set", seed=0, **TINY)
    assert "espeak-ng" in str(info.value) and not (tmp_path / "set").exists()


def test_missing_data_package_names_it(tmp_path):
    with pytest.raises(TrainDataError, match="ktuberling-data"):
        build_train_set(tmp_path / "set", minutes=0.5, sources=("ktuberling",), progress=False, root=tmp_path)


def test_sentences_are_cleaned_and_cut():
    text = "  CHAPTER I\n`Oh dear!  I shall be late!'  (when she thought it over) the WAISTCOAT-\nPOCKET was gone."
    assert split_sentences(text) == [
        "Oh dear! I shall be late!",
        "When she thought it over the waistcoat-pocket was gone.",
    ]
    long = split_sentences("`I shall be VERY late--' said the Rabbit, " + "and then, " * 20 + "it ran away from her.")
    assert long[0].startswith("I shall be very late, said the Rabbit, and then,") and len(long) == 3
    assert all(5 <= len(s.split()) <= 24 and s[-1] == "." for s in long)


# ----------------------------------------------------------------------------- examples
def test_examples_are_deterministic_and_change_with_the_epoch(tiny_set):
    mix = {"se": 1.0, "tse": 1.0, "vc": 1.0, "clean": 1.0}
    a, b = list(TrainingExamples(tiny_set, mix, seed=3)), list(TrainingExamples(tiny_set, mix, seed=3))
    assert len(a) == 6
    for x, y in zip(a, b, strict=True):
        assert x.task == y.task and x.meta == y.meta
        assert np.array_equal(x.degraded_16k, y.degraded_16k) and np.array_equal(x.clean_24k, y.clean_24k)
    later = TrainingExamples(tiny_set, mix, seed=3, epoch=1)
    assert [x.meta["utterance"] for x in a] != [x.meta["utterance"] for x in later] or any(
        not np.array_equal(x.degraded_16k, y.degraded_16k) for x, y in zip(a, later, strict=True)
    )


def test_example_shapes_and_rates_match_the_contract(tiny_set):
    examples = TrainingExamples(tiny_set, {"tse": 1.0, "vc": 1.0}, seed=0, segment_s=2.0, reference_s=1.5)
    for ex in examples:
        assert isinstance(ex, Example) and ex.clean_16k.shape == ex.degraded_16k.shape == (2 * SR,)
        assert ex.clean_24k.shape == (3 * SR,) and ex.reference_16k.shape == (round(1.5 * SR),)
        assert ex.reference_24k.size == ex.reference_16k.size * 3 // 2
        assert all(x.dtype == np.float32 for x in (ex.clean_16k, ex.clean_24k, ex.degraded_16k, ex.reference_16k))
        n = ex.meta["speech_samples_16k"]  # the 24 kHz target is the same speech as the 16 kHz one
        back = resample(ex.clean_24k[: n * 3 // 2], STORE_RATE, SR)[:n]
        assert np.corrcoef(back, ex.clean_16k[:n])[0, 1] > 0.99


def test_se_examples_have_the_drawn_snr(tiny_set):
    for ex in TrainingExamples(tiny_set, "se", seed=5, degradation=NO_EXTRAS):
        noise = ex.degraded_16k - ex.clean_16k
        assert abs(measure_snr_db(ex.clean_16k, noise, SR) - ex.meta["snr_db"]) < 0.5, ex.meta


def test_tse_examples_mix_another_speaker_with_an_enrollment_of_the_target(tiny_set):
    manifest = {u["id"]: u for u in json.loads((tiny_set / MANIFEST_NAME).read_text())["utterances"]}
    for ex in TrainingExamples(tiny_set, "tse", seed=2, degradation=NO_EXTRAS):
        assert ex.meta["reference"] != ex.meta["utterance"]
        assert manifest[ex.meta["reference"]]["speaker"] == ex.speaker != ex.meta["interferer_speaker"]
        assert manifest[ex.meta["interferer"]]["speaker"] == ex.meta["interferer_speaker"]
        n = ex.meta["speech_samples_16k"]
        interference = (ex.degraded_16k - ex.clean_16k)[:n]
        assert abs(measure_sir_db(ex.clean_16k[:n], interference, SR) - ex.meta["sir_db"]) < 0.5


def test_vc_and_clean_examples(tiny_set):
    for ex in TrainingExamples(tiny_set, "vc", seed=0, vc_reference="other-speaker", vc_timbre=None):
        assert ex.meta["reference_speaker"] != ex.speaker and np.array_equal(ex.degraded_16k, ex.clean_16k)
    for ex in TrainingExamples(tiny_set, "vc", seed=0):  # the default: self-reconstruction, perturbed timbre
        assert ex.meta["reference_speaker"] == ex.speaker and ex.meta["reference"] != ex.meta["utterance"]
        assert ex.degraded_16k.shape == ex.clean_16k.shape and not np.allclose(ex.degraded_16k, ex.clean_16k)
        assert 0.85 <= ex.meta["timbre"]["alpha"] <= 1.18
    for ex in TrainingExamples(tiny_set, "clean", seed=0):
        assert ex.reference_16k is None and np.array_equal(ex.degraded_16k, ex.clean_16k)


# ----------------------------------------------------------------------------- degradation (pure)
def spectral_centroid_hz(x: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    return float((np.fft.rfftfreq(x.size, 1 / SR) * power).sum() / power.sum())


def frame_energy_db(x: np.ndarray, frame: int = 320) -> np.ndarray:
    n = x.size // frame
    return 10 * np.log10(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-10)


def vowel_like(seconds: float = 3.0) -> np.ndarray:
    """Syllable bursts of a 150 Hz harmonic tone with one formant-like peak at 700 Hz."""
    t = np.arange(round(seconds * SR)) / SR
    bursts = (np.sin(2 * np.pi * 2.0 * t) > 0.2).astype(float)
    harmonics = [np.exp(-(((h * 150 - 700) / 400) ** 2)) * np.sin(2 * np.pi * h * 150 * t) for h in range(1, 40)]
    return (0.1 * bursts * np.sum(harmonics, axis=0)).astype(np.float32)


def pitch_lag(x: np.ndarray) -> int:
    """Lag (samples) of the autocorrelation peak between 60 and 400 Hz."""
    seg = x[: SR // 2]
    ac = np.correlate(seg, seg, mode="full")[seg.size - 1 :]
    return int(np.argmax(ac[SR // 400 : SR // 60]) + SR // 400)


@pytest.mark.parametrize("alpha", [0.85, 1.18])
def test_timbre_warp_moves_the_spectrum_and_keeps_the_timing(alpha):
    x = vowel_like()
    flat = {"alpha": alpha, "eq_centres_hz": [1000.0], "eq_gains_db": [0.0]}
    y = timbre.apply(x, flat)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-4)
    ratio = spectral_centroid_hz(y) / spectral_centroid_hz(x)
    assert (ratio > 1.05) if alpha > 1 else (ratio < 0.96), ratio  # the formant moves with alpha
    assert np.corrcoef(frame_energy_db(x), frame_energy_db(y))[0, 1] > 0.99  # same syllables at the same times
    assert pitch_lag(y) == pitch_lag(x)  # the harmonics (the pitch) stay
    assert np.allclose(timbre.apply(x, {**flat, "alpha": 1.0}), x, atol=1e-4)  # identity warp, flat EQ


def test_timbre_draws_are_seeded_and_the_eq_has_the_drawn_gains():
    cfg = timbre.TimbreConfig()
    a, b = timbre.draw(np.random.default_rng(3), cfg), timbre.draw(np.random.default_rng(3), cfg)
    assert a == b and len(a["eq_gains_db"]) == cfg.eq_bands
    assert timbre.draw(np.random.default_rng(0), timbre.TimbreConfig(prob=0.0)) is None
    curve = timbre.eq_curve({"eq_centres_hz": [1000.0], "eq_gains_db": [6.0]}, 257)
    freqs = np.linspace(0, SR / 2, 257)
    assert 20 * np.log10(curve[np.argmin(abs(freqs - 1000))]) == pytest.approx(6.0, abs=0.1)
    assert 20 * np.log10(curve[np.argmin(abs(freqs - 6000))]) < 0.5


def test_band_limit_clipping_and_reverb_do_what_they_say():
    rng = np.random.default_rng(0)
    clean = speech_like(rng) + 0.02 * rng.standard_normal(3 * SR).astype(np.float32)
    cond = degrade.SeCondition("white", 10.0, 0, 0.6, 3.0, 4000, 0.3, 0.0)
    out = degrade.apply_se(np.random.default_rng(1), clean, cond)
    spectrum = np.abs(np.fft.rfft(out.degraded)) ** 2
    freqs = np.fft.rfftfreq(out.degraded.size, 1 / SR)
    assert spectrum[freqs > 4400].sum() < 1e-3 * spectrum[freqs < 3600].sum()
    assert np.max(np.abs(out.degraded)) <= 0.99 and out.meta["clipped_fraction"] > 0
    assert out.meta["rt60_s"] == 0.6 and out.target_gain > 0
