"""Real recorded speakers for training, and the rule that keeps every evaluation speaker out.

The evaluation set (`metis_rt.data.catalog`) uses every recorded voice Debian offers in sentences at 16 kHz
or more (the Asterisk prompts, the Fish Fillets actors, the ALSA voice). The rule here is the simplest safe
one: training uses **no recording of any speaker in the evaluation catalog** (held-out or not) and no file
under an evaluation source directory, so no test item can have been heard in training in any form.

What is left in Debian main is KTuberling's word recordings: one speaker per language, isolated words, at
22.05-48 kHz (the 8 kHz languages are left out: they would teach the models a telephone band as "clean").
A speaker's words are taken in a seeded order, trimmed to their speech and joined with short pauses into
utterances of 3-6.5 s, like the evaluation builder does with short prompts (`data/utterances.py`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metis_rt.audio.files import read_audio, resample, to_mono
from metis_rt.data.catalog import SOURCES as EVAL_SOURCES
from metis_rt.data.catalog import VOICES as EVAL_VOICES
from metis_rt.data.seeding import rng_for
from metis_rt.data.utterances import JOIN_GAP_S, TARGET_CONTENT_S, trim_to_speech
from metis_rt.train.sources import TrainDataError, source_by_name, under_root

KTUBERLING_SOUNDS = source_by_name("ktuberling").files[0]
# Languages recorded at 22.05 kHz or more (sr@latin and the other Serbian folders hold copies of sr).
KTUBERLING_LANGUAGES = ("ca", "da", "de", "el", "en", "ga", "gl", "lt", "nn", "ro", "ru", "sl", "sr", "uk", "wa")
AUDIO_SUFFIXES = (".ogg", ".opus", ".wav", ".flac")
MIN_RECORDED_S = 2.0  # a speaker's last, partial utterance is kept only if at least this long
EVALUATION_SPEAKERS = frozenset(v.speaker for v in EVAL_VOICES)
EVALUATION_DIRS = tuple(sorted({s.path for s in EVAL_SOURCES}))


@dataclass(frozen=True)
class RecordedSpeaker:
    id: str  # "ktuberling-en"
    language: str  # ISO 639-1
    directory: str  # absolute, as installed

    def to_json(self) -> dict:
        return dict(self.__dict__)


def recorded_speakers() -> list[RecordedSpeaker]:
    speakers = [
        RecordedSpeaker(f"ktuberling-{lang}", lang, f"{KTUBERLING_SOUNDS}/{lang}") for lang in KTUBERLING_LANGUAGES
    ]
    check_not_evaluation([s.id for s in speakers], [s.directory for s in speakers])
    return speakers


def check_not_evaluation(speakers: list[str], paths: list[str]) -> None:
    """`TrainDataError` if any speaker is an evaluation speaker or any path lies under an evaluation source."""
    bad = sorted(set(speakers) & EVALUATION_SPEAKERS)
    bad += sorted(p for p in paths if any(p == d or p.startswith(d.rstrip("/") + "/") for d in EVALUATION_DIRS))
    if bad:
        raise TrainDataError(f"training data must not use evaluation speakers or their files; found: {', '.join(bad)}")


def speaker_files(speaker: RecordedSpeaker, root: Path = Path("/")) -> list[Path]:
    """The speaker's audio files, sorted, without exact duplicates (the first in sorted order is kept)."""
    folder = under_root(root, speaker.directory)
    seen, files = set(), []
    for path in sorted(p for p in folder.iterdir() if p.suffix in AUDIO_SUFFIXES) if folder.is_dir() else []:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            files.append(path)
    if not files:
        raise TrainDataError(f"no recordings of {speaker.id} in {folder}; install ktuberling-data")
    return files


def recorded_utterances(
    speaker: RecordedSpeaker, seed: int, count: int, sr: int, root: Path = Path("/")
) -> list[tuple[np.ndarray, list[str]]]:
    """Up to `count` utterances (mono float32 [N] at `sr`, the installed files joined), fewer if words run out."""
    files = speaker_files(speaker, root)
    rng = rng_for(seed, "recorded", speaker.id)
    queue = [files[i] for i in rng.permutation(len(files))]
    utterances: list[tuple[np.ndarray, list[str]]] = []
    while queue and len(utterances) < count:
        target = round(rng.uniform(*TARGET_CONTENT_S) * sr)
        parts, used, length = [], [], 0
        while queue and length < target:
            path = queue.pop(0)
            clip = _clip(path, sr)
            if clip is None:
                continue
            gap = np.zeros(round(rng.uniform(*JOIN_GAP_S) * sr) if parts else 0, dtype=np.float32)
            parts += [gap, clip]
            used.append("/" + path.relative_to(root).as_posix())
            length += gap.size + clip.size
        if length >= MIN_RECORDED_S * sr:
            utterances.append((np.concatenate(parts), used))
    return utterances


def _clip(path: Path, sr: int) -> np.ndarray | None:
    samples, file_sr = read_audio(path)
    return trim_to_speech(resample(to_mono(samples), file_sr, sr).astype(np.float32, copy=False), sr)
