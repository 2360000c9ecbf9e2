"""The synthetic voices of the training set and how one reads a list of sentences (one subprocess per call).

A *voice* is one engine setting (``espeak-en-us+m3``, ``flite-slt``); its *speaker* is who it sounds like.
Each espeak-ng accent × variant is a speaker of its own (with a base pitch fixed by its id, not by the seed,
so a voice sounds the same in every build). Flite and Festival voices are built from recordings of real
people, and two of them share a person: flite ``kal16`` and Festival ``kal_diphone`` (Kevin Lenzo), flite
``slt`` and Festival ``cmu_us_slt_arctic_hts`` (the CMU ARCTIC slt speaker); they share a speaker id, so a
TSE interferer or VC reference of "another speaker" never is the same person in another engine.

The espeak-ng variants are listed by ``espeak-ng --voices=variant`` (sorted), so the inventory follows the
installed espeak-ng-data; the manifest records the package versions.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metis_rt.audio.files import read_audio, to_mono
from metis_rt.data.seeding import rng_for
from metis_rt.train.sources import TrainDataError

ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# Variants (file names) that are not ordinary speech are left out: fast_test, whisper, female_whisper, Demonic,
# Half-LifeAnnouncementSystem.
ESPEAK_SKIP_VARIANTS = frozenset({"fast", "whisper", "whisperf", "Demonic", "announcer"})
ESPEAK_PITCH_RANGE = (30, 70)  # espeak-ng -p (0-99, default 50), drawn once per voice from its id
ESPEAK_WPM = 165  # espeak-ng -s at speed factor 1.0
ESPEAK_AMPLITUDE = 50  # espeak-ng -a (default 100 can reach full scale); levels are normalised afterwards
FESTIVAL_RESCALE = 0.5  # Festival's diphone voices can reach full scale; halved before the int16 file
FLITE_VOICES = {"awb": "cmu-awb", "kal16": "cmu-kal", "rms": "cmu-rms", "slt": "cmu-slt"}
FESTIVAL_VOICES = {"kal_diphone": "cmu-kal", "ked_diphone": "cstr-ked", "cmu_us_slt_arctic_hts": "cmu-slt"}
MBROLA_VOICES = {"mb-us1": "mbrola-us1", "mb-us2": "mbrola-us2", "mb-us3": "mbrola-us3", "mb-en1": "mbrola-en1"}
SPEED_RANGE = (0.88, 1.14)  # per-utterance speaking-rate factor (1.0 = the engine's default rate)
TOOL_TIMEOUT_S = 120.0
TTS_ENGINES = ("espeak-ng", "flite", "festival", "mbrola")


@dataclass(frozen=True)
class TtsVoice:
    id: str  # unique, e.g. "espeak-en-us+m3", "flite-slt", "festival-kal_diphone", "mbrola-us1"
    speaker: str  # who it sounds like (shared by voices of one person, see the module docstring)
    engine: str  # one of TTS_ENGINES (a `sources.Source` name)
    name: str  # the engine's voice argument
    pitch: int | None = None  # espeak-ng base pitch

    def to_json(self) -> dict:
        return dict(self.__dict__)


def tts_voices(engines: list[str] | tuple[str, ...]) -> list[TtsVoice]:
    """Every voice of the named engines, in a fixed order (engine order, then sorted)."""
    voices: list[TtsVoice] = []
    for engine in engines:
        if engine == "espeak-ng":
            voices += [_espeak_voice(accent, variant) for accent in ESPEAK_ACCENTS for variant in espeak_variants()]
        elif engine == "flite":
            voices += [TtsVoice(f"flite-{n}", s, "flite", n) for n, s in sorted(FLITE_VOICES.items())]
        elif engine == "festival":
            voices += [TtsVoice(f"festival-{n}", s, "festival", n) for n, s in sorted(FESTIVAL_VOICES.items())]
        elif engine == "mbrola":
            voices += [TtsVoice(s, s, "mbrola", n) for n, s in sorted(MBROLA_VOICES.items())]
        else:
            raise TrainDataError(f"unknown TTS engine {engine!r}; expected one of {', '.join(TTS_ENGINES)}")
    return voices


def espeak_variants() -> list[str]:
    """The installed espeak-ng voice variants (file names, e.g. "m3", "Storm"), sorted, odd ones skipped."""
    listing = _run(["espeak-ng", "--voices=variant"], "espeak-ng").decode("utf-8", errors="replace")
    names = {line.split()[4].removeprefix("!v/") for line in listing.splitlines()[1:] if len(line.split()) >= 5}
    return sorted(names - ESPEAK_SKIP_VARIANTS)


def _espeak_voice(accent: str, variant: str) -> TtsVoice:
    voice_id = f"espeak-{accent}+{variant}"
    pitch = int(rng_for(0, "espeak-pitch", voice_id).integers(ESPEAK_PITCH_RANGE[0], ESPEAK_PITCH_RANGE[1] + 1))
    return TtsVoice(voice_id, voice_id, "espeak-ng", f"{accent}+{variant}", pitch)


def synthesize(voice: TtsVoice, texts: list[str], speeds: list[float]) -> list[tuple[np.ndarray, int]]:
    """Read each text at its speed factor: [(mono float32 [N], sample rate)] in the order of `texts`."""
    if len(texts) != len(speeds):
        raise ValueError(f"one speed per text expected, got {len(texts)} texts and {len(speeds)} speeds")
    with tempfile.TemporaryDirectory(prefix="metis-tts-") as tmp:
        work = Path(tmp)
        wavs = [work / f"{i:04d}.wav" for i in range(len(texts))]
        if voice.engine == "festival":
            _festival(voice, texts, speeds, wavs, work)
        else:
            for i, (text, speed, wav) in enumerate(zip(texts, speeds, wavs, strict=True)):
                (work / f"{i:04d}.txt").write_text(text + "\n", encoding="utf-8")
                _run(_command(voice, work / f"{i:04d}.txt", speed, wav), voice.engine)
        return [_read(wav, voice) for wav in wavs]


def _command(voice: TtsVoice, text_file: Path, speed: float, wav: Path) -> list[str]:
    if voice.engine in ("espeak-ng", "mbrola"):
        command = ["espeak-ng", "-v", voice.name, "-a", str(ESPEAK_AMPLITUDE), "-s", str(round(ESPEAK_WPM * speed))]
        command += ["-p", str(voice.pitch)] if voice.pitch is not None else []
        return [*command, "-f", str(text_file), "-w", str(wav)]
    if voice.engine == "flite":
        stretch = f"duration_stretch={1.0 / speed:.4f}"
        return ["flite", "-voice", voice.name, "--setf", stretch, "-f", str(text_file), "-o", str(wav)]
    raise TrainDataError(f"no command line for engine {voice.engine!r}")


def _festival(voice: TtsVoice, texts: list[str], speeds: list[float], wavs: list[Path], work: Path) -> None:
    """One festival process reads every text (its start-up costs more than a sentence)."""
    lines = [f"(voice_{voice.name})"]
    for text, speed, wav in zip(texts, speeds, wavs, strict=True):
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / speed:.4f})")
        lines.append(f'(set! utt (utt.synth (Utterance Text "{quoted}")))')
        lines.append(f"(utt.wave.rescale utt {FESTIVAL_RESCALE})")
        lines.append(f'(utt.save.wave utt "{wav}" \'riff)')
    script = work / "script.scm"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _run(["festival", "-b", str(script)], "festival")


def _read(wav: Path, voice: TtsVoice) -> tuple[np.ndarray, int]:
    if not wav.is_file() or wav.stat().st_size <= 44:
        raise TrainDataError(
            f"{voice.engine} wrote no audio for voice {voice.name!r} ({wav.name}); try the voice by hand"
        )
    samples, sr = read_audio(wav)
    return to_mono(samples), sr


def _run(command: list[str], engine: str) -> bytes:
    """Run a TTS tool; a missing tool or a failure becomes `TrainDataError` with its stderr."""
    try:
        done = subprocess.run(command, capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise TrainDataError(
            f"{command[0]!r} is not on PATH: the {engine} source needs it; install the Debian package "
            f"(sudo apt-get install -y --no-install-recommends {command[0]}) or leave {engine!r} out of the sources"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise TrainDataError(f"{command[0]} ran over {TOOL_TIMEOUT_S:.0f} s: {' '.join(command)}") from exc
    if done.returncode != 0 or b"SIOD ERROR" in done.stderr or b"SIOD ERROR" in done.stdout:
        message = (done.stderr or done.stdout).decode("utf-8", errors="replace").strip()[-600:]
        raise TrainDataError(f"{engine} failed (exit {done.returncode}) running {' '.join(command)}:\n{message}")
    return done.stdout
