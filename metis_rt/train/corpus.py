"""The training set builder: sources checked, plan made, clean utterances rendered, ``manifest.json`` written.

Files: one WAV per utterance, mono 16-bit PCM at 24 kHz (`STORE_RATE`, the acoustic codec's rate); readers
resample to 16 kHz for the SSL side (`data.py`). Lengths are multiples of 3 samples, so the 16 kHz version has
exactly 2/3 of the samples. Each utterance is trimmed to its speech, given `EDGE_SILENCE_S` of silence at both
ends and normalised to an active level of -26 dBFS (lower only where it would clip). Degradation happens on
the fly when the set is read; nothing degraded is stored.

Deterministic: the same seed, size and sources give byte-identical files and manifest on the same installed
packages (no timestamps; everything sorted; every random draw named, see `plan.py`). Rendering runs in a small
thread pool (the work is in the TTS subprocesses); each job writes its own files, so order does not matter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from metis_rt.audio.files import resample, write_audio
from metis_rt.data.mixing import PEAK_LIMIT, SPEECH_LEVEL_DBFS, peak_safe_gain, set_active_level
from metis_rt.data.utterances import EDGE_SILENCE_S, trim_to_speech
from metis_rt.train import recordings, texts, voices
from metis_rt.train import sources as train_sources
from metis_rt.train.plan import VALID_FRACTION, PlannedUtterance, Speaker, make_plan

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
STORE_RATE = 24000  # Hz: files are stored at the acoustic codec's rate
RATE_STEP = 3  # stored lengths are multiples of this (24 kHz * 2/3 = 16 kHz exactly)
SUBTYPE = "PCM_16"
SPEECH_DIR = "speech"
TTS_BATCH = 16  # sentences per TTS job (one festival process reads a whole batch)
DEFAULT_WORKERS = 2
EXCLUSION_RULE = (
    "no recording of any speaker of the evaluation catalog (metis_rt.data.catalog.VOICES, held-out or not) and "
    "no file under an evaluation source directory is used; all other speakers are synthetic or KTuberling's"
)


def build_train_set(
    out_dir: Path,
    seed: int = 0,
    minutes: float = 60.0,
    progress: bool = True,
    *,
    sources: tuple[str, ...] = train_sources.DEFAULT_SOURCES,
    workers: int = DEFAULT_WORKERS,
    valid_fraction: float = VALID_FRACTION,
    root: Path = Path("/"),
) -> Path:
    """Render about `minutes` of clean speech under `out_dir`; return the path of its ``manifest.json``.

    `sources` are names from `train_sources.SOURCES` (add ``"mbrola"`` for the non-free MBROLA voices). `root` is the
    filesystem root the Debian data files are looked for under. Raises `TrainDataError` naming the packages to
    install when a source is missing, before anything is written.
    """
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    records = train_sources.require(list(sources_ordered(sources)), root)
    text_record = train_sources.require([train_sources.TEXT_SOURCE.name], root)[0]
    sentences = texts.load_sentences(root)
    pools, tts, recorded = _pools(sources_ordered(sources))
    plan = make_plan(seed, minutes, pools, sentences, voices.SPEED_RANGE, valid_fraction)
    out_dir = Path(out_dir)
    _prepare(out_dir)
    rendered = _run_jobs(_jobs(out_dir, seed, plan, tts, recorded, root), len(plan), workers, progress)
    recordings.check_not_evaluation([u["speaker"] for u in rendered], [f for u in rendered for f in u["files"]])
    used = {u["voice"] for u in rendered}
    manifest = {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "minutes_requested": minutes,
        "sample_rate": STORE_RATE,
        "format": f"WAV mono {SUBTYPE}",
        "speech_level_dbfs": SPEECH_LEVEL_DBFS,
        "peak_limit": PEAK_LIMIT,
        "sources": records,
        "text": text_record | {"sentences": len(sentences)},
        "excluded": {"speakers": sorted(recordings.EVALUATION_SPEAKERS), "rule": EXCLUSION_RULE},
        "voices": [v.to_json() for v in tts.values() if v.id in used]
        + [s.to_json() | {"voice": s.id, "speaker": s.id} for s in recorded.values() if s.id in used],
        "splits": _split_summary(rendered),
        "utterances": rendered,
    }
    path = out_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    logger.info("training set: %d utterances, %.1f min, in %s", len(rendered), _minutes(rendered), out_dir)
    return path


def sources_ordered(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The requested sources in catalog order, each once (so the argument's order does not change the set)."""
    unknown = sorted(set(names) - {s.name for s in train_sources.SOURCES})
    if unknown:
        raise train_sources.TrainDataError(
            f"unknown sources {unknown}; known: {[s.name for s in train_sources.SOURCES]}"
        )
    return tuple(s.name for s in train_sources.SOURCES if s.name in names)


def finish(x: np.ndarray, sr: int) -> np.ndarray:
    """Raw speech [N] at `sr` -> stored utterance [M] at `STORE_RATE` (see the module docstring)."""
    y = resample(np.asarray(x, dtype=np.float32), sr, STORE_RATE).astype(np.float32, copy=False)
    speech = trim_to_speech(y, STORE_RATE)
    if speech is None:
        raise train_sources.TrainDataError("a rendered utterance holds no speech (silent TTS output); check the voice")
    edge = np.zeros(round(EDGE_SILENCE_S * STORE_RATE), dtype=np.float32)
    pad = np.zeros(-(2 * edge.size + speech.size) % RATE_STEP, dtype=np.float32)
    y = set_active_level(np.concatenate([edge, speech, edge, pad]), STORE_RATE)
    return (y * peak_safe_gain(y)).astype(np.float32)


