"""Utterances of 3–8 s built from one voice's recordings: trimmed, joined, level-normalised.

Prompts and game lines are often 1–2 s long. A `VoicePool` takes a voice's files in a seeded random order,
trims each to its speech (plus a short margin), skips clips that are too short or too long, and joins
consecutive clips with short pauses until an utterance of `MIN_UTTERANCE_S`–`MAX_UTTERANCE_S` is reached
(pauses and edge silences included). Utterances are built in order and cached, so utterance k of a voice
depends only on the seed and the voice, not on which other utterances were asked for first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metis_rt.data.catalog import Voice
from metis_rt.data.mixing import FRAME_S, active_frames, frame_powers, peak_safe_gain, set_active_level
from metis_rt.data.seeding import rng_for
from metis_rt.data.sources import SAMPLE_RATE, decode, voice_files

MIN_UTTERANCE_S = 3.0
MAX_UTTERANCE_S = 8.0
EDGE_SILENCE_S = 0.2  # digital silence before and after the speech of every utterance
CLIP_MARGIN_S = 0.05  # kept around a clip's speech when it is trimmed
CLIP_FADE_S = 0.005  # raised-cosine fade at both ends of a trimmed clip (no clicks against silence)
MIN_CLIP_SPEECH_S = 0.3  # clips with less speech than this are skipped
TRIM_RANGE_DB = 40.0  # frames this far below the loud frames count as silence when trimming
JOIN_GAP_S = (0.15, 0.35)  # pause between joined clips
TARGET_CONTENT_S = (3.0, 6.5)  # drawn per utterance: how much speech (with pauses) to aim for


@dataclass(frozen=True)
class Utterance:
    id: str  # "<voice>-u<index>", e.g. "allison-en-u03"
    voice: str
    speaker: str
    language: str
    audio: np.ndarray  # [N] float32 at SAMPLE_RATE, active level SPEECH_LEVEL_DBFS (lower only if it would clip)
    files: tuple[str, ...]  # the source files joined, as installed

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE


def utterance_id(voice_id: str, index: int) -> str:
    return f"{voice_id}-u{index:02d}"


def trim_to_speech(x: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray | None:
    """The clip from its first to its last speech frame (plus margins, faded); None if it has too little speech."""
    if x.size == 0 or not np.any(frame_powers(x, sr) > 0):
        return None
    active = np.flatnonzero(active_frames(x, sr, range_db=TRIM_RANGE_DB))
    frame = round(FRAME_S * sr)
    margin = round(CLIP_MARGIN_S * sr)
    start = max(0, active[0] * frame - margin)
    stop = min(x.size, (active[-1] + 1) * frame + margin)
    if (active[-1] + 1 - active[0]) * frame < MIN_CLIP_SPEECH_S * sr:
        return None
    clip = x[start:stop].astype(np.float32)
    fade = min(round(CLIP_FADE_S * sr), clip.size // 2)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade, endpoint=False))
    clip[:fade] *= ramp
    clip[clip.size - fade :] *= ramp[::-1]
    return clip


class VoicePool:
    """The utterances of one voice, built lazily and in order from its files (see the module docstring)."""

    def __init__(self, voice: Voice, seed: int, root: Path = Path("/")):
        self.voice = voice
        self._root = Path(root)
        files = voice_files(voice, root)
        order = rng_for(seed, "clip-order", voice.id).permutation(len(files))
        self._queue = [files[i] for i in order]
        self._next = 0
        self._pending: tuple[str, np.ndarray] | None = None
        self._rng = rng_for(seed, "utterances", voice.id)
        self._built: list[Utterance] = []

    def get(self, index: int) -> Utterance:
        while len(self._built) <= index:
            self._built.append(self._build(len(self._built)))
        return self._built[index]

    def _take_clip(self) -> tuple[str, np.ndarray] | None:
        """The next usable clip as (installed path, trimmed audio), or None when the voice has run out."""
        if self._pending is not None:
            clip, self._pending = self._pending, None
            return clip
        while self._next < len(self._queue):
            path = self._queue[self._next]
            self._next += 1
            trimmed = trim_to_speech(decode(path))
            if trimmed is not None:
                return "/" + path.relative_to(self._root).as_posix(), trimmed
        return None

    def _build(self, index: int) -> Utterance:
        edge = round(EDGE_SILENCE_S * SAMPLE_RATE)
        max_content = round(MAX_UTTERANCE_S * SAMPLE_RATE) - 2 * edge
        min_content = round(MIN_UTTERANCE_S * SAMPLE_RATE) - 2 * edge
        target = round(self._rng.uniform(*TARGET_CONTENT_S) * SAMPLE_RATE)
        parts, files, length = [], [], 0
        while length < target:
            clip = self._take_clip()
            if clip is None:
                break
            gap = round(self._rng.uniform(*JOIN_GAP_S) * SAMPLE_RATE) if parts else 0
            if length + gap + clip[1].size > max_content:
                if length >= min_content:
                    self._pending = clip
                    break
                continue  # does not fit even into an empty utterance, or would overshoot: skipped
            parts += [np.zeros(gap, dtype=np.float32), clip[1]]
            files.append(clip[0])
            length += gap + clip[1].size
        if length < min_content:
            raise ValueError(
                f"voice {self.voice.id!r} has run out of speech after {index} utterance(s) "
                f"({len(self._queue)} files); the plan asks for more utterances than it holds"
            )
        silence = np.zeros(edge, dtype=np.float32)
        audio = set_active_level(np.concatenate([silence, *parts, silence]), SAMPLE_RATE)
        audio = (audio * peak_safe_gain(audio)).astype(np.float32)
        v = self.voice
        return Utterance(utterance_id(v.id, index), v.id, v.speaker, v.language, audio, tuple(files))
