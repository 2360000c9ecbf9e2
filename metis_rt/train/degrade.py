"""On-the-fly degradation for each task: pure functions of a numpy Generator and 16 kHz arrays.

Each task has a *condition* (every random choice, drawn first by ``draw_*``) and an *apply* step that makes
the model input from clean speech (reusing `metis_rt.data`: noises, rooms, exact SNR/SIR scaling). Drawing the
condition first lets the reader load only what it needs (babble talkers only for babble noise). Every result
says by how much the clean target must be scaled (`Degraded.target_gain`): the random input level and the
peak limit apply to input and target alike, so ``target`` stays the exact clean part of the input (for SE
without reverb: ``input - target`` is the added noise, at the drawn SNR).

- SE: synthetic noise (white, pink, brown, hum, fan) or babble of other training speakers at an SNR drawn
  from `DegradeConfig.snr_db`, optionally in a synthetic room (the target stays dry and time-aligned: the
  RIR's direct path is its sample 0), optionally clipped and then band-limited (telephone-like down/up
  resampling), in that order: clipping happens at capture, the band limit in transmission.
  Noise is scaled against the speech as it is in the input (reverberant when reverberant).
- TSE: the target plus an interferer of another speaker at an SIR, optionally with light noise; the
  enrollment (another utterance of the target's speaker) is chosen by the reader.
- VC: no degradation. A VC training pair in Metis is (reference, source -> source): stage 1 is conditioned on
  the SSL features of ``reference ++ source`` with the reference's semantic tokens as the prompt, and learns to
  rebuild the *source's* semantic tokens, i.e. to carry the content of the conditioning speech through; at
  inference the prompt is another speaker's voice. With a reference of the same speaker (the default,
  ``vc_reference="same-speaker"`` in `data.py`) prompt and target share a voice: the self-reconstruction recipe,
  where the prompt must supply the timbre (as in Metis, the reader perturbs the source's timbre in the condition
  so the model cannot copy it from there: `metis_rt/train/timbre.py`). With a reference of another speaker
  (``"other-speaker"``) the stage-1 target keeps the source's voice and the model learns to ignore the prompt's
  timbre.
  Without the perturbation the input is the source speech itself.
- clean: the input is the clean speech (pre-training of codecs, SSL, base and S2A models).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from metis_rt.audio.files import resample
from metis_rt.data.mixing import apply_rir, peak_safe_gain, scale_interferer_to_sir, scale_noise_to_snr
from metis_rt.data.noise import SYNTHETIC_KINDS, babble, fit_speech, synthetic_noise
from metis_rt.data.rir import synthetic_rir

SR = 16000  # Hz: every array here is at the SSL feature rate
BABBLE = "babble"


@dataclass(frozen=True)
class DegradeConfig:
    """Ranges and probabilities of every degradation (uniform draws within each range)."""

    snr_db: tuple[float, float] = (-5.0, 20.0)
    se_noises: tuple[str, ...] = (*SYNTHETIC_KINDS, BABBLE)  # drawn with equal probability
    babble_talkers: tuple[int, int] = (3, 6)
    reverb_prob: float = 0.3
    rt60_s: tuple[float, float] = (0.2, 1.0)
    drr_db: tuple[float, float] = (0.0, 10.0)
    band_limit_prob: float = 0.2
    band_limits_hz: tuple[int, ...] = (4000, 5500, 6000)  # upper band edge (half the telephone-like rate)
    clip_prob: float = 0.1
    clip_level: tuple[float, float] = (0.1, 0.5)  # clipping threshold, as a fraction of the input's peak
    sir_db: tuple[float, float] = (-5.0, 10.0)
    tse_noise_prob: float = 0.5
    tse_snr_db: tuple[float, float] = (10.0, 30.0)
    tse_noises: tuple[str, ...] = ("pink", "fan", "hum", "white")
    level_db: tuple[float, float] = (-10.0, 6.0)  # gain of input and target re the stored -26 dBFS speech


@dataclass(frozen=True)
class SeCondition:
    noise: str
    snr_db: float
    talkers: int  # babble talkers (0 unless noise is babble)
    rt60_s: float | None  # None: dry
    drr_db: float | None
    band_limit_hz: int | None
    clip_level: float | None
    level_db: float


@dataclass(frozen=True)
class TseCondition:
    sir_db: float
    noise: str | None
    snr_db: float | None
    level_db: float


@dataclass(frozen=True)
class Degraded:
    degraded: np.ndarray  # [N] float32 at 16 kHz, the model input
    target_gain: float  # scale the clean target (16 and 24 kHz) by this
    meta: dict


def draw_se(rng: np.random.Generator, cfg: DegradeConfig, babble_ok: bool = True) -> SeCondition:
    """An SE condition; babble is left out of the draw when `babble_ok` is False (no other speakers)."""
    noises = [n for n in cfg.se_noises if babble_ok or n != BABBLE]
    noise = noises[int(rng.integers(len(noises)))]
    snr_db = float(rng.uniform(*cfg.snr_db))
    talkers = int(rng.integers(cfg.babble_talkers[0], cfg.babble_talkers[1] + 1)) if noise == BABBLE else 0
    reverb = rng.random() < cfg.reverb_prob
    rt60_s = float(rng.uniform(*cfg.rt60_s)) if reverb else None
    drr_db = float(rng.uniform(*cfg.drr_db)) if reverb else None
    band = rng.random() < cfg.band_limit_prob
    band_limit_hz = int(cfg.band_limits_hz[int(rng.integers(len(cfg.band_limits_hz)))]) if band else None
    clip_level = float(rng.uniform(*cfg.clip_level)) if rng.random() < cfg.clip_prob else None
    level_db = float(rng.uniform(*cfg.level_db))
    return SeCondition(noise, snr_db, talkers, rt60_s, drr_db, band_limit_hz, clip_level, level_db)


def apply_se(
    rng: np.random.Generator, clean: np.ndarray, cond: SeCondition, talkers: list[np.ndarray] | None = None
) -> Degraded:
    """Noisy (reverberant, band-limited, clipped) input from clean [N]; babble needs `cond.talkers` arrays."""
    speech = clean
    if cond.rt60_s is not None:
        speech = apply_rir(clean, synthetic_rir(rng, SR, cond.rt60_s, cond.drr_db or 0.0))
    if cond.noise == BABBLE:
        if not talkers:
            raise ValueError("babble noise needs the talkers' speech")
        noise, detail = babble(rng, talkers, clean.size, SR), {}
    else:
        noise, detail = synthetic_noise(cond.noise, rng, clean.size, SR)
    noisy = speech + scale_noise_to_snr(speech, noise, cond.snr_db, SR)
    meta = asdict(cond) | {"noise_detail": detail}
    return _finish(noisy, clean, cond.level_db, cond.clip_level, cond.band_limit_hz, meta)


def draw_tse(rng: np.random.Generator, cfg: DegradeConfig) -> TseCondition:
    sir_db = float(rng.uniform(*cfg.sir_db))
    noisy = rng.random() < cfg.tse_noise_prob
    noise = cfg.tse_noises[int(rng.integers(len(cfg.tse_noises)))] if noisy else None
    snr_db = float(rng.uniform(*cfg.tse_snr_db)) if noisy else None
    return TseCondition(sir_db, noise, snr_db, float(rng.uniform(*cfg.level_db)))


def apply_tse(rng: np.random.Generator, target: np.ndarray, interferer: np.ndarray, cond: TseCondition) -> Degraded:
    """Mixture of the target [N] and another speaker (fitted to N samples) at `cond.sir_db`, plus light noise."""
    fitted = fit_speech(rng, interferer, target.size, SR)
    mixture = target + scale_interferer_to_sir(target, fitted, cond.sir_db, SR)
    detail = {}
    if cond.noise is not None:
        noise, detail = synthetic_noise(cond.noise, rng, target.size, SR)
        mixture = mixture + scale_noise_to_snr(target, noise, cond.snr_db, SR)
    return _finish(mixture, target, cond.level_db, None, None, asdict(cond) | {"noise_detail": detail})


def unchanged(clean: np.ndarray) -> Degraded:
    """VC and clean: the input is the clean speech (a copy), at the stored level."""
    return Degraded(clean.astype(np.float32, copy=True), 1.0, {})


def band_limit(x: np.ndarray, upper_hz: int) -> np.ndarray:
    """Keep the band below `upper_hz`: resample to 2 * upper_hz and back (soxr's anti-alias filter), length kept."""
    narrow = resample(resample(np.asarray(x, dtype=np.float32), SR, 2 * upper_hz), 2 * upper_hz, SR)
    out = np.zeros(x.size, dtype=np.float32)
    out[: min(x.size, narrow.size)] = narrow[: x.size]
    return out


def _finish(
    x: np.ndarray, clean: np.ndarray, level_db: float, clip_level: float | None, band_hz: int | None, meta: dict
) -> Degraded:
    """Level, then the capture chain (clipping at the input, band limit in transmission), then one peak-safe
    gain for input and target alike."""
    gain = 10.0 ** (level_db / 20.0)
    x = x * gain
    if clip_level is not None:
        threshold = clip_level * float(np.max(np.abs(x)))
        meta["clipped_fraction"] = float(np.mean(np.abs(x) > threshold))
        x = np.clip(x, -threshold, threshold)
    if band_hz is not None:
        x = band_limit(x, band_hz)
    safe = min(peak_safe_gain(x), peak_safe_gain(clean * gain))
    return Degraded((x * safe).astype(np.float32), gain * safe, meta)
