"""Evaluation metrics and baselines (metis_rt.eval): exact checks on constructed signals, rankings on real speech.

Speech: examples/reference.wav (2.7 s) and examples/speech_noisy.wav (4.3 s), 16 kHz; the ALSA test voice
(/usr/share/sounds/alsa, alsa-utils) where installed. Noise is seeded.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metis_rt.audio.files import resample
from metis_rt.errors import AudioInputError, MetisError
from metis_rt.eval import baselines, metrics
from metis_rt.eval.metrics import METRIC_RATE_HZ, SI_SDR_LIMIT_DB
from tests.conftest import EXAMPLES_DIR

ALSA_DIR = Path("/usr/share/sounds/alsa")
MAX_LAG_SAMPLES = round(metrics.MAX_LAG_MS * METRIC_RATE_HZ / 1000)  # 1600


def read_16k(path: Path) -> np.ndarray:
    x, rate = sf.read(path, dtype="float32")
    return resample(x, rate, METRIC_RATE_HZ).astype(np.float32)


def add_noise(clean: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(clean.shape[0])
    noise *= np.sqrt(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return (clean + noise).astype(np.float32)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return read_16k(EXAMPLES_DIR / "reference.wav")


@pytest.fixture(scope="module")
def noisy(clean) -> np.ndarray:
    return add_noise(clean, snr_db=5.0)


# ----------------------------------------------------------------------------- perfect scores
def test_identical_signals_score_perfectly(clean):
    scores = metrics.compute_metrics(clean, clean=clean)
    assert list(scores) == list(metrics.METRICS)  # every metric applies to SE with a clean reference
    assert scores["si_sdr"] == SI_SDR_LIMIT_DB  # +inf in theory, clipped to a finite ceiling
    assert scores["pesq"] == pytest.approx(4.64, abs=0.01)
    assert scores["stoi"] == pytest.approx(1.0, abs=1e-4)
    assert scores["estoi"] == pytest.approx(1.0, abs=1e-4)
    assert scores["speaker_sim"] == pytest.approx(1.0, abs=1e-4)
    assert scores["wer"] == 0.0
    assert all(1.0 <= scores[name] <= 5.0 for name in metrics.DNSMOS_KEYS)


# ----------------------------------------------------------------------------- SI-SDR
def orthogonal_noise(signal: np.ndarray, seed: int = 1) -> np.ndarray:
    """Zero-mean noise with no component along the zero-mean signal (float64)."""
    s = signal.astype(np.float64) - signal.mean()
    noise = np.random.default_rng(seed).standard_normal(signal.shape[0])
    noise -= noise.mean()
    noise -= (noise @ s) / (s @ s) * s
    return noise - noise.mean()


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 5.0, 20.0])
def test_si_sdr_matches_constructed_value(clean, snr_db):
    s = clean.astype(np.float64) - clean.mean()
    noise = orthogonal_noise(clean)
    noise *= np.sqrt((s @ s) / (noise @ noise) / 10 ** (snr_db / 10))
    # a gain and a DC offset change nothing: SI-SDR is scale-invariant and zero-mean
    estimate = (0.37 * (s + noise) + 0.05).astype(np.float32)
    assert metrics.si_sdr(estimate, clean) == pytest.approx(snr_db, abs=0.1)


def test_si_sdr_matches_projection_for_correlated_noise(clean):
    noise = np.random.default_rng(2).standard_normal(clean.shape[0]) * 0.05 + 0.3 * clean  # partly along the speech
    estimate = (clean + noise).astype(np.float32)
    est, ref = estimate.astype(np.float64), clean.astype(np.float64)
    est, ref = est - est.mean(), ref - ref.mean()
    target = (est @ ref) / (ref @ ref) * ref
    expected = 10 * math.log10((target @ target) / ((est - target) @ (est - target)))
    assert metrics.si_sdr(estimate, clean) == pytest.approx(expected, abs=1e-3)


def test_si_sdr_is_clipped_and_needs_equal_lengths(clean):
    assert metrics.si_sdr(orthogonal_noise(clean).astype(np.float32), clean) == -SI_SDR_LIMIT_DB
    with pytest.raises(AudioInputError, match="align"):
        metrics.si_sdr(clean[:-10], clean)


# ----------------------------------------------------------------------------- align
@pytest.mark.parametrize("delay", [0, 1, 37, 320, MAX_LAG_SAMPLES, -1, -23, -MAX_LAG_SAMPLES])
def test_align_recovers_a_known_delay_exactly(clean, delay):
    if delay >= 0:  # the estimate is late: `delay` zeros before the speech
        estimate = np.concatenate([np.zeros(delay, np.float32), clean, np.ones(50, np.float32)])
    else:  # the estimate is early: its first -delay samples are missing
        estimate = clean[-delay:]
    assert metrics.find_lag(estimate, clean, MAX_LAG_SAMPLES) == delay
    aligned = metrics.align(estimate, clean)
    assert aligned.shape == clean.shape and aligned.dtype == np.float32
    covered = slice(max(-delay, 0), None)
    np.testing.assert_array_equal(aligned[covered], clean[covered])
    assert not aligned[: max(-delay, 0)].any()  # zero where the estimate has no samples


def test_align_pads_short_estimates_and_ignores_silence(clean):
    short = clean[: clean.shape[0] // 2]
    aligned = metrics.align(short, clean)
    np.testing.assert_array_equal(aligned[: short.shape[0]], short)
    assert not aligned[short.shape[0] :].any()
    assert metrics.find_lag(np.zeros_like(clean), clean, MAX_LAG_SAMPLES) == 0
    late = np.concatenate([np.zeros(3 * MAX_LAG_SAMPLES, np.float32), clean])  # beyond the search range
    assert abs(metrics.find_lag(late, clean, MAX_LAG_SAMPLES)) <= MAX_LAG_SAMPLES


# ----------------------------------------------------------------------------- speaker similarity, DNSMOS, WER
def test_speaker_similarity_separates_voices(clean):
    first, second = np.array_split(clean, 2)
    same_voice = metrics.speaker_similarity(first, second)
    # playing the second half 1.25x faster raises pitch and formants: a different-sounding voice, same words
    other_voice = metrics.speaker_similarity(first, resample(second, METRIC_RATE_HZ, round(METRIC_RATE_HZ / 1.25)))
    assert same_voice > 0.75 and same_voice > other_voice + 0.15


@pytest.mark.skipif(not (ALSA_DIR / "Front_Left.wav").is_file(), reason="alsa-utils test sounds not installed")
def test_speaker_similarity_across_recordings(clean):
    front_center, front_left = read_16k(ALSA_DIR / "Front_Center.wav"), read_16k(ALSA_DIR / "Front_Left.wav")
    same_speaker = metrics.speaker_similarity(front_center, front_left)
    other_speaker = metrics.speaker_similarity(front_center, clean)
    assert same_speaker > other_speaker + 0.2


def test_dnsmos_ranks_clean_above_noisy(clean):
    clean_scores = metrics.dnsmos(clean)
    noisy_scores = metrics.dnsmos(add_noise(clean, snr_db=0.0))
    assert set(clean_scores) == set(metrics.DNSMOS_KEYS)
    assert clean_scores["dnsmos_ovrl"] > noisy_scores["dnsmos_ovrl"] + 0.5
    assert clean_scores["dnsmos_bak"] > noisy_scores["dnsmos_bak"] + 1.0


def test_wer_rules():
    assert metrics.wer("My voice  sounds", "my voice sounds") == 0.0
    assert metrics.wer("my voice", "my voice sounds") == pytest.approx(1 / 3)
    assert metrics.wer("", "my voice sounds") == 1.0  # a silent output lost every word
    with pytest.raises(AudioInputError, match="no words"):
        metrics.wer("my voice", "  ")


def test_transcripts_do_not_depend_on_earlier_calls(clean, noisy):
    first = metrics.transcribe(clean)
    metrics.transcribe(noisy)
    assert first and first == first.lower()
    assert metrics.transcribe(clean) == first
    assert metrics.transcribe(np.zeros(METRIC_RATE_HZ, np.float32)) == ""


# ----------------------------------------------------------------------------- compute_metrics: subsets, NaN rule
def test_compute_metrics_selects_by_task_and_subset(clean, noisy):
    se = metrics.compute_metrics(noisy, clean=clean, which=["si_sdr", "stoi"])
    assert list(se) == ["stoi", "si_sdr"]
    assert se["si_sdr"] == pytest.approx(metrics.si_sdr(noisy, clean))
    vc = metrics.compute_metrics(noisy, voice=clean, reference_text="anything", which=metrics.QUICK)
    assert list(vc) == ["speaker_sim", *metrics.DNSMOS_KEYS]  # no intrusive metric without `clean`; WER not quick
    with pytest.raises(MetisError, match="unknown metric"):
        metrics.compute_metrics(noisy, clean=clean, which=["pesq", "mos"])


def test_compute_metrics_gives_nan_for_undefined_inputs(clean):
    silent = metrics.compute_metrics(np.zeros_like(clean), clean=clean, reference_text="my voice sounds")
    assert silent["wer"] == 1.0
    assert all(math.isnan(value) for name, value in silent.items() if name != "wer")
    too_short = metrics.compute_metrics(clean[:1000], clean=clean, which=["pesq", "dnsmos_ovrl"])
    assert all(math.isnan(value) for value in too_short.values()) and len(too_short) == 2
    broken = clean.copy()
    broken[5] = np.nan
    assert all(math.isnan(v) for v in metrics.compute_metrics(broken, clean=clean, which=metrics.QUICK).values())
    with pytest.raises(AudioInputError, match="silent"):
        metrics.pesq_wb(np.zeros_like(clean), clean)


# ----------------------------------------------------------------------------- baselines
@pytest.mark.parametrize("name", list(baselines.BASELINES))
def test_baselines_keep_length_and_timing(name, clean, noisy):
    system = baselines.BASELINES[name]()
    out = system.process(noisy)
    assert system.name == name
    assert out.shape == noisy.shape and out.dtype == np.float32
    np.testing.assert_array_equal(system.process(noisy), out)  # fresh state every call
    assert metrics.find_lag(out, clean, MAX_LAG_SAMPLES) == 0  # known delays are compensated
    other_rate = resample(noisy[:12345], METRIC_RATE_HZ, 24000)  # another length and rate
    assert system.process(other_rate, 24000).shape == other_rate.shape


@pytest.mark.parametrize("name", ["rnnoise", "spectral_gating"])
def test_denoisers_beat_the_unprocessed_input(name, clean, noisy):
    system = baselines.BASELINES[name]()
    # SI-SDR on speech + white noise at 5 dB: unprocessed 5.0 dB, RNNoise ~11 dB, spectral gating ~6.8 dB
    assert metrics.si_sdr(system.process(noisy), clean) > metrics.si_sdr(noisy, clean) + 1.0
    # DNSMOS on the example recording (no clean reference): unprocessed OVRL 1.6, RNNoise 2.8, gating 2.6. On the
    # white-noise clip above, spectral gating lowers DNSMOS SIG/OVRL (musical noise), so that clip is not used here.
    recording = read_16k(EXAMPLES_DIR / "speech_noisy.wav")
    before, after = metrics.dnsmos(recording), metrics.dnsmos(system.process(recording))
    assert after["dnsmos_ovrl"] > before["dnsmos_ovrl"] + 0.5


# ----------------------------------------------------------------------------- missing packages
def test_missing_package_says_how_to_install(clean, monkeypatch):
    monkeypatch.setitem(sys.modules, "pesq", None)  # makes `import pesq` fail as if it were not installed
    with pytest.raises(metrics.EvalDependencyError, match=r'pip install -e "\.\[eval\]"'):
        metrics.pesq_wb(clean, clean)
    with pytest.raises(metrics.EvalDependencyError, match="pesq"):  # a setup error is raised, never a NaN
        metrics.compute_metrics(clean, clean=clean, which=["pesq"])
    monkeypatch.setitem(sys.modules, "noisereduce", None)
    with pytest.raises(metrics.EvalDependencyError, match="noisereduce"):
        baselines.SpectralGating().process(clean)


def test_importing_the_eval_package_is_light():
    import subprocess

    code = (
        "import sys, metis_rt.eval.metrics, metis_rt.eval.baselines; "
        "heavy = [m for m in ('torch', 'librosa', 'onnxruntime', 'resemblyzer', 'pesq', 'pocketsphinx', "
        "'noisereduce', 'pyrnnoise') if m in sys.modules]; print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
