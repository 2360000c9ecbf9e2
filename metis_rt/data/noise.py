"""Noise signals: synthetic (white/pink/brown, mains hum, fan) and arrangements of recordings (babble, loops).

Pure functions of a numpy Generator and lengths in samples. Every noise is returned as float32 [N] with unit
mean power (the mixer scales it to the SNR wanted). Spectral shaping is done in the FFT domain, so the
slopes are exact: power falls by `slope_db_per_octave` per doubling of frequency above `CORNER_HZ`.
"""

from __future__ import annotations

import numpy as np

from metis_rt.data.mixing import active_power, mean_power

PINK_SLOPE_DB_PER_OCTAVE = -10.0 * np.log10(2.0)  # -3.01: power ∝ 1/f
BROWN_SLOPE_DB_PER_OCTAVE = -20.0 * np.log10(2.0)  # -6.02: power ∝ 1/f², a random walk
CORNER_HZ = 20.0  # below this the coloured spectra are flat (keeps brown noise finite)
MAINS_HZ = (50.0, 60.0)  # mains frequencies of the world
HUM_HARMONICS = 12  # harmonics of the mains hum, fundamental included
HUM_FLOOR_DB = -35.0  # pink floor under the hum, re the hum's power
FAN_CUTOFF_HZ = (250.0, 900.0)  # range of the fan noise's 2nd-order low-pass corner
FAN_BLADE_HZ = (70.0, 160.0)  # range of the blade-pass tone
FAN_BLADE_DB = -12.0  # blade-pass tone re the broadband fan noise
FAN_WOBBLE_HZ = (0.2, 1.0)  # slow amplitude modulation of the fan
FAN_WOBBLE_DEPTH = 0.15
LOOP_CROSSFADE_S = 0.05  # crossfade where a recording loops
EVENT_GAP_S = (0.1, 0.8)  # silence between event sounds
SYNTHETIC_KINDS = ("white", "pink", "brown", "hum", "fan")


def unit_power(x: np.ndarray) -> np.ndarray:
    power = mean_power(x)
    if power <= 0.0:
        raise ValueError("cannot normalise an all-zero noise")
    return (x / np.sqrt(power)).astype(np.float32)


