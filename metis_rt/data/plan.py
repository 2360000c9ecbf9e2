"""The composition of the evaluation set: which utterances meet which noises, interferers and references.

Pure: no audio is touched. Every random choice comes from `rng_for(seed, ...)` with a name of its own, and
every list is built in catalog order, so the plan (and the ids in it) depends only on the seed.

Each voice's utterances are numbered; a role always takes the same numbers, so no utterance is both, say,
an SE clean target and a TSE enrollment (`SLOT_*`).

Full set (9 voices, one reference-only voice): 18 SE scenes × 5 SNRs × {dry, reverberant} = 180 SE items;
9 targets × 2 interferers × 2 SIRs = 36 TSE items; 9 sources × 2 references = 18 VC items; 234 in all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from metis_rt.data.catalog import HELDOUT_SPEAKERS, VOICES, Voice, voice_by_id
from metis_rt.data.seeding import rng_for
from metis_rt.data.utterances import utterance_id

SNR_GRID_DB = (-5, 0, 5, 10, 15)
SIR_GRID_DB = (0, 5)
RT60_GRID_S = (0.3, 0.6, 0.9)
DRR_RANGE_DB = (0.0, 6.0)  # direct-to-reverberant ratio of the synthetic rooms
SE_NOISES = ("white", "pink", "brown", "hum", "fan", "babble", "music", "events")
TSE_LIGHT_NOISES = ("pink", "fan", "hum")  # the second interferer of each target comes with one of these
TSE_LIGHT_SNR_DB = 20
BABBLE_TALKERS = 4
VC_REFERENCES_PER_SOURCE = 2
SLOT_SE = (0, 1)
SLOT_TSE_TARGET = (2, 3)  # one per interferer
SLOT_ENROLLMENT = 4
SLOT_INTERFERER = (5, 6)  # alternated over the times a voice interferes
SLOT_VC_SOURCE = 7
SLOT_VC_REFERENCE = 8  # reference-only voices use utterance 0
SLOT_BABBLE = 9
QUICK_SE_UTTERANCES = ("allison-en-u00", "fishbig-nl-u00")  # one seen, one held-out speaker
QUICK_SE_SNRS_DB = (0, 10)
QUICK_TSE_TARGET = "fishsmall-cs"  # interferer 0 at 0 dB SIR, interferer 1 (with light noise) at 5 dB
QUICK_VC_SOURCES = ("allison-en", "fishsmall-nl")  # the first reference of each


@dataclass(frozen=True)
class UttRef:
    voice: str
    index: int

    @property
    def id(self) -> str:
        return utterance_id(self.voice, self.index)

    @property
    def speaker(self) -> str:
        return voice_by_id(self.voice).speaker


@dataclass(frozen=True)
class SeScene:
    """One clean utterance with one noise and one room; its items are the SNR grid, dry and reverberant."""

    clean: UttRef
    noise: str
    rt60_s: float
    drr_db: float
    babble: tuple[UttRef, ...]  # talkers of a "babble" noise, else empty
    snrs_db: tuple[int, ...] = SNR_GRID_DB

    def item_id(self, snr_db: int, reverb: bool) -> str:
        return f"se-{self.clean.id}-{self.noise}-snr{snr_db:+03d}-{'rev' if reverb else 'dry'}"


@dataclass(frozen=True)
class TseItem:
    id: str
    target: UttRef
    enrollment: UttRef
    interferer: UttRef
    sir_db: int
    noise: str | None  # light stationary noise, or None
    snr_db: int | None


@dataclass(frozen=True)
class VcItem:
    id: str
    source: UttRef
    reference: UttRef


@dataclass(frozen=True)
class Plan:
    se: tuple[SeScene, ...]
    tse: tuple[TseItem, ...]
    vc: tuple[VcItem, ...]


def main_voices() -> list[Voice]:
    return [v for v in VOICES if not v.reference_only]


def is_heldout(*refs: UttRef) -> bool:
    return any(ref.speaker in HELDOUT_SPEAKERS for ref in refs)


def make_plan(seed: int) -> Plan:
    return Plan(se=tuple(_se_scenes(seed)), tse=tuple(_tse_items(seed)), vc=tuple(_vc_items(seed)))


def quick_subset(plan: Plan) -> Plan:
    """About a dozen items of the full plan (so quick files are byte-identical to the same full-set files)."""
    se = tuple(replace(s, snrs_db=QUICK_SE_SNRS_DB) for s in plan.se if s.clean.id in QUICK_SE_UTTERANCES)
    targets = [t for t in plan.tse if t.target.voice == QUICK_TSE_TARGET]
    tse = tuple(t for t in targets if (t.target.index, t.sir_db) in {(SLOT_TSE_TARGET[0], 0), (SLOT_TSE_TARGET[1], 5)})
    firsts = {}
    for item in plan.vc:
        firsts.setdefault(item.source.voice, item)
    vc = tuple(firsts[v] for v in QUICK_VC_SOURCES)
    return Plan(se=se, tse=tse, vc=vc)


def _cycled(seed: int, name: str, values: tuple, count: int) -> list:
    """`count` values: `values` repeated to length, in a seeded order (each value about equally often)."""
    repeated = [values[i % len(values)] for i in range(count)]
    order = rng_for(seed, name).permutation(count)
    return [repeated[i] for i in order]


def _se_scenes(seed: int) -> list[SeScene]:
    cleans = [UttRef(v.id, slot) for v in main_voices() for slot in SLOT_SE]
    noises = _cycled(seed, "se-noises", SE_NOISES, len(cleans))
    rt60s = _cycled(seed, "se-rt60", RT60_GRID_S, len(cleans))
    scenes = []
    for clean, noise, rt60_s in zip(cleans, noises, rt60s, strict=True):
        rng = rng_for(seed, "se-scene", clean.id)
        drr_db = round(float(rng.uniform(*DRR_RANGE_DB)), 1)
        babble = _babble_talkers(rng, clean) if noise == "babble" else ()
        scenes.append(SeScene(clean, noise, rt60_s, drr_db, babble))
    return scenes


def _babble_talkers(rng, clean: UttRef) -> tuple[UttRef, ...]:
    """Talkers of distinct speakers, none the clean speaker's and none held out."""
    by_speaker: dict[str, Voice] = {}
    for v in main_voices():
        if v.speaker != clean.speaker and v.speaker not in HELDOUT_SPEAKERS:
            by_speaker.setdefault(v.speaker, v)
    speakers = sorted(by_speaker)
    chosen = rng.choice(len(speakers), size=min(BABBLE_TALKERS, len(speakers)), replace=False)
    return tuple(UttRef(by_speaker[speakers[i]].id, SLOT_BABBLE) for i in sorted(chosen))


