"""The server's TTS side, shared by all TTS sessions: decoding settings, voices, text checks, device calls.

Model work (tokenising a voice prompt, speaking a sentence) runs on the engine thread through
:meth:`Engine.submit <metis_rt.streaming.engine.Engine.submit>`, one call at a time per session, so live SE/TSE/VC
streams get their turns between TTS sentences. Text checks (language, espeak-ng phonemes) run in a worker thread:
the event loop never waits on them, the device never either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import numpy as np
import torch

from metis_rt.config import OfficialConfig, TaskDecoding, stage1_variant
from metis_rt.errors import AudioInputError, ConfigError, TextFrontendError, TextInputError
from metis_rt.models.decoding import GumbelNoise, NoiseSource, ZeroNoise
from metis_rt.pipeline.offline import MetisPipeline
from metis_rt.pipeline.process import DecodingOverrides, task_settings
from metis_rt.pipeline.tts import TtsSynthesizer, TtsVoice
from metis_rt.server import protocol as proto
from metis_rt.server.config import ServerConfig
from metis_rt.server.voices import SSL_RATE, VoiceLibrary, decode_reference
from metis_rt.text.g2p import check_language
from metis_rt.text.tokenizer import PhoneTokenizer

log = logging.getLogger(__name__)

T = TypeVar("T")
WARMUP_TEXT = "Warm up."
WARMUP_PROMPT_S = 1.0


class TtsService:
    """What every TTS session of a server uses. Create it on the event loop's thread; methods are coroutines
    except :meth:`settings`, :meth:`synthesizer`, :meth:`noise` (cheap) and :meth:`warm_up` (blocking)."""

    def __init__(
        self,
        pipeline: MetisPipeline,
        tokenizer: PhoneTokenizer,
        official: OfficialConfig,
        cfg: ServerConfig,
        voices: VoiceLibrary,
        submit: Callable[[Callable[[], object]], Future],
        *,
        deterministic: bool = False,
    ):
        if cfg.tts_max_pending < 1:
            raise ConfigError(f"tts_max_pending must be at least 1, got {cfg.tts_max_pending}")
        self.pipeline = pipeline
        self.tokenizer = tokenizer
        self.official = official
        self.max_pending = cfg.tts_max_pending
        self.voices = voices
        self.submit = submit
        self.deterministic = deterministic
        options = {"stage1_steps": cfg.tts_stage1_steps, "s2a_steps": cfg.tts_s2a_steps}
        try:
            self.base_settings = self._settings(options)
        except proto.ProtocolError as exc:
            raise ConfigError(f"server TTS steps: {exc.message}") from None

    # --- settings -------------------------------------------------------------------------------
    def settings(self, options: proto.Options) -> TaskDecoding:
        """The server's TTS settings with a session's ``stage1_steps`` / ``s2a_steps``; ProtocolError if invalid."""
        return self._settings({"stage1_steps": options.stage1_steps, "s2a_steps": options.s2a_steps}, base=True)

    def _settings(self, options: dict, base: bool = False) -> TaskDecoding:
        start = self.base_settings if base else self.official.decoding.get("tts")
        if start is None:
            raise ConfigError("configs/metis.yaml has no decoding settings for tts")
        stage1, s2a = options.get("stage1_steps"), options.get("s2a_steps")
        if s2a is not None and len(s2a) != len(start.s2a.steps_full):
            raise proto.ProtocolError(
                "invalid_options", f"s2a_steps needs {len(start.s2a.steps_full)} values, got {len(s2a)}"
            )
        official = dataclasses.replace(self.official, decoding={**self.official.decoding, "tts": start})
        try:
            return task_settings(official, "tts", DecodingOverrides(stage1_steps=stage1, s2a_steps=s2a))
        except ConfigError as exc:
            raise proto.ProtocolError("invalid_options", str(exc)) from None

    def synthesizer(self, family: str, settings: TaskDecoding) -> TtsSynthesizer:
        return TtsSynthesizer(self.pipeline, self.tokenizer, settings, stage1_variant("tts", family))

    def noise(self) -> NoiseSource:
        return ZeroNoise() if self.deterministic else GumbelNoise(None, device=self.pipeline.comps.device)

    # --- device and thread calls ----------------------------------------------------------------
    async def on_device(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the engine thread (between batch steps) under inference mode; await its result."""

        def call():
            with torch.inference_mode():
                return fn()

        return await asyncio.wrap_future(self.submit(call))

    @staticmethod
    def check_language(language: str, request_id: proto.RequestId = None) -> None:
        """ProtocolError ``unsupported_language`` unless the text frontend speaks ``language``."""
        try:
            check_language(language)
        except TextInputError as exc:
            raise proto.ProtocolError("unsupported_language", str(exc), request_id) from None

    async def check_text(self, text: str, language: str, request_id: proto.RequestId = None) -> None:
        """Refuse what cannot be spoken before it is queued: ``unsupported_language``, ``invalid_text``."""
        self.check_language(language, request_id)
        try:
            await asyncio.to_thread(self.tokenizer.g2p, text, language)
        except TextInputError as exc:
            raise proto.ProtocolError("invalid_text", str(exc), request_id) from None
        except TextFrontendError as exc:
            raise proto.ProtocolError("tts_unavailable", str(exc), request_id) from None

    # --- voices ---------------------------------------------------------------------------------
    async def voice(
        self,
        synth: TtsSynthesizer,
        *,
        name: str | None,
        reference: bytes | None,
        reference_text: str | None,
        language: str,
    ) -> TtsVoice:
        """Tokenise a voice prompt (a server voice or an uploaded recording) with its transcript, once."""
        self.check_language(language)
        audio16, audio24, text = await asyncio.to_thread(self._voice_audio, name, reference, reference_text)
        try:
            await asyncio.to_thread(self.tokenizer.g2p, text, language)  # a bad transcript fails off the device
        except TextInputError as exc:
            raise proto.ProtocolError("invalid_reference_text", f"reference_text: {exc}") from None
        except TextFrontendError as exc:
            raise proto.ProtocolError("tts_unavailable", str(exc)) from None
        try:
            return await self.on_device(lambda: synth.voice(audio16, audio24, text, language))
        except (TextInputError, AudioInputError) as exc:
            raise proto.ProtocolError("invalid_reference", str(exc)) from None

    def _voice_audio(
        self, name: str | None, reference: bytes | None, reference_text: str | None
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """(16 kHz, 24 kHz, transcript) of a voice prompt; blocking (file reads, decoding, resampling)."""
        if name is None:
            assert reference is not None and reference_text is not None  # protocol.parse_client_message checked
            return (*decode_reference(reference, proto.MAX_REFERENCE_S), reference_text)
        try:
            transcript = reference_text or self.voices.transcript(name)
            audio16, audio24 = self.voices.audio(name)
        except KeyError:
            # the names are not listed (any page could read them): /healthz lists them, behind the Host check
            raise proto.ProtocolError("unknown_voice", f"no voice {proto.excerpt(name)} on this server") from None
        except TextInputError as exc:
            raise proto.ProtocolError("invalid_reference_text", str(exc)) from None
        if transcript is None:
            raise proto.ProtocolError(
                "voice_text_required",
                f"voice {name!r} has no transcript ({name}.txt beside its audio on the server): send reference_text "
                f"with the words spoken in it; voices with one: {self.voices.with_transcript()}",
            )
        return audio16, audio24, transcript

    # --- start-up -------------------------------------------------------------------------------
    def warm_up(self, families: tuple[str, ...]) -> None:
        """Blocking: load espeak-ng and run each TTS model once (1 step, silent prompt) on the engine thread."""
        one_step = dataclasses.replace(
            proto.Options(), stage1_steps=1, s2a_steps=(1,) * len(self.base_settings.s2a.steps_full)
        )
        silence16 = np.zeros(int(WARMUP_PROMPT_S * SSL_RATE) + 240, dtype=np.float32)
        silence24 = np.zeros(int(WARMUP_PROMPT_S * 24000), dtype=np.float32)
        for family in families:
            synth = self.synthesizer(family, self.settings(one_step))

            def speak(synth=synth):
                with torch.inference_mode():
                    voice = synth.voice(silence16, silence24, WARMUP_TEXT, proto.DEFAULT_LANGUAGE)
                    return synth.utterance(voice, WARMUP_TEXT, ZeroNoise())

            self.submit(speak).result()
        log.info("TTS warm-up done for stage-1 %s", ", ".join(families))