def _pools(names: tuple[str, ...]) -> tuple[dict[str, list[Speaker]], dict, dict]:
    """(planner pools per source, TTS voices by id, recorded speakers by id) of the named sources."""
    tts = {v.id: v for v in voices.tts_voices([n for n in names if n in voices.TTS_ENGINES])}
    recorded = {s.id: s for s in recordings.recorded_speakers()} if "ktuberling" in names else {}
    pools: dict[str, list[Speaker]] = {name: [] for name in names}
    for v in tts.values():
        pools[v.engine].append(Speaker(v.id, v.speaker, v.engine, "en"))
    for s in recorded.values():
        pools["ktuberling"].append(Speaker(s.id, s.id, "ktuberling", s.language, recorded=True))
    return pools, tts, recorded


def _jobs(
    out_dir: Path,
    seed: int,
    plan: list[PlannedUtterance],
    tts: dict[str, voices.TtsVoice],
    recorded: dict[str, recordings.RecordedSpeaker],
    root: Path,
) -> list[Callable[[], list[dict]]]:
    """One job per recorded speaker and per `TTS_BATCH` utterances of a TTS voice; each writes its own files."""
    jobs: list[Callable[[], list[dict]]] = []
    for voice_id in dict.fromkeys(u.voice for u in plan):
        mine = [u for u in plan if u.voice == voice_id]
        if voice_id in recorded:
            jobs.append(partial(_recorded_job, out_dir, seed, recorded[voice_id], mine, root))
        else:
            jobs += [
                partial(_tts_job, out_dir, tts[voice_id], mine[i : i + TTS_BATCH])
                for i in range(0, len(mine), TTS_BATCH)
            ]
    return jobs


def _run_jobs(jobs: list[Callable[[], list[dict]]], total: int, workers: int, progress: bool) -> list[dict]:
    rendered: list[dict] = []
    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=total, disable=not progress, desc="training set", unit="utt") as bar,
    ):
        for future in as_completed([pool.submit(job) for job in jobs]):
            done = future.result()
            rendered += done
            bar.update(len(done))
    return sorted(rendered, key=lambda u: u["id"])


def _tts_job(out_dir: Path, voice: voices.TtsVoice, batch: list[PlannedUtterance]) -> list[dict]:
    audio = voices.synthesize(voice, [u.text or "" for u in batch], [u.speed or 1.0 for u in batch])
    return [_write(out_dir, u, finish(x, sr), []) for u, (x, sr) in zip(batch, audio, strict=True)]


def _recorded_job(
    out_dir: Path, seed: int, speaker: recordings.RecordedSpeaker, planned: list[PlannedUtterance], root: Path
) -> list[dict]:
    made = recordings.recorded_utterances(speaker, seed, len(planned), STORE_RATE, root)
    if len(made) < len(planned):
        logger.info("%s: %d of %d utterances (its recordings ran out)", speaker.id, len(made), len(planned))
    return [_write(out_dir, u, finish(x, STORE_RATE), files) for u, (x, files) in zip(planned, made, strict=False)]


def _write(out_dir: Path, utt: PlannedUtterance, audio: np.ndarray, files: list[str]) -> dict:
    relative = f"{SPEECH_DIR}/{utt.source}/{utt.id}.wav"
    write_audio(out_dir / relative, audio, STORE_RATE, subtype=SUBTYPE)
    return {
        "id": utt.id,
        "path": relative,
        "voice": utt.voice,
        "speaker": utt.speaker,
        "source": utt.source,
        "language": utt.language,
        "split": utt.split,
        "text": utt.text,
        "speed": utt.speed,
        "samples": int(audio.size),
        "duration_s": round(audio.size / STORE_RATE, 4),
        "files": files,
    }


def _split_summary(rendered: list[dict]) -> dict:
    summary = {}
    for split in ("train", "valid"):
        mine = [u for u in rendered if u["split"] == split]
        summary[split] = {
            "utterances": len(mine),
            "speakers": len({u["speaker"] for u in mine}),
            "minutes": round(_minutes(mine), 3),
        }
    return summary


def _minutes(rendered: list[dict]) -> float:
    return sum(u["samples"] for u in rendered) / STORE_RATE / 60.0


def _prepare(out_dir: Path) -> None:
    """Create `out_dir`, or clear the files of the previous build in it; refuse a foreign non-empty folder."""
    manifest_path = out_dir / MANIFEST_NAME
    if out_dir.exists() and not out_dir.is_dir():
        raise train_sources.TrainDataError(f"{out_dir} exists and is not a directory; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not manifest_path.is_file():
        raise train_sources.TrainDataError(
            f"{out_dir} is not empty and holds no {MANIFEST_NAME} of an earlier build; choose a new or empty "
            "directory, or delete this one if an interrupted build left it"
        )
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise train_sources.TrainDataError(
                f"cannot read the earlier {manifest_path}: {exc}; remove {out_dir}"
            ) from exc
        base = out_dir.resolve()
        for entry in previous.get("utterances", []):
            path = (out_dir / entry.get("path", "")).resolve()
            if path.is_relative_to(base) and path.is_file():
                path.unlink()
        manifest_path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