def _tse_items(seed: int) -> list[TseItem]:
    items, uses = [], {}
    for target_voice in main_voices():
        rng = rng_for(seed, "tse", target_voice.id)
        interferers = _interferers(rng, target_voice)
        for pair, interferer_voice in enumerate(interferers):
            slot = SLOT_INTERFERER[uses.get(interferer_voice.id, 0) % len(SLOT_INTERFERER)]
            uses[interferer_voice.id] = uses.get(interferer_voice.id, 0) + 1
            noise = str(rng.choice(TSE_LIGHT_NOISES)) if pair == 1 else None
            target = UttRef(target_voice.id, SLOT_TSE_TARGET[pair])
            interferer = UttRef(interferer_voice.id, slot)
            for sir_db in SIR_GRID_DB:
                item_id = f"tse-{target.id}-vs-{interferer_voice.id}-sir{sir_db:+03d}"
                snr_db = TSE_LIGHT_SNR_DB if noise else None
                enrollment = UttRef(target_voice.id, SLOT_ENROLLMENT)
                items.append(TseItem(item_id, target, enrollment, interferer, sir_db, noise, snr_db))
    return items


def _interferers(rng, target: Voice) -> list[Voice]:
    """Two voices of other speakers: a same-language one first where there is one, else two at random."""
    others = [v for v in main_voices() if v.speaker != target.speaker]
    same_language = [v for v in others if v.language == target.language]
    first = same_language[int(rng.integers(len(same_language)))] if same_language else None
    rest = [v for v in others if v is not first and (first is None or v.speaker != first.speaker)]
    picks = rng.choice(len(rest), size=2 if first is None else 1, replace=False)
    return ([first] if first else []) + [rest[i] for i in picks]


def _vc_items(seed: int) -> list[VcItem]:
    items = []
    for source_voice in main_voices():
        rng = rng_for(seed, "vc", source_voice.id)
        speakers = sorted({v.speaker for v in VOICES if v.speaker != source_voice.speaker})
        chosen = rng.choice(len(speakers), size=VC_REFERENCES_PER_SOURCE, replace=False)
        source = UttRef(source_voice.id, SLOT_VC_SOURCE)
        for i in chosen:
            candidates = [v for v in VOICES if v.speaker == speakers[i]]
            voice = candidates[int(rng.integers(len(candidates)))]
            reference = UttRef(voice.id, 0 if voice.reference_only else SLOT_VC_REFERENCE)
            items.append(VcItem(f"vc-{source.id}-to-{voice.id}", source, reference))
    return items
