"""Quality metrics for evaluation: intrusive (PESQ, STOI, SI-SDR), DNSMOS, speaker similarity, relative WER.

Every signal is a mono float32 ``[N]`` array at ``METRIC_RATE_HZ`` (16 kHz), full scale 1.0. The evaluation packages
(``pip install -e ".[eval]"``) are imported inside the functions that use them, so importing this module costs only
numpy (and metis_rt.audio); a missing package raises ``EvalDependencyError`` naming the install command.

NaN rule. A metric is *undefined* for an input that is shorter than ``MIN_SIGNAL_S`` (PESQ's minimum), silent (peak
below ``SILENCE_PEAK_DBFS``), or not finite, or when the reference transcript has no words. The single-metric functions
raise ``AudioInputError`` for such input; ``compute_metrics`` records NaN for that metric, logs a warning naming it and
carries on, so one bad clip never ends a run (a report should count NaNs, not hide them). A silent *output* therefore
scores NaN on the signal metrics but WER 1.0 (every word lost). A missing package is a setup error and is raised.

WER is relative to the clean signal: no ground-truth text exists, so the reference text is pocketsphinx's own
transcript of the clean (SE/TSE) or source (VC) signal. pocketsphinx is a small, old recogniser that misrecognises
even clean speech, so treat this WER as a rough intelligibility trend between systems, not as an absolute figure.
"""

from __future__ import annotations

import functools
import importlib
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from metis_rt.audio.files import SILENCE_PEAK_DBFS, peak_dbfs
from metis_rt.errors import AudioInputError, MetisError

logger = logging.getLogger(__name__)

METRIC_RATE_HZ = 16000  # every metric here takes 16 kHz input
MIN_SIGNAL_S = 0.25  # shortest signal a metric accepts (PESQ refuses less)
MAX_LAG_MS = 100.0  # align(): largest constant delay compensated, either direction
SI_SDR_LIMIT_DB = 100.0  # si_sdr() is clipped to +-this: identical signals give +100, not +inf
PCM16_FULL_SCALE = 32767  # float 1.0 -> int16 for pocketsphinx
RESEMBLYZER_MIN_SPEECH_S = 0.1  # less speech than this after resemblyzer's silence trimming -> undefined
INSTALL_HINT = 'pip install -e ".[eval]"'


class EvalDependencyError(MetisError):
    """An evaluation package (the ``[eval]`` extra) is not installed or cannot be imported."""


@dataclass(frozen=True)
class MetricInfo:
    label: str  # human-readable name for tables and plots
    unit: str  # "" when dimensionless
    higher_is_better: bool
    bounds: tuple[float | None, float | None] = (None, None)  # the values the metric can take (None: unbounded)


METRICS: dict[str, MetricInfo] = {
    "pesq": MetricInfo("PESQ (wide-band)", "MOS", True, (1.04, 4.64)),  # the P.862.2 MOS-LQO mapping's range
    "stoi": MetricInfo("STOI", "", True, (None, 1.0)),  # a correlation: below 0 is possible, above 1 is not
    "estoi": MetricInfo("ESTOI", "", True, (None, 1.0)),
    "si_sdr": MetricInfo("SI-SDR", "dB", True),
    "speaker_sim": MetricInfo("Speaker similarity", "cosine", True, (-1.0, 1.0)),
    "wer": MetricInfo("Relative WER", "", False, (0.0, None)),  # vs the transcript of the clean (VC: source) signal
    "dnsmos_sig": MetricInfo("DNSMOS SIG", "MOS", True, (1.0, 5.0)),
    "dnsmos_bak": MetricInfo("DNSMOS BAK", "MOS", True, (1.0, 5.0)),
    "dnsmos_ovrl": MetricInfo("DNSMOS OVRL", "MOS", True, (1.0, 5.0)),
    "dnsmos_p808": MetricInfo("DNSMOS P.808", "MOS", True, (1.0, 5.0)),
}
ALL: tuple[str, ...] = tuple(METRICS)
INTRUSIVE: tuple[str, ...] = ("pesq", "stoi", "estoi", "si_sdr")  # need `clean`, computed after align()
DNSMOS_KEYS: tuple[str, ...] = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
QUICK: tuple[str, ...] = tuple(name for name in ALL if name != "wer")  # pocketsphinx: ~0.25-0.6 s per s of audio


