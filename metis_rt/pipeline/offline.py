"""Offline (whole-utterance) SE / TSE / VC / TTS / L2S exactly as the official ``Metis.__call__``.

SE:      cond = ssl(source); semantic = stage1(prompt=[], cond); acoustic = s2a(semantic, prompt=[])
TSE/VC:  prompt_sem = codec(ssl(reference)); prompt_ac = acoustic_codec(reference_24k);
         cond = ssl(reference ++ source)  (one extractor + w2v pass over the concatenation);
         semantic = prompt_sem ++ stage1(prompt_sem, cond, target_len = len(cond) - len(prompt_sem));
         acoustic = s2a(semantic, prompt_ac)  -> len(semantic) - len(prompt_ac) frames
TTS:     prompt_sem, prompt_ac from the voice prompt; phone ids = g2p(prompt text) ++ g2p(text);
         semantic = prompt_sem ++ stage1(prompt_sem, phones, target_len = Tp * bytes(text) // bytes(prompt text))
L2S:     prompt as TTS; cond = [0 * Tp ; visual features upsampled 25 -> 50 Hz]; target_len = 2 * T_video
wav = acoustic codec decoder (24 kHz, 480 samples per frame).

The reference does not reconcile the semantic (ceil(n_fbank/2)) and acoustic (N/480) prompt lengths; neither do we
(parity README section 7.1), so TSE/VC output is one frame shorter than the stage-1 target for whole-second prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from metis_rt.config import S2ADecoding, TaskDecoding
from metis_rt.errors import AudioInputError
from metis_rt.models.decoding import NoiseSource
from metis_rt.models.stage1 import Stage1Inputs, Stage1Model
from metis_rt.pipeline.components import MetisComponents

OUTPUT_SAMPLE_RATE = 24000
PROMPT_TASKS = ("tse", "vc")


@dataclass
class PipelineResult:
    wav: torch.Tensor  # [N] at 24 kHz
    semantic_ids: torch.Tensor  # [1, Tp + Tt] (prompt included)
    acoustic_ids: torch.Tensor  # [1, Ta, Q] generated frames only
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)


def _as_tensor(wav: np.ndarray | torch.Tensor) -> torch.Tensor:
    return wav if isinstance(wav, torch.Tensor) else torch.from_numpy(np.asarray(wav))


class MetisPipeline:
    """The task chain over loaded components. Call under ``torch.inference_mode()``."""

    def __init__(self, comps: MetisComponents):
        self.comps = comps

    # --- building blocks ------------------------------------------------------------------------
    def semantic_tokens(self, wav_16k) -> torch.Tensor:
        """16 kHz waveform [N] -> semantic ids [1, T]."""
        ids, _ = self.comps.semantic_codec.quantize(self.comps.ssl(wav_16k))
        return ids

    def acoustic_tokens(self, wav_24k) -> torch.Tensor:
        """24 kHz waveform [N] -> acoustic ids [1, N/480, Q]."""
        c = self.comps
        return c.acoustic_codec.encode(_as_tensor(wav_24k).to(device=c.device, dtype=c.dtype)[None])

    def semantic_to_acoustic(
        self, semantic_ids: torch.Tensor, prompt_ids: torch.Tensor, s: S2ADecoding, noise: NoiseSource
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """semantic [B, Tp+Tt], acoustic prompt [B, Tp, Q] -> (ids [B, Tt, Q], layer-0 ids [B, Tt, 1])."""
        common = {"rescale_cfg": s.rescale_cfg, "temperature": s.temperature, "filter_thres": s.filter_thres}
        layer0 = self.comps.s2a_1layer.generate(
            semantic_ids, prompt_ids, s.steps_1layer, cfg=s.cfg_1layer, noise=noise, **common
        )
        ids = self.comps.s2a_full.generate(
            semantic_ids, prompt_ids, s.steps_full, cfg=s.cfg_full, noise=noise, gt_code=layer0, **common
        )
        return ids, layer0

    def code_to_wav(self, acoustic_ids: torch.Tensor) -> torch.Tensor:
        """[B, T, Q] -> [B, T * 480] at 24 kHz."""
        return self.comps.acoustic_codec.decode(acoustic_ids)

    # --- tasks ----------------------------------------------------------------------------------
    def run(
        self,
        task: str,
        source_16k,
        settings: TaskDecoding,
        noise: NoiseSource,
        reference_16k=None,
        reference_24k=None,
        variant: str | None = None,
    ) -> PipelineResult:
        """Run ``task`` with the stage-1 model ``variant`` (default: the task's own model; Omni serves all)."""
        c = self.comps
        model = self._stage1(variant or task)
        inter: dict[str, torch.Tensor] = {}
        n_q = c.cfg.codec_decoder.num_quantizers
        if task in PROMPT_TASKS:
            if reference_16k is None or reference_24k is None:
                raise AudioInputError(f"task {task!r} needs a reference recording of the target speaker")
            ref16, src16 = _as_tensor(reference_16k), _as_tensor(source_16k)
            prompt_sem = self.semantic_tokens(ref16)
            prompt_ac = self.acoustic_tokens(reference_24k)
            cond = c.ssl(torch.cat([ref16, src16]))
            inter.update(prompt_semantic_ids=prompt_sem, prompt_acoustic_ids=prompt_ac)
        else:
            cond = c.ssl(source_16k)
            prompt_sem = torch.zeros(1, 0, dtype=torch.long, device=c.device)
            prompt_ac = torch.zeros(1, 0, n_q, dtype=torch.long, device=c.device)
        target_len = cond.shape[1] - prompt_sem.shape[1]
        if target_len <= 0:
            raise AudioInputError("the source recording is too short to produce any output frame")
        inter["cond_features"] = cond
        return self._generate(model, Stage1Inputs(prompt_sem, cond), target_len, prompt_ac, settings, noise, inter)

    def voice_prompt(self, prompt_16k, prompt_24k) -> tuple[torch.Tensor, torch.Tensor]:
        """A voice prompt's (semantic ids [1, Tp], acoustic ids [1, Ta, Q]) (TTS / L2S / TSE / VC)."""
        return self.semantic_tokens(_as_tensor(prompt_16k)), self.acoustic_tokens(prompt_24k)

    def tts(
        self,
        prompt: tuple[torch.Tensor, torch.Tensor],
        phone_ids: torch.Tensor,
        target_len: int,
        settings: TaskDecoding,
        noise: NoiseSource,
        variant: str = "tts",
    ) -> PipelineResult:
        """Speak: phone ids [1, P] (prompt text's ++ target text's) in the voice of ``prompt`` (from
        :meth:`voice_prompt`); ``target_len`` semantic frames (see ``pipeline.tts.target_length``)."""
        model = self._stage1(variant)
        prompt_sem, prompt_ac = prompt
        if target_len <= 0:
            raise AudioInputError("the text is too short for the voice prompt: no frame to generate")
        inputs = Stage1Inputs(prompt_sem, phone_ids=phone_ids.to(self.comps.device))
        inter = {"prompt_semantic_ids": prompt_sem, "prompt_acoustic_ids": prompt_ac, "phone_ids": phone_ids}
        return self._generate(model, inputs, target_len, prompt_ac, settings, noise, inter)

    def l2s(
        self,
        prompt: tuple[torch.Tensor, torch.Tensor],
        visual_features: torch.Tensor,
        settings: TaskDecoding,
        noise: NoiseSource,
        variant: str = "l2s",
    ) -> PipelineResult:
        """Lip to speech: visual features [T_video, D] at 25 fps, in the voice of ``prompt``."""
        from metis_rt.pipeline.visual import l2s_condition

        model = self._stage1(variant)
        prompt_sem, prompt_ac = prompt
        cond = l2s_condition(visual_features.to(device=self.comps.device), prompt_sem.shape[1])
        inter = {"prompt_semantic_ids": prompt_sem, "prompt_acoustic_ids": prompt_ac, "cond": cond}
        target_len = cond.shape[1] - prompt_sem.shape[1]
        return self._generate(model, Stage1Inputs(prompt_sem, cond), target_len, prompt_ac, settings, noise, inter)

    def _stage1(self, variant: str) -> Stage1Model:
        if variant not in self.comps.stage1:
            raise ValueError(f"stage-1 model {variant!r} is not loaded; loaded: {sorted(self.comps.stage1)}")
        return self.comps.stage1[variant]

    def _generate(
        self,
        model: Stage1Model,
        inputs: Stage1Inputs,
        target_len: int,
        prompt_ac: torch.Tensor,
        settings: TaskDecoding,
        noise: NoiseSource,
        inter: dict[str, torch.Tensor],
    ) -> PipelineResult:
        """Stage 1 -> S2A -> codec for one utterance."""
        stage1_ids = model.generate(inputs, target_len, settings.stage1, noise)
        semantic_ids = torch.cat([inputs.prompt_ids, stage1_ids], dim=1)
        if semantic_ids.shape[1] <= prompt_ac.shape[1]:
            raise AudioInputError("the voice prompt is longer than prompt + output; nothing left to generate")
        acoustic_ids, layer0 = self.semantic_to_acoustic(semantic_ids, prompt_ac, settings.s2a, noise)
        wav = self.code_to_wav(acoustic_ids)[0]
        inter.update(stage1_ids=stage1_ids, layer0_ids=layer0)
        return PipelineResult(wav, semantic_ids, acoustic_ids, inter)
