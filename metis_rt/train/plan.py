"""Which voice reads which sentence, at which speed, in which split: the training set's plan (pure, no audio).

Every random choice comes from `rng_for(seed, ...)` under a name of its own, and every list is built in a
fixed order, so the plan depends only on the seed, the size and the inventory.

Size: ``minutes`` of speech are planned as ``minutes * 60 / ESTIMATED_UTTERANCE_S`` utterances (the rendered
total is reported in the manifest), shared among the sources by `SOURCE_SHARES`. Each source uses about
``n / UTTERANCES_PER_VOICE`` of its voices (all of them once it has fewer), so every voice has several
utterances (a TSE enrollment is another utterance of the target's speaker).

Split, by utterance: for a seeded subset of the voices with at least `MIN_UTTERANCES_FOR_VALID` utterances, the
first `VALID_PER_VOICE` go to ``valid``, until about `valid_fraction` of all utterances are there. TTS
utterances in ``valid`` read sentences that no ``train`` utterance reads (the sentences are split too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metis_rt.data.seeding import rng_for

ESTIMATED_UTTERANCE_S = 5.0  # mean length of a rendered utterance (edges included), for sizing only
UTTERANCES_PER_VOICE = 4
SOURCE_SHARES = {"espeak-ng": 0.45, "flite": 0.2, "festival": 0.15, "mbrola": 0.1, "ktuberling": 0.1}
VALID_FRACTION = 0.05
VALID_PER_VOICE = 2
MIN_UTTERANCES_FOR_VALID = 4  # a voice keeps at least 2 train utterances
SPLITS = ("train", "valid")


@dataclass(frozen=True)
class Speaker:
    """A voice of a source, as the planner sees it (a TTS voice or a recorded speaker)."""

    voice: str
    speaker: str
    source: str
    language: str
    recorded: bool = False  # real recordings read no text (and have no speed)


@dataclass(frozen=True)
class PlannedUtterance:
    id: str  # "<voice>-u<index>", e.g. "flite-slt-u003"
    voice: str
    speaker: str
    source: str
    language: str
    index: int  # among the voice's utterances
    split: str  # "train" | "valid"
    text: str | None  # None for recorded speech
    speed: float | None  # TTS speaking-rate factor; None for recorded speech


def utterance_count(minutes: float) -> int:
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    return max(2, math.ceil(minutes * 60.0 / ESTIMATED_UTTERANCE_S))


def source_counts(total: int, sources: list[str]) -> dict[str, int]:
    """Utterances per source: `total` shared by `SOURCE_SHARES` (largest remainders; order of `sources`)."""
    weights = [SOURCE_SHARES[s] for s in sources]
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(e) for e in exact]
    for i in sorted(range(len(sources)), key=lambda i: (counts[i] - exact[i], i))[: total - sum(counts)]:
        counts[i] += 1
    return dict(zip(sources, counts, strict=True))


def choose_voices(seed: int, source: str, pool: list[Speaker], count: int) -> dict[str, int]:
    """{voice: number of utterances} for `count` utterances of `source` (pool order kept)."""
    if count <= 0 or not pool:
        return {}
    k = min(len(pool), max(1, round(count / UTTERANCES_PER_VOICE)))
    chosen = sorted(rng_for(seed, "voices", source).choice(len(pool), size=k, replace=False).tolist())
    return {pool[i].voice: count // k + (1 if rank < count % k else 0) for rank, i in enumerate(chosen)}


def valid_voices(seed: int, counts: dict[str, int], valid_fraction: float) -> set[str]:
    """The voices whose first `VALID_PER_VOICE` utterances are in the valid split."""
    wanted = round(sum(counts.values()) * valid_fraction / VALID_PER_VOICE)
    eligible = sorted(v for v, n in counts.items() if n >= MIN_UTTERANCES_FOR_VALID)
    order = rng_for(seed, "valid-voices").permutation(len(eligible))
    return {eligible[i] for i in order[:wanted]}


def split_sentences(seed: int, sentences: list[str], valid_fraction: float) -> dict[str, list[str]]:
    order = rng_for(seed, "sentences").permutation(len(sentences))
    n_valid = max(1, round(len(sentences) * valid_fraction)) if valid_fraction > 0 else 0
    return {"valid": [sentences[i] for i in order[:n_valid]], "train": [sentences[i] for i in order[n_valid:]]}


def make_plan(
    seed: int,
    minutes: float,
    pools: dict[str, list[Speaker]],
    sentences: list[str],
    speed_range: tuple[float, float],
    valid_fraction: float = VALID_FRACTION,
) -> list[PlannedUtterance]:
    """The utterances to render, in source then voice order. `pools` maps each source to its voices."""
    counts: dict[str, int] = {}
    for source, n in source_counts(utterance_count(minutes), list(pools)).items():
        counts |= choose_voices(seed, source, pools[source], n)
    valid = valid_voices(seed, counts, valid_fraction)
    texts = split_sentences(seed, sentences, valid_fraction)
    by_voice = {s.voice: s for pool in pools.values() for s in pool}
    plan = []
    for voice, n in counts.items():
        plan += _voice_utterances(seed, by_voice[voice], n, voice in valid, texts, speed_range)
    return plan


def _voice_utterances(
    seed: int, who: Speaker, n: int, has_valid: bool, texts: dict[str, list[str]], speed_range: tuple[float, float]
) -> list[PlannedUtterance]:
    rng = rng_for(seed, "utterances", who.voice)
    offsets = {split: int(rng.integers(0, max(1, len(texts[split])))) for split in SPLITS}
    taken = dict.fromkeys(SPLITS, 0)
    out = []
    for index in range(n):
        split = "valid" if has_valid and index < VALID_PER_VOICE else "train"
        speed = float(round(rng.uniform(*speed_range), 4))
        text = None
        if not who.recorded and texts[split]:
            text = texts[split][(offsets[split] + taken[split]) % len(texts[split])]
            taken[split] += 1
        out.append(
            PlannedUtterance(
                f"{who.voice}-u{index:03d}",
                who.voice,
                who.speaker,
                who.source,
                who.language,
                index,
                split,
                text,
                None if who.recorded else speed,
            )
        )
    return out