# ----------------------------------------------------------------------------- dependencies and input checks
def require(module: str, purpose: str) -> ModuleType:
    """Import an evaluation package, or raise EvalDependencyError saying how to install it."""
    try:
        with warnings.catch_warnings():
            # import-time noise of resemblyzer's dependencies: webrtcvad (pkg_resources), scipy.ndimage.morphology
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*scipy.ndimage.morphology", category=DeprecationWarning)
            return importlib.import_module(module)
    except ImportError as exc:
        raise EvalDependencyError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which cannot be imported ({exc}); "
            f"install the evaluation extra with {INSTALL_HINT} from the repository root "
            '(resemblyzer also needs "setuptools<81")'
        ) from exc


def check_signal(x: np.ndarray, name: str) -> np.ndarray:
    """Return `x` as float32 ``[N]``; raise AudioInputError if it is not 1-D, finite, long enough and audible."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise AudioInputError(f"{name}: expected a mono [N] signal at {METRIC_RATE_HZ} Hz, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise AudioInputError(f"{name}: {int(np.sum(~np.isfinite(x)))} sample(s) are NaN or Inf")
    min_samples = int(MIN_SIGNAL_S * METRIC_RATE_HZ)
    if x.shape[0] < min_samples:
        raise AudioInputError(f"{name}: {x.shape[0]} samples, fewer than the {min_samples} ({MIN_SIGNAL_S} s) needed")
    level_dbfs = peak_dbfs(x)
    if level_dbfs < SILENCE_PEAK_DBFS:
        raise AudioInputError(f"{name}: silent (peak {level_dbfs:.1f} dBFS < {SILENCE_PEAK_DBFS:g} dBFS)")
    return x.astype(np.float32, copy=False)


def _check_pair(estimate: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    estimate, reference = check_signal(estimate, "estimate"), check_signal(reference, "reference")
    if estimate.shape != reference.shape:
        raise AudioInputError(
            f"estimate has {estimate.shape[0]} samples but reference {reference.shape[0]}; "
            "intrusive metrics compare sample by sample: call align(estimate, reference) first"
        )
    return estimate, reference


# ----------------------------------------------------------------------------- alignment
def find_lag(estimate: np.ndarray, reference: np.ndarray, max_lag_samples: int) -> int:
    """Integer delay d of `estimate` relative to `reference` (d > 0: the estimate is late), |d| <= max_lag_samples.

    d maximises the cross-correlation sum_n estimate[n + d] * reference[n]; ties go to the smallest |d|, and a silent
    signal gives 0.
    """
    est, ref = np.asarray(estimate, np.float64), np.asarray(reference, np.float64)
    if not est.any() or not ref.any():
        return 0
    n_fft = 1 << (est.shape[0] + ref.shape[0] - 1).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(est, n_fft) * np.conj(np.fft.rfft(ref, n_fft)), n_fft)  # [n_fft], lag k at k
    steps = np.arange(1, max_lag_samples + 1)
    lags = np.concatenate([[0], np.stack([steps, -steps], axis=1).ravel()])  # 0, 1, -1, 2, -2, ...
    return int(lags[np.argmax(xcorr[lags % n_fft])])


def align(estimate: np.ndarray, reference: np.ndarray, max_lag_ms: float = MAX_LAG_MS) -> np.ndarray:
    """Undo a constant delay (within +-max_lag_ms) of `estimate` and cut or zero-pad it to the reference length.

    Returns float32 ``[len(reference)]`` with ``out[n] = estimate[n + d]`` (zero outside the estimate), d from
    ``find_lag``. Systems with a fixed latency (RNNoise: 20 ms) are then not punished for it by intrusive metrics.
    """
    estimate, reference = np.asarray(estimate, np.float32), np.asarray(reference, np.float32)
    lag = find_lag(estimate, reference, round(max_lag_ms * METRIC_RATE_HZ / 1000))
    out = np.zeros(reference.shape[0], np.float32)
    src_start, dst_start = max(lag, 0), max(-lag, 0)
    count = max(0, min(estimate.shape[0] - src_start, out.shape[0] - dst_start))
    out[dst_start : dst_start + count] = estimate[src_start : src_start + count]
    return out


# ----------------------------------------------------------------------------- intrusive metrics
def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR in dB (both signals made zero-mean), clipped to +-SI_SDR_LIMIT_DB."""
    est, ref = (s.astype(np.float64) for s in _check_pair(estimate, reference))
    est, ref = est - est.mean(), ref - ref.mean()
    target = (est @ ref) / (ref @ ref) * ref  # projection of the estimate on the reference
    residual = est - target
    with np.errstate(divide="ignore", invalid="ignore"):  # a DC-only estimate gives NaN (undefined)
        value = 10.0 * np.log10(target @ target) - 10.0 * np.log10(residual @ residual)
    return float(np.clip(value, -SI_SDR_LIMIT_DB, SI_SDR_LIMIT_DB))