def coloured_noise(rng: np.random.Generator, n: int, sr: int, slope_db_per_octave: float) -> np.ndarray:
    """Gaussian noise whose power spectrum falls by `slope_db_per_octave` per octave above `CORNER_HZ`."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    exponent = slope_db_per_octave / (20.0 * np.log10(2.0))  # amplitude exponent of f
    gain = (np.maximum(freqs, CORNER_HZ) / CORNER_HZ) ** exponent
    gain[0] = 0.0  # no DC
    return unit_power(np.fft.irfft(spectrum * gain, n))


def hum(rng: np.random.Generator, n: int, sr: int, mains_hz: float) -> np.ndarray:
    """Mains hum: the fundamental plus harmonics (odd ones stronger, as from a transformer) over a pink floor."""
    t = np.arange(n) / sr
    x = np.zeros(n)
    for k in range(1, HUM_HARMONICS + 1):
        if k * mains_hz >= sr / 2:
            break
        amplitude = (1.0 if k % 2 else 0.35) / k
        x += amplitude * np.sin(2 * np.pi * k * mains_hz * t + rng.uniform(0, 2 * np.pi))
    floor = coloured_noise(rng, n, sr, PINK_SLOPE_DB_PER_OCTAVE) * np.sqrt(mean_power(x) * 10 ** (HUM_FLOOR_DB / 10))
    return unit_power(x + floor)


def fan(rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    """Fan-like noise: low-passed broadband noise, a blade-pass tone, a slow wobble. Returns (noise, params)."""
    cutoff_hz = rng.uniform(*FAN_CUTOFF_HZ)
    blade_hz = rng.uniform(*FAN_BLADE_HZ)
    wobble_hz = rng.uniform(*FAN_WOBBLE_HZ)
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    lowpass = 1.0 / np.sqrt(1.0 + (freqs / cutoff_hz) ** 4)
    broadband = unit_power(np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * lowpass, n))
    t = np.arange(n) / sr
    tone = np.sin(2 * np.pi * blade_hz * t) + 0.5 * np.sin(2 * np.pi * 2 * blade_hz * t + rng.uniform(0, 2 * np.pi))
    tone = unit_power(tone) * np.sqrt(10 ** (FAN_BLADE_DB / 10))
    wobble = 1.0 + FAN_WOBBLE_DEPTH * np.sin(2 * np.pi * wobble_hz * t + rng.uniform(0, 2 * np.pi))
    params = {"cutoff_hz": round(cutoff_hz, 1), "blade_hz": round(blade_hz, 1)}
    return unit_power((broadband + tone) * wobble), params


def synthetic_noise(kind: str, rng: np.random.Generator, n: int, sr: int) -> tuple[np.ndarray, dict]:
    """One of `SYNTHETIC_KINDS`; returns (noise float32 [n] of unit power, parameters for the manifest)."""
    if kind == "white":
        return coloured_noise(rng, n, sr, 0.0), {}
    if kind == "pink":
        return coloured_noise(rng, n, sr, PINK_SLOPE_DB_PER_OCTAVE), {}
    if kind == "brown":
        return coloured_noise(rng, n, sr, BROWN_SLOPE_DB_PER_OCTAVE), {}
    if kind == "hum":
        mains_hz = float(rng.choice(MAINS_HZ))
        return hum(rng, n, sr, mains_hz), {"mains_hz": mains_hz}
    if kind == "fan":
        return fan(rng, n, sr)
    raise ValueError(f"unknown synthetic noise {kind!r}; expected one of {', '.join(SYNTHETIC_KINDS)}")


def loop_to_length(rng: np.random.Generator, x: np.ndarray, n: int, sr: int) -> np.ndarray:
    """A random excerpt of `n` samples of a recording, looped with a crossfade when it is too short."""
    if x.size == 0:
        raise ValueError("cannot loop an empty recording")
    fade = min(round(LOOP_CROSSFADE_S * sr), x.size // 4)
    while x.size < n + 1:
        ramp = np.linspace(0.0, 1.0, fade, endpoint=False) if fade else np.zeros(0)
        joint = x[x.size - fade :] * (1.0 - ramp) + x[:fade] * ramp
        x = np.concatenate([x[: x.size - fade], joint, x[fade:]])
    start = int(rng.integers(0, x.size - n))
    return x[start : start + n].astype(np.float32)


def fit_speech(rng: np.random.Generator, x: np.ndarray, n: int, sr: int, gap_s: float = 0.3) -> np.ndarray:
    """Speech of exactly `n` samples: a random excerpt, or the utterance repeated after `gap_s` of silence."""
    if x.size > n:
        start = int(rng.integers(0, x.size - n + 1))
        return x[start : start + n].astype(np.float32)
    gap = np.zeros(round(gap_s * sr), dtype=x.dtype)
    reps = int(np.ceil(n / (x.size + gap.size)))
    return np.tile(np.concatenate([x, gap]), reps)[:n].astype(np.float32)


def babble(rng: np.random.Generator, talkers: list[np.ndarray], n: int, sr: int) -> np.ndarray:
    """Several talkers at equal active level, each fitted to `n` samples, summed."""
    if not talkers:
        raise ValueError("babble needs at least one talker")
    total = np.zeros(n, dtype=np.float64)
    for speech in talkers:
        fitted = fit_speech(rng, speech, n, sr)
        total += fitted / np.sqrt(active_power(fitted, sr))
    return unit_power(total)


def event_sequence(rng: np.random.Generator, events: list[np.ndarray], n: int, sr: int) -> np.ndarray:
    """Event sounds (bells, phones...) drawn at random, at equal active level, separated by short silences."""
    if not events:
        raise ValueError("an event sequence needs at least one event sound")
    out = np.zeros(n, dtype=np.float64)
    position = int(rng.integers(0, round(EVENT_GAP_S[1] * sr)))
    while position < n:
        event = events[int(rng.integers(0, len(events)))]
        length = min(event.size, n - position)
        out[position : position + length] = event[:length] / np.sqrt(active_power(event, sr))
        position += event.size + round(rng.uniform(*EVENT_GAP_S) * sr)
    return unit_power(out)
