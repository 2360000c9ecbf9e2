"""Turning a plan into audio files and manifest entries (one `Renderer` per build).

Levels: every utterance has an active level of -26 dBFS; noise and interferers are scaled against the speech
*as it is in the input* (reverberant for reverberant items). If a mixture would peak above `PEAK_LIMIT`, the
mixture and its clean reference are scaled down together, so ``input = clean-part + interference`` holds at
the level written. The clean reference of a reverberant item is the dry speech (time-aligned: the RIR's
direct path is its sample 0). Files are WAV, 16 kHz mono, 16-bit PCM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metis_rt.audio.files import write_audio
from metis_rt.data.catalog import RECORDED_NOISES, voice_by_id
from metis_rt.data.mixing import (
    apply_rir,
    peak_safe_gain,
    scale_interferer_to_sir,
    scale_noise_to_snr,
)
from metis_rt.data.noise import SYNTHETIC_KINDS, babble, event_sequence, fit_speech, loop_to_length, synthetic_noise
from metis_rt.data.plan import SeScene, TseItem, UttRef, VcItem, is_heldout
from metis_rt.data.rir import synthetic_rir
from metis_rt.data.seeding import rng_for
from metis_rt.data.sources import SAMPLE_RATE, decode, noise_files
from metis_rt.data.utterances import Utterance, VoicePool

SUBTYPE = "PCM_16"
SPEECH_DIR = "speech"  # level-normalised utterances: TSE enrollments, VC sources and references
CONDITION_KEYS = (
    "snr_db",
    "reverb",
    "rt60_s",
    "drr_db",
    "noise",
    "noise_detail",
    "interferer",
    "interferer_language",
    "sir_db",
    "reference_speaker",
    "reference_language",
)


class Renderer:
    """Builds utterances on demand and writes items under `out_dir`; remembers every utterance it used."""

    def __init__(self, out_dir: Path, seed: int, root: Path):
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.root = Path(root)
        self._pools: dict[str, VoicePool] = {}
        self._recorded: dict[str, list[tuple[str, np.ndarray]]] = {}
        self.used: dict[str, Utterance] = {}  # utterance id -> utterance
        self.written: dict[str, str] = {}  # utterance id -> relative path of its speech file

    # ------------------------------------------------------------------ utterances
    def utterance(self, ref: UttRef) -> Utterance:
        if ref.voice not in self._pools:
            self._pools[ref.voice] = VoicePool(voice_by_id(ref.voice), self.seed, self.root)
        utt = self._pools[ref.voice].get(ref.index)
        self.used[utt.id] = utt
        return utt

    def speech_file(self, ref: UttRef) -> str:
        utt = self.utterance(ref)
        if utt.id not in self.written:
            self.written[utt.id] = self._write(f"{SPEECH_DIR}/{utt.id}.wav", utt.audio)
        return self.written[utt.id]

    def _write(self, relative: str, audio: np.ndarray) -> str:
        write_audio(self.out_dir / relative, audio, SAMPLE_RATE, subtype=SUBTYPE)
        return relative

    # ------------------------------------------------------------------ tasks
    def se_scene(self, scene: SeScene) -> list[dict]:
        """All items of one scene: the same noise and room at every SNR, dry and reverberant."""
        clean = self.utterance(scene.clean)
        noise, detail = self._scene_noise(scene, clean.audio.size)
        rir = synthetic_rir(rng_for(self.seed, "rir", scene.clean.id), SAMPLE_RATE, scene.rt60_s, scene.drr_db)
        wet = apply_rir(clean.audio, rir)
        items = []
        for reverb in (False, True):
            speech = wet if reverb else clean.audio
            for snr_db in scene.snrs_db:
                item_id = scene.item_id(snr_db, reverb)
                mixture = speech + scale_noise_to_snr(speech, noise, snr_db, SAMPLE_RATE)
                gain = peak_safe_gain(mixture)
                condition = {"snr_db": snr_db, "reverb": reverb, "noise": scene.noise, "noise_detail": detail}
                if reverb:
                    condition |= {"rt60_s": scene.rt60_s, "drr_db": scene.drr_db}
                items.append(
                    _item(
                        item_id,
                        "se",
                        self._write(f"se/noisy/{item_id}.wav", mixture * gain),
                        self._write(f"se/clean/{item_id}.wav", clean.audio * gain),
                        None,
                        clean,
                        condition,
                        [scene.clean, *scene.babble],
                    )
                )
        return items

    def tse(self, item: TseItem) -> dict:
        target = self.utterance(item.target)
        interferer = self.utterance(item.interferer)
        n = target.audio.size
        rng = rng_for(self.seed, "tse-mix", item.id)
        fitted = fit_speech(rng, interferer.audio, n, SAMPLE_RATE)
        competing = scale_interferer_to_sir(target.audio, fitted, item.sir_db, SAMPLE_RATE)
        mixture = target.audio + competing
        detail = None
        if item.noise is not None:
            noise, detail = synthetic_noise(item.noise, rng, n, SAMPLE_RATE)
            mixture = mixture + scale_noise_to_snr(target.audio, noise, item.snr_db, SAMPLE_RATE)
        gain = peak_safe_gain(mixture)
        condition = {
            "sir_db": item.sir_db,
            "interferer": interferer.speaker,
            "interferer_language": interferer.language,
            "noise": item.noise,
            "snr_db": item.snr_db,
            "noise_detail": detail or None,
        }
        return _item(
            item.id,
            "tse",
            self._write(f"tse/mixture/{item.id}.wav", mixture * gain),
            self._write(f"tse/clean/{item.id}.wav", target.audio * gain),
            self.speech_file(item.enrollment),
            target,
            condition,
            [item.target, item.enrollment, item.interferer],
        )

    def vc(self, item: VcItem) -> dict:
        source = self.utterance(item.source)
        reference = self.utterance(item.reference)
        condition = {"reference_speaker": reference.speaker, "reference_language": reference.language}
        return _item(
            item.id,
            "vc",
            self.speech_file(item.source),
            None,
            self.speech_file(item.reference),
            source,
            condition,
            [item.source, item.reference],
        )

    # ------------------------------------------------------------------ noise
    def _scene_noise(self, scene: SeScene, n: int) -> tuple[np.ndarray, dict | None]:
        rng = rng_for(self.seed, "se-noise", scene.clean.id)
        if scene.noise in SYNTHETIC_KINDS:
            noise, params = synthetic_noise(scene.noise, rng, n, SAMPLE_RATE)
            return noise, params or None
        if scene.noise == "babble":
            talkers = [self.utterance(ref) for ref in scene.babble]
            return babble(rng, [t.audio for t in talkers], n, SAMPLE_RATE), {"talkers": [t.id for t in talkers]}
        recordings = self._recordings(scene.noise)
        if scene.noise == "music":
            path, track = recordings[int(rng.integers(len(recordings)))]
            return loop_to_length(rng, track, n, SAMPLE_RATE), {"file": path}
        if scene.noise == "events":
            return event_sequence(rng, [audio for _, audio in recordings], n, SAMPLE_RATE), None
        raise ValueError(f"unknown noise {scene.noise!r} in the plan")

    def _recordings(self, noise_id: str) -> list[tuple[str, np.ndarray]]:
        """(installed path, audio) of a recorded noise's files, decoded once per build."""
        if noise_id not in self._recorded:
            spec = next(r for r in RECORDED_NOISES if r.id == noise_id)
            files = noise_files(spec, self.root)
            self._recorded[noise_id] = [("/" + p.relative_to(self.root).as_posix(), decode(p)) for p in files]
        return self._recorded[noise_id]


def _item(
    item_id: str,
    task: str,
    input_path: str,
    clean_path: str | None,
    enrollment_path: str | None,
    speaker: Utterance,
    condition: dict,
    refs: list[UttRef],
) -> dict:
    full_condition = dict.fromkeys(CONDITION_KEYS) | {"reverb": False} | condition
    return {
        "id": item_id,
        "task": task,
        "input": input_path,
        "clean": clean_path,
        "enrollment": enrollment_path,
        "speaker": speaker.speaker,
        "language": speaker.language,
        "condition": full_condition,
        "utterances": [ref.id for ref in refs],
        "split": "heldout" if is_heldout(*refs) else "test",
    }
