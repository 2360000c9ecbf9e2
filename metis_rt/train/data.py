"""Training examples streamed from a built training set (`corpus.build_train_set`), degraded on the fly.

`TrainingExamples` reads ``manifest.json`` once and each utterance file only when an example needs it (a few
files per example: the clean speech, and a reference, interferer or babble talkers), so memory does not grow
with the set. One epoch visits every utterance of the split once as the clean speech, in an order shuffled by
(seed, split, epoch). Example ``i`` of an epoch depends only on (seed, split, epoch, i): every random choice
(task, crop, partners, degradation) comes from ``rng_for(seed, "example", split, epoch, i)``, so a run can be
repeated, resumed at any index, or read in parallel with `example(i)`.

Segments: the clean speech is cropped (or zero-padded at the end) to ``segment_s``; the crop starts on an even
16 kHz sample, so the 24 kHz crop is the same speech (``M = N * 3 / 2``). References (TSE enrollment, VC
voice) are cropped or padded to ``reference_s``. ``meta["speech_samples_16k"]`` / ``["reference_samples_16k"]``
give the unpadded lengths for masks.

Partners: TSE interferers, VC references (by default) and babble talkers are utterances of other speakers; the
TSE enrollment is another utterance of the target's speaker (a target whose speaker has a single utterance in
the split is replaced by one drawn from the speakers that have two or more; ``meta["target_redrawn"]``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import soundfile as sf

from metis_rt.audio.files import resample
from metis_rt.data.seeding import rng_for
from metis_rt.train import degrade, timbre
from metis_rt.train.corpus import MANIFEST_NAME, STORE_RATE
from metis_rt.train.example import TASKS, Example
from metis_rt.train.sources import TrainDataError
from metis_rt.train.timbre import TimbreConfig

SR_16K = 16000
DEFAULT_SEGMENT_S = 4.0
DEFAULT_REFERENCE_S = 3.0
VC_REFERENCES = ("other-speaker", "same-speaker")
DEFAULT_VC_TIMBRE = TimbreConfig()  # VC examples perturb the source's timbre in the condition (train/timbre.py)


class TrainingExamples:
    """Iterable of `Example` for one task or a weighted mixture (``{"se": 0.5, "tse": 0.3, "vc": 0.2}``)."""

    def __init__(
        self,
        set_dir: str | Path,
        task: str | Mapping[str, float],
        seed: int = 0,
        split: str = "train",
        segment_s: float = DEFAULT_SEGMENT_S,
        epoch: int = 0,
        *,
        reference_s: float = DEFAULT_REFERENCE_S,
        degradation: degrade.DegradeConfig | None = None,
        vc_reference: str = "same-speaker",
        vc_timbre: TimbreConfig | None = DEFAULT_VC_TIMBRE,
    ):
        self.set_dir = Path(set_dir)
        self.manifest = read_manifest(self.set_dir)
        self.tasks, self.weights = _task_weights(task)
        self.seed, self.split, self.epoch = int(seed), split, int(epoch)
        self.segment_16k = 2 * round(segment_s * SR_16K / 2)
        self.reference_16k = 2 * round(reference_s * SR_16K / 2)
        self.degradation = degradation or degrade.DegradeConfig()
        if vc_reference not in VC_REFERENCES:
            raise ValueError(f"vc_reference must be one of {VC_REFERENCES}, got {vc_reference!r}")
        self.vc_reference = vc_reference
        self.vc_timbre = vc_timbre  # VC: perturbation of the source's timbre in the condition (None = off)
        self.utterances = [u for u in self.manifest["utterances"] if u["split"] == split]
        self.by_speaker: dict[str, list[int]] = {}
        for i, utt in enumerate(self.utterances):
            self.by_speaker.setdefault(utt["speaker"], []).append(i)
        self.speakers = sorted(self.by_speaker)
        self.enrollable = [i for i, u in enumerate(self.utterances) if len(self.by_speaker[u["speaker"]]) >= 2]
        self._order_epoch, self._order_cache = -1, np.zeros(0, dtype=np.int64)
        self._check_usable()

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Example]:
        for index in range(len(self)):
            yield self.example(index)

    def example(self, index: int) -> Example:
        """Example `index` of the current epoch (0 <= index < len(self))."""
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} of a split with {len(self)} utterances")
        rng = rng_for(self.seed, "example", self.split, str(self.epoch), str(index))
        task = self.tasks[int(rng.choice(len(self.tasks), p=self.weights))] if len(self.tasks) > 1 else self.tasks[0]
        primary = int(self._order()[index])
        meta: dict = {}
        if task == "tse" and primary not in self.enrollable:
            primary, meta["target_redrawn"] = self.enrollable[int(rng.integers(len(self.enrollable)))], True
        utt = self.utterances[primary]
        clean_16k, clean_24k, meta["speech_samples_16k"] = self._segment(rng, primary, self.segment_16k)
        meta |= {"utterance": utt["id"], "text": utt["text"], "source": utt["source"]}
        if task == "se":
            return self._se(rng, primary, clean_16k, clean_24k, meta)
        if task == "tse":
            return self._tse(rng, primary, clean_16k, clean_24k, meta)
        reference = None
        out = degrade.unchanged(clean_16k)
        if task == "vc":
            pick = self._same_speaker if self.vc_reference == "same-speaker" else self._other_speaker
            reference = self._reference(rng, pick(rng, primary), meta)
            params = timbre.draw(rng, self.vc_timbre) if self.vc_timbre is not None else None
            if params is not None:
                out = degrade.Degraded(timbre.apply(clean_16k, params), 1.0, {"timbre": params})
        return self._example(task, utt, clean_16k, clean_24k, out, reference, meta)

    def _order(self) -> np.ndarray:
        """This epoch's shuffled utterance order (computed once per epoch)."""
        if self._order_epoch != self.epoch:
            self._order_cache = rng_for(self.seed, "order", self.split, str(self.epoch)).permutation(len(self))
            self._order_epoch = self.epoch
        return self._order_cache

    # ------------------------------------------------------------------ tasks
    def _se(self, rng, primary, clean_16k, clean_24k, meta) -> Example:
        cond = degrade.draw_se(rng, self.degradation, babble_ok=len(self.speakers) > 1)
        talkers = None
        if cond.talkers:
            picks = [self._other_speaker(rng, primary) for _ in range(cond.talkers)]
            talkers = [self._load(i)[0] for i in picks]
            meta["babble"] = [self.utterances[i]["id"] for i in picks]
        out = degrade.apply_se(rng, clean_16k, cond, talkers)
        return self._example("se", self.utterances[primary], clean_16k, clean_24k, out, None, meta)

    def _tse(self, rng, primary, clean_16k, clean_24k, meta) -> Example:
        reference = self._reference(rng, self._same_speaker(rng, primary), meta)
        other = self._other_speaker(rng, primary)
        meta |= {"interferer": self.utterances[other]["id"], "interferer_speaker": self.utterances[other]["speaker"]}
        out = degrade.apply_tse(rng, clean_16k, self._load(other)[0], degrade.draw_tse(rng, self.degradation))
        return self._example("tse", self.utterances[primary], clean_16k, clean_24k, out, reference, meta)

    def _example(self, task, utt, clean_16k, clean_24k, out, reference, meta) -> Example:
        gain = np.float32(out.target_gain)
        ref_16k, ref_24k = reference if reference is not None else (None, None)
        return Example(
            task=task,
            clean_16k=clean_16k * gain,
            clean_24k=clean_24k * gain,
            degraded_16k=out.degraded,
            reference_16k=ref_16k,
            reference_24k=ref_24k,
            speaker=utt["speaker"],
            meta=meta | out.meta | {"target_gain": out.target_gain},
        )

    # ------------------------------------------------------------------ partners
    def _other_speaker(self, rng: np.random.Generator, primary: int) -> int:
        own = self.utterances[primary]["speaker"]
        others = [s for s in self.speakers if s != own]
        mine = self.by_speaker[others[int(rng.integers(len(others)))]]
        return mine[int(rng.integers(len(mine)))]

    def _same_speaker(self, rng: np.random.Generator, primary: int) -> int:
        mine = [i for i in self.by_speaker[self.utterances[primary]["speaker"]] if i != primary]
        if not mine:
            raise TrainDataError(f"{self.utterances[primary]['id']}: its speaker has no other utterance here")
        return mine[int(rng.integers(len(mine)))]

    def _reference(self, rng, index: int, meta: dict) -> tuple[np.ndarray, np.ndarray]:
        ref_16k, ref_24k, meta["reference_samples_16k"] = self._segment(rng, index, self.reference_16k)
        meta |= {"reference": self.utterances[index]["id"], "reference_speaker": self.utterances[index]["speaker"]}
        return ref_16k, ref_24k

    # ------------------------------------------------------------------ audio
    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(16 kHz [N], 24 kHz [N * 3 / 2]) float32 of utterance `index`, read from disk now."""
        path = self.set_dir / self.utterances[index]["path"]
        try:
            audio_24k, sr = sf.read(path, dtype="float32")
        except (sf.SoundFileError, RuntimeError, OSError) as exc:
            raise TrainDataError(f"cannot read {path}: {exc}; rebuild the training set") from exc
        if sr != STORE_RATE or audio_24k.ndim != 1 or audio_24k.size % 3:
            raise TrainDataError(f"{path}: expected mono {STORE_RATE} Hz with a length divisible by 3; rebuild")
        return resample(audio_24k, STORE_RATE, SR_16K)[: audio_24k.size * 2 // 3], audio_24k

    def _segment(self, rng, index: int, n_16k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """A crop of `n_16k` samples (and the same 24 kHz span), zero-padded if the utterance is shorter."""
        audio_16k, audio_24k = self._load(index)
        start = 2 * int(rng.integers(0, (audio_16k.size - n_16k) // 2 + 1)) if audio_16k.size > n_16k else 0
        kept = min(n_16k, audio_16k.size - start)
        out_16k = np.zeros(n_16k, dtype=np.float32)
        out_24k = np.zeros(n_16k * 3 // 2, dtype=np.float32)
        out_16k[:kept] = audio_16k[start : start + kept]
        out_24k[: kept * 3 // 2] = audio_24k[start * 3 // 2 : (start + kept) * 3 // 2]
        return out_16k, out_24k, kept

    def _check_usable(self) -> None:
        if not self.utterances:
            raise TrainDataError(f"{self.set_dir}: no utterances in split {self.split!r}; build a larger set")
        needs_others = "tse" in self.tasks or ("vc" in self.tasks and self.vc_reference == "other-speaker")
        if needs_others and len(self.speakers) < 2:
            raise TrainDataError(f"split {self.split!r} has one speaker; tse/vc need two or more")
        if "tse" in self.tasks and not self.enrollable:
            raise TrainDataError(f"split {self.split!r}: no speaker has two utterances, tse needs an enrollment")


def read_manifest(set_dir: Path) -> dict:
    path = Path(set_dir) / MANIFEST_NAME
    if not path.is_file():
        raise TrainDataError(f"{path} not found: build the set first (metis-rt data build-train --out {set_dir})")
    return json.loads(path.read_text(encoding="utf-8"))


def describe(set_dir: str | Path) -> dict:
    """Per split: utterances, speakers and minutes, in all and per source."""
    manifest = read_manifest(Path(set_dir))
    out: dict = {}
    for utt in manifest["utterances"]:
        split = out.setdefault(utt["split"], {"utterances": 0, "minutes": 0.0, "speakers": set(), "sources": {}})
        source = split["sources"].setdefault(utt["source"], {"utterances": 0, "minutes": 0.0})
        for entry in (split, source):
            entry["utterances"] += 1
            entry["minutes"] += utt["duration_s"] / 60.0
        split["speakers"].add(utt["speaker"])
    for split in out.values():
        split["speakers"] = len(split["speakers"])
        for entry in (split, *split["sources"].values()):
            entry["minutes"] = round(entry["minutes"], 3)
    return out


def _task_weights(task: str | Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    weights = {task: 1.0} if isinstance(task, str) else dict(task)
    unknown = sorted(set(weights) - set(TASKS))
    if unknown or not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"task must be one of {TASKS} or a mapping of them to non-negative weights, got {task!r}")
    names = [t for t in TASKS if weights.get(t, 0) > 0]
    w = np.array([weights[t] for t in names], dtype=np.float64)
    return names, w / w.sum()
