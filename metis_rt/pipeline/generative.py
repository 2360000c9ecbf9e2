"""Offline TTS and L2S jobs (``metis-rt process --task tts|l2s``): read and check inputs, run, report.

Inputs are checked before any model is loaded (the CLI calls :func:`read_voice` / :func:`read_text` /
``visual.load_features`` first), so a typo costs no model load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metis_rt.config import TaskDecoding
from metis_rt.errors import TextInputError
from metis_rt.models.decoding import NoiseSource
from metis_rt.pipeline.offline import OUTPUT_SAMPLE_RATE, MetisPipeline
from metis_rt.pipeline.process import SSL_RATE, ProcessReport, load_reference
from metis_rt.pipeline.tts import TtsSynthesizer
from metis_rt.text.tokenizer import MAX_TEXT_CHARS, PhoneTokenizer


@dataclass(frozen=True)
class VoicePrompt:
    """A checked voice-prompt recording at both model rates."""

    wav_16k: torch.Tensor
    wav_24k: torch.Tensor

    @property
    def seconds(self) -> float:
        return len(self.wav_16k) / SSL_RATE


def read_voice(path: str | Path, *, allow_clipped: bool = False) -> VoicePrompt:
    """The voice prompt (any rate/format): 1 s at least; long prompts only cost time (warned)."""
    ref = load_reference(path, allow_clipped)  # checked; an overlong prompt is warned about
    return VoicePrompt(ref["reference_16k"], ref["reference_24k"])


def read_text(text: str | None, text_file: str | Path | None, what: str = "--text") -> str:
    """Text from the command line or a UTF-8 file; empty / overlong text is refused with the limit."""
    if (text is None) == (text_file is None):
        raise TextInputError(f"give exactly one of {what} and {what}-file")
    if text_file is not None:
        try:
            text = Path(text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TextInputError(f"cannot read {str(text_file)!r} as UTF-8 text: {exc}") from exc
    assert text is not None
    if not text.strip():
        raise TextInputError(f"{what}: nothing to say (the text is empty)")
    if len(text) > MAX_TEXT_CHARS:
        raise TextInputError(f"{what}: {len(text)} characters; at most {MAX_TEXT_CHARS} per call - split the text")
    return text.strip()


def run_tts(
    pipeline: MetisPipeline,
    tokenizer: PhoneTokenizer,
    settings: TaskDecoding,
    noise: NoiseSource,
    voice: VoicePrompt,
    prompt_text: str,
    text: str,
    *,
    language: str = "en",
    prompt_language: str | None = None,
    variant: str = "tts",
) -> tuple[np.ndarray, ProcessReport, float]:
    """Speak ``text`` sentence by sentence; returns (24 kHz audio, report, seconds until the first piece)."""
    tts = TtsSynthesizer(pipeline, tokenizer, settings, variant)
    started = time.perf_counter()
    first_audio_s = float("nan")
    pieces = []
    with torch.inference_mode():
        spoken = tts.voice(voice.wav_16k, voice.wav_24k, prompt_text, prompt_language or language)
        for piece in tts.stream(spoken, text, noise, language):
            if not pieces:
                first_audio_s = time.perf_counter() - started
            pieces.append(piece)
    out = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    elapsed = time.perf_counter() - started
    return (
        out,
        ProcessReport(len(out) / OUTPUT_SAMPLE_RATE, len(out) / OUTPUT_SAMPLE_RATE, len(pieces), elapsed),
        first_audio_s,
    )


def run_l2s(
    pipeline: MetisPipeline,
    settings: TaskDecoding,
    noise: NoiseSource,
    voice: VoicePrompt,
    features: np.ndarray,
    *,
    variant: str = "l2s",
) -> tuple[np.ndarray, ProcessReport]:
    """Speech for 25 fps visual ``features`` [T, D] in the prompt's voice; returns (24 kHz audio, report)."""
    from metis_rt.pipeline.visual import VISUAL_FPS

    started = time.perf_counter()
    with torch.inference_mode():
        prompt = pipeline.voice_prompt(voice.wav_16k, voice.wav_24k)
        vf = torch.from_numpy(features).to(dtype=pipeline.comps.dtype)
        result = pipeline.l2s(prompt, vf, settings, noise, variant)
    out = result.wav.float().cpu().numpy()
    elapsed = time.perf_counter() - started
    return out, ProcessReport(len(features) / VISUAL_FPS, len(out) / OUTPUT_SAMPLE_RATE, 1, elapsed)