def pesq_wb(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO, about 1.04 to 4.64)."""
    est, ref = _check_pair(estimate, reference)
    pesq = require("pesq", "PESQ")
    try:
        return float(pesq.pesq(METRIC_RATE_HZ, ref, est, "wb"))
    except pesq.PesqError as exc:
        raise AudioInputError(f"PESQ cannot score this input: {exc}") from exc


def stoi(estimate: np.ndarray, reference: np.ndarray, extended: bool = False) -> float:
    """STOI (or ESTOI with ``extended=True``) of the estimate against the clean reference, 0 to 1."""
    est, ref = _check_pair(estimate, reference)
    pystoi = require("pystoi", "STOI")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = pystoi.stoi(ref, est, METRIC_RATE_HZ, extended=extended)
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        raise AudioInputError("STOI needs at least 30 frames (~0.4 s) of reference speech above its silence floor")
    return float(value)


# ----------------------------------------------------------------------------- non-intrusive metrics
def dnsmos(estimate: np.ndarray) -> dict[str, float]:
    """DNSMOS P.835 (SIG, BAK, OVRL) and P.808 scores, 1 to 5. Samples beyond full scale are clipped first.

    Clips shorter than 9.01 s are looped to that length by speechmos (its model's input window).
    """
    x = np.clip(check_signal(estimate, "estimate"), -1.0, 1.0)
    speechmos_dnsmos = require("speechmos.dnsmos", "DNSMOS")
    scores = speechmos_dnsmos.run(x, METRIC_RATE_HZ)
    return {
        "dnsmos_sig": float(scores["sig_mos"]),
        "dnsmos_bak": float(scores["bak_mos"]),
        "dnsmos_ovrl": float(scores["ovrl_mos"]),
        "dnsmos_p808": float(scores["p808_mos"]),
    }


@functools.cache
def _voice_encoder():
    """One resemblyzer VoiceEncoder (CPU) per process; the weights ship with the package."""
    resemblyzer = require("resemblyzer", "speaker similarity")
    return resemblyzer.VoiceEncoder("cpu", verbose=False)


def speaker_embedding(x: np.ndarray, name: str = "signal") -> np.ndarray:
    """resemblyzer d-vector ``[256]`` (unit norm) after its volume normalisation and silence trimming."""
    x = check_signal(x, name)
    encoder = _voice_encoder()
    resemblyzer = require("resemblyzer", "speaker similarity")
    wav = resemblyzer.preprocess_wav(x, source_sr=METRIC_RATE_HZ)
    if wav.shape[0] < RESEMBLYZER_MIN_SPEECH_S * METRIC_RATE_HZ:
        raise AudioInputError(f"{name}: less than {RESEMBLYZER_MIN_SPEECH_S} s of speech after silence trimming")
    return encoder.embed_utterance(wav)


def speaker_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of the resemblyzer embeddings of two utterances (1: same voice; unrelated voices ~0.3-0.6)."""
    emb_a, emb_b = speaker_embedding(a, "first signal"), speaker_embedding(b, "second signal")
    return float(emb_a @ emb_b / (np.linalg.norm(emb_a) * np.linalg.norm(emb_b)))


def _new_decoder():
    """A fresh pocketsphinx Decoder (its bundled en-us model), about 0.35 s to build.

    Not cached on purpose: a Decoder's cepstral-mean state carries over from one utterance to the next (even with
    ``cmn="batch"`` and ``set_cmn`` of the initial values), so a shared one would make a transcript depend on what
    was transcribed before it. A fresh one per call keeps every transcript reproducible and order-independent.
    """
    pocketsphinx = require("pocketsphinx", "speech recognition (WER)")
    return pocketsphinx.Decoder(samprate=METRIC_RATE_HZ, loglevel="ERROR")


def transcribe(x: np.ndarray) -> str:
    """pocketsphinx transcript of one utterance as lower-case words; ~0.3-0.7 s per second of audio.

    A silent signal (peak below ``SILENCE_PEAK_DBFS``) gives "" without decoding.
    """
    x = np.asarray(x)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise AudioInputError(f"transcribe: expected a finite mono [N] signal at {METRIC_RATE_HZ} Hz, got {x.shape}")
    if x.size == 0 or peak_dbfs(x) < SILENCE_PEAK_DBFS:
        return ""  # pocketsphinx "hears" words in digital silence; a silent output has lost every word
    pcm = np.round(np.clip(x, -1.0, 1.0) * PCM16_FULL_SCALE).astype(np.int16)
    decoder = _new_decoder()
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return " ".join(hypothesis.hypstr.lower().split()) if hypothesis is not None else ""


def wer(hypothesis_text: str, reference_text: str) -> float:
    """Word error rate of a hypothesis against a reference transcript (0 = same words; can exceed 1)."""
    if not reference_text.split():
        raise AudioInputError("WER: the reference transcript has no words (the recogniser heard nothing)")
    jiwer = require("jiwer", "WER")
    hypothesis = " ".join(hypothesis_text.lower().split())
    return float(jiwer.wer(reference=" ".join(reference_text.lower().split()), hypothesis=hypothesis))


# ----------------------------------------------------------------------------- all at once
def compute_metrics(
    estimate: np.ndarray,
    *,
    clean: np.ndarray | None = None,
    voice: np.ndarray | None = None,
    reference_text: str | None = None,
    which: Iterable[str] = ALL,
) -> dict[str, float]:
    """Every applicable metric in `which` for one system output, keyed as in ``METRICS`` (in its order).

    SE/TSE: pass `clean`; PESQ/STOI/ESTOI/SI-SDR compare ``align(estimate, clean)`` with it, speaker similarity
    compares with `voice` if given, else `clean`; WER compares with `reference_text` if given, else with the transcript
    of `clean` (pass it to transcribe the clean signal only once). VC: pass `voice` (target speaker) and
    `reference_text` (transcript of the source: is the content preserved?). DNSMOS needs no reference. Metrics whose
    reference is missing are left out; undefined ones are NaN (see the module docstring).
    """
    wanted = _check_names(which)
    names = _applicable(wanted, clean is not None, voice is not None, reference_text is not None)
    if not np.all(np.isfinite(np.asarray(estimate))):
        logger.warning("estimate has NaN or Inf samples: every metric is NaN for it")
        return dict.fromkeys(names, float("nan"))

    results: dict[str, float] = {}
    if any(name in INTRUSIVE for name in names):
        results.update(_intrusive_metrics([n for n in names if n in INTRUSIVE], estimate, clean))
    if "speaker_sim" in names:
        target = voice if voice is not None else clean
        results["speaker_sim"] = _guarded("speaker_sim", lambda: speaker_similarity(estimate, target))
    if "wer" in names:

        def relative_wer() -> float:
            text = reference_text if reference_text is not None else transcribe(clean)
            return wer(transcribe(estimate), text)

        results["wer"] = _guarded("wer", relative_wer)
    if any(name in DNSMOS_KEYS for name in names):
        scores = _guarded_many(DNSMOS_KEYS, lambda: dnsmos(estimate))
        results.update({name: scores[name] for name in DNSMOS_KEYS if name in names})
    return {name: results[name] for name in ALL if name in results}


def _intrusive_metrics(names: list[str], estimate: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """PESQ / STOI / ESTOI / SI-SDR of ``align(estimate, clean)``; all NaN if either signal is unusable."""
    try:
        estimate, clean = check_signal(estimate, "estimate"), check_signal(clean, "clean")
    except AudioInputError as exc:
        logger.warning("metrics %s are NaN: %s", ", ".join(names), exc)
        return dict.fromkeys(names, float("nan"))
    aligned = align(estimate, clean)
    compute: dict[str, Callable[[], float]] = {
        "pesq": lambda: pesq_wb(aligned, clean),
        "stoi": lambda: stoi(aligned, clean),
        "estoi": lambda: stoi(aligned, clean, extended=True),
        "si_sdr": lambda: si_sdr(aligned, clean),
    }
    return {name: _guarded(name, compute[name]) for name in names}


def _check_names(which: Iterable[str]) -> set[str]:
    wanted = {which} if isinstance(which, str) else set(which)
    unknown = sorted(wanted - set(METRICS))
    if unknown:
        raise MetisError(f"unknown metric name(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    return wanted


def _applicable(wanted: set[str], has_clean: bool, has_voice: bool, has_text: bool) -> list[str]:
    needs = {name: True for name in DNSMOS_KEYS}
    needs.update(dict.fromkeys(INTRUSIVE, has_clean))
    needs["speaker_sim"] = has_clean or has_voice
    needs["wer"] = has_clean or has_text
    return [name for name in ALL if name in wanted and needs[name]]


def _guarded(name: str, compute: Callable[[], float]) -> float:
    try:
        return compute()
    except AudioInputError as exc:
        logger.warning("metric %s is NaN: %s", name, exc)
        return float("nan")


def _guarded_many(names: tuple[str, ...], compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    try:
        return compute()
    except AudioInputError as exc:
        logger.warning("metrics %s are NaN: %s", ", ".join(names), exc)
        return dict.fromkeys(names, float("nan"))
