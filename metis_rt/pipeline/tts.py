"""Zero-shot TTS (Metis-TTS = MaskGCT T2S, or Metis-Omni in TTS mode) over the offline pipeline.

Official rule (``Metis.text2semantic``): the stage-1 target is
``target_len = Tp * len(text.encode("utf-8")) // len(prompt_text.encode("utf-8"))`` semantic frames, where ``Tp`` is
the voice prompt's semantic length - the text is spoken at the prompt's bytes-per-frame rate.

Two ways to speak:

* :meth:`TtsSynthesizer.utterance` - the whole text in one stage-1 call, exactly as the reference (parity);
* :meth:`TtsSynthesizer.stream` - the text cut into sentences (long ones at commas / spaces), each spoken with the
  same voice prompt and yielded as soon as it is decoded, so the first audio leaves after the first sentence
  instead of after the whole text. Each piece gets 5 ms fades at its edges (no click at the joins).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from metis_rt.config import TaskDecoding
from metis_rt.errors import TextInputError
from metis_rt.models.decoding import NoiseSource
from metis_rt.pipeline.offline import OUTPUT_SAMPLE_RATE, MetisPipeline, PipelineResult
from metis_rt.text.tokenizer import MAX_TEXT_CHARS, PhoneTokenizer

MAX_SEGMENT_CHARS = 200  # one stage-1 call; longer sentences are cut at commas, then spaces
MIN_SEGMENT_CHARS = 24  # shorter sentences are joined to the next one (very short utterances sound clipped)
EDGE_FADE_S = 0.005
MIN_PROMPT_S = 1.0
_SENTENCE_END = re.compile(r"(?<=[.!?;…。！？])\s+")
_CLAUSE_END = re.compile(r"(?<=[,:])\s+")


def target_length(prompt_frames: int, text: str, prompt_text: str) -> int:
    """Semantic frames for ``text`` at the voice prompt's speaking rate (the official rule)."""
    prompt_bytes = len(prompt_text.encode("utf-8"))
    if prompt_bytes == 0:
        raise TextInputError("the voice prompt's transcript is empty; TTS needs the words spoken in the prompt")
    return prompt_frames * len(text.encode("utf-8")) // prompt_bytes


def split_text(text: str, max_chars: int = MAX_SEGMENT_CHARS, min_chars: int = MIN_SEGMENT_CHARS) -> list[str]:
    """Cut ``text`` into speakable pieces: sentences, overlong ones at clause marks then at spaces.

    Every character except the whitespace at the cuts is kept, in order.
    """
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        pieces.extend(_cut_long(sentence, max_chars))
    merged: list[str] = []
    for piece in pieces:
        if merged and len(merged[-1]) < min_chars and len(merged[-1]) + 1 + len(piece) <= max_chars:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    if len(merged) > 1 and len(merged[-1]) < min_chars and len(merged[-2]) + 1 + len(merged[-1]) <= max_chars:
        merged[-2:] = [f"{merged[-2]} {merged[-1]}"]
    return [m for m in merged if m.strip()]


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    out: list[str] = []
    for clause in _CLAUSE_END.split(sentence):
        if len(clause) <= max_chars:
            out.append(clause)
            continue
        words, line = clause.split(), ""
        for word in words:
            if line and len(line) + 1 + len(word) > max_chars:
                out.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        if line:
            out.append(line)
    # re-join neighbouring clauses that fit together
    joined: list[str] = []
    for part in out:
        if joined and len(joined[-1]) + 1 + len(part) <= max_chars:
            joined[-1] = f"{joined[-1]} {part}"
        else:
            joined.append(part)
    return joined


@dataclass(frozen=True)
class TtsVoice:
    """A prepared voice prompt: its tokens and transcript (reused for every sentence spoken in it)."""

    semantic_ids: torch.Tensor  # [1, Tp]
    acoustic_ids: torch.Tensor  # [1, Ta, Q]
    text: str
    language: str
    phone_ids: torch.Tensor  # [1, P] the transcript's phone ids (phonemised once per voice)

    @property
    def prompt(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.semantic_ids, self.acoustic_ids


class TtsSynthesizer:
    """Text -> 24 kHz speech in a prompt's voice. Call under ``torch.inference_mode()``."""

    def __init__(
        self, pipeline: MetisPipeline, tokenizer: PhoneTokenizer, settings: TaskDecoding, variant: str = "tts"
    ):
        self.pipeline = pipeline
        self.tokenizer = tokenizer
        self.settings = settings
        self.variant = variant

    def voice(self, prompt_16k, prompt_24k, prompt_text: str, language: str = "en") -> TtsVoice:
        """Tokenise a voice prompt (16 and 24 kHz versions of the same recording) and check its transcript."""
        if not prompt_text or not prompt_text.strip():
            raise TextInputError("the voice prompt needs its transcript (the words spoken in it)")
        _, ids = self.tokenizer.g2p(prompt_text, language)  # a bad transcript fails now, not at the first sentence
        semantic, acoustic = self.pipeline.voice_prompt(prompt_16k, prompt_24k)
        return TtsVoice(semantic, acoustic, prompt_text, language, torch.tensor([ids], dtype=torch.int64))

    def utterance(self, voice: TtsVoice, text: str, noise: NoiseSource, language: str | None = None) -> PipelineResult:
        """The whole ``text`` in one stage-1 call (the reference's ``Metis.__call__`` for TTS)."""
        _check_text(text)
        phone_ids = self.tokenizer.phone_ids_after(voice.phone_ids, text, language or voice.language).phone_ids
        target_len = target_length(voice.semantic_ids.shape[1], text, voice.text)
        return self.pipeline.tts(voice.prompt, phone_ids, target_len, self.settings, noise, self.variant)

    def stream(
        self, voice: TtsVoice, text: str, noise: NoiseSource, language: str | None = None
    ) -> Iterator[np.ndarray]:
        """Speak ``text`` sentence by sentence: yields float32 24 kHz pieces as each is decoded.

        The whole text is checked (and converted to phones) before the first piece is decoded, so bad text fails
        before any audio leaves.
        """
        _check_text(text)
        language = language or voice.language
        pieces = split_text(text)
        tokens = [self.tokenizer.phone_ids_after(voice.phone_ids, piece, language).phone_ids for piece in pieces]
        for piece, phone_ids in zip(pieces, tokens, strict=True):
            target_len = target_length(voice.semantic_ids.shape[1], piece, voice.text)
            if target_len <= 0:
                continue
            result = self.pipeline.tts(voice.prompt, phone_ids, target_len, self.settings, noise, self.variant)
            yield _faded(result.wav.float().cpu().numpy())


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise TextInputError("nothing to say: the text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise TextInputError(
            f"the text has {len(text)} characters; at most {MAX_TEXT_CHARS} per request - send it in parts"
        )


def _faded(wav: np.ndarray) -> np.ndarray:
    n = min(int(EDGE_FADE_S * OUTPUT_SAMPLE_RATE), len(wav) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        wav = wav.copy()
        wav[:n] *= ramp
        wav[-n:] *= ramp[::-1]
    return wav
