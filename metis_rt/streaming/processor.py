"""Running hops of many sessions as batches through the Metis chain (used only by the engine thread).

Per window: SSL features of ``[left | chunk | lookahead]`` (the extractor's CMVN runs over the window, as over an
utterance offline) -> stage 1 generates chunk + lookahead after the committed left-context tokens (TSE/VC: after the
reference tokens too, with the reference's cached features in front of the window's) -> S2A likewise with the
committed acoustic tokens as prompt -> the codec decodes ``[decoder left | chunk | lookahead]``.

Batching: rows of one stage run together when their target lengths and settings agree; stage 1 also needs the same
task model. Prompts of different lengths (references, stream start) are left-padded and masked: attention uses
relative (RoPE) positions, so padding changes nothing for the real rows. Equal-length groups run unpadded, on the
very code path of the offline pipeline.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

import numpy as np
import torch

from metis_rt.models.decoding import RowNoise
from metis_rt.models.hop_speed import HopSpeed, apply_hop_speed
from metis_rt.models.stage1 import Stage1Inputs
from metis_rt.models.thread_choice import WINDOW_FRAMES, ThreadPlan
from metis_rt.models.weight_stamp import steady
from metis_rt.pipeline.components import MetisComponents
from metis_rt.pipeline.offline import MetisPipeline
from metis_rt.streaming.geometry import CODEC_FRAME_SAMPLES, FEATURE_FRAMING_SAMPLES, SSL_FRAME_SAMPLES
from metis_rt.streaming.thread_probe import ProbeSettings, thread_plan
from metis_rt.streaming.window import ReferenceTokens, WindowJob, WindowResult


class WindowProcessor(Protocol):
    num_quantizers: int

    def prepare_reference(self, reference_16k: np.ndarray, reference_24k: np.ndarray) -> ReferenceTokens: ...

    def run(self, jobs: Sequence[WindowJob]) -> list[WindowResult]: ...


def groups(items: Sequence, key: Callable[[object], Hashable]) -> list[list[int]]:
    """Indices of ``items`` grouped by ``key`` (first-seen order)."""
    out: dict[Hashable, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        out[key(item)].append(i)
    return list(out.values())


def left_pad(rows: list[torch.Tensor], value: int | float = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack rows [T_i, ...] left-padded to the longest; mask [B, T] (False = padding), None if none needed."""
    longest = max(r.shape[0] for r in rows)
    if all(r.shape[0] == longest for r in rows):
        return torch.stack(rows), None
    padded, mask = [], []
    for r in rows:
        pad = longest - r.shape[0]
        padded.append(torch.cat([r.new_full((pad, *r.shape[1:]), value), r]))
        mask.append(torch.cat([torch.zeros(pad, dtype=torch.bool), torch.ones(r.shape[0], dtype=torch.bool)]))
    return torch.stack(padded), torch.stack(mask).to(rows[0].device)


def window_frames(job: WindowJob) -> int:
    """The rows a window puts through the stacks at 50 Hz: its audio and, for TSE/VC, the reference in front."""
    reference = 0 if job.reference is None else len(job.reference.semantic)
    return len(job.audio_16k) // SSL_FRAME_SAMPLES + reference


class IdentityProcessor:
    """Returns the unprocessed input over the decoded span: tests the windowing, crossfade and timing plumbing."""

    def __init__(self, num_quantizers: int = 12):
        self.num_quantizers = num_quantizers

    def prepare_reference(self, reference_16k, reference_24k) -> ReferenceTokens:
        frames = len(reference_24k) // CODEC_FRAME_SAMPLES
        zeros = torch.zeros(frames, dtype=torch.long)
        return ReferenceTokens(
            zeros, torch.zeros(frames, self.num_quantizers, dtype=torch.long), torch.zeros(frames, 1)
        )

    def run(self, jobs: Sequence[WindowJob]) -> list[WindowResult]:
        return [
            WindowResult(
                np.zeros(j.target, dtype=np.int64), np.zeros((j.target, self.num_quantizers), np.int64), j.dry_24k
            )
            for j in jobs
        ]


class MetisWindowProcessor:
    def __init__(self, comps: MetisComponents, speed: HopSpeed | None = None, probe: ProbeSettings | None = None):
        """``speed``: the eager fast path / compile / thread settings (default :class:`HopSpeed`: fast path, compile
        on CUDA only, threads measured), applied to ``comps`` in place; ``probe``: the settings the streams will
        run, for measuring the thread count (default: the package's)."""
        self.comps = comps
        self.speed = speed or HopSpeed()
        self.pipeline = MetisPipeline(comps)
        self.num_quantizers = comps.cfg.codec_decoder.num_quantizers
        eager = dataclasses.replace(self.speed, compile="never")
        self.compiled = apply_hop_speed(comps, eager)  # the probe runs eager
        self.threads: ThreadPlan | None = None  # while the probe runs: the count it sets
        self.threads = thread_plan(self, probe)  # CPU threads per amount of work
        if self.threads is not None:
            self.threads.apply(WINDOW_FRAMES)
        if self.speed.compiles(comps.device):
            self.compiled = apply_hop_speed(comps, self.speed)

    @torch.inference_mode()
    def prepare_reference(self, reference_16k: np.ndarray, reference_24k: np.ndarray) -> ReferenceTokens:
        """Prompt tokens and features of a reference, once per session, aligned to whole 20 ms frames.

        The official offline code derives the semantic prompt from ceil(n_fbank/2) frames and the acoustic one from
        N/480 frames (one frame apart); here both cover the same R frames so the streams stay frame-aligned.
        """
        frames = min(
            (len(reference_16k) - FEATURE_FRAMING_SAMPLES) // SSL_FRAME_SAMPLES,
            len(reference_24k) // CODEC_FRAME_SAMPLES,
        )
        if frames < 1:
            raise ValueError("the reference is shorter than one frame")
        ref16 = reference_16k[: frames * SSL_FRAME_SAMPLES + FEATURE_FRAMING_SAMPLES]
        features = self.comps.ssl(ref16)
        semantic, _ = self.comps.semantic_codec.quantize(features)
        acoustic = self.pipeline.acoustic_tokens(reference_24k[: frames * CODEC_FRAME_SAMPLES])
        return ReferenceTokens(semantic[0], acoustic[0], features[0])

    @torch.inference_mode()
    def run(self, jobs: Sequence[WindowJob]) -> list[WindowResult]:
        if self.threads is not None:
            self.threads.apply(sum(window_frames(j) for j in jobs))
        with steady():  # the engine thread owns the models: their caches' weight checks run once per step
            features = self._features(jobs)
            semantic = self._stage1(jobs, features)
            acoustic = self._s2a(jobs, semantic)
            wavs = self._decode(jobs, acoustic)
        return [
            WindowResult(s.cpu().numpy(), a.cpu().numpy(), w.float().cpu().numpy())
            for s, a, w in zip(semantic, acoustic, wavs, strict=True)
        ]

    # --- stages ---------------------------------------------------------------------------------
    def _long(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.long, device=self.comps.device)

    def _features(self, jobs: Sequence[WindowJob]) -> list[torch.Tensor]:
        """Normalised SSL features [L + T, D] per job; windows of equal length share one w2v-BERT pass."""
        ssl, out = self.comps.ssl, [None] * len(jobs)
        for idx in groups(jobs, lambda j: len(j.audio_16k)):
            feats = ssl.normalise(ssl.hidden(ssl.extract_batch([jobs[i].audio_16k for i in idx])))
            for row, i in enumerate(idx):
                out[i] = feats[row]
        return out

    def _stage1(self, jobs: Sequence[WindowJob], features: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [None] * len(jobs)
        for idx in groups(jobs, lambda j: (j.task, j.stage1_model, j.target, j.settings.stage1)):
            prompts, conds = [], []
            for i in idx:
                job, prompt, cond = jobs[i], self._long(jobs[i].left_semantic), features[i]
                if job.reference is not None:
                    prompt = torch.cat([job.reference.semantic, prompt])
                    cond = torch.cat([job.reference.features, cond])
                prompts.append(prompt)
                conds.append(cond)
            prompt_ids, mask = left_pad(prompts)
            cond, _ = left_pad(conds, 0.0)
            first = jobs[idx[0]]
            ids = self.comps.stage1[first.stage1_model].generate(
                Stage1Inputs(prompt_ids, cond, prompt_mask=mask),
                first.target,
                first.settings.stage1,
                RowNoise([jobs[i].noise for i in idx]),
            )
            for row, i in enumerate(idx):
                out[i] = ids[row]
        return out

    def _s2a(self, jobs: Sequence[WindowJob], semantic: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [None] * len(jobs)
        for idx in groups(jobs, lambda j: (j.target, j.settings.s2a)):
            sems, prompts = [], []
            for i in idx:
                job = jobs[i]
                sem = torch.cat([self._long(job.s2a_semantic), semantic[i]])
                prompt = self._long(job.s2a_acoustic)
                if job.reference is not None:
                    sem = torch.cat([job.reference.semantic, sem])
                    prompt = torch.cat([job.reference.acoustic, prompt])
                sems.append(sem)
                prompts.append(prompt)
            semantic_ids, _ = left_pad(sems)
            prompt_ids, mask = left_pad(prompts)
            ids = self._semantic_to_acoustic(semantic_ids, prompt_ids, mask, jobs[idx[0]].settings.s2a, idx, jobs)
            for row, i in enumerate(idx):
                out[i] = ids[row]
        return out

    def _semantic_to_acoustic(self, semantic_ids, prompt_ids, mask, s, idx, jobs) -> torch.Tensor:
        noise = RowNoise([jobs[i].noise for i in idx])
        common = {
            "rescale_cfg": s.rescale_cfg,
            "temperature": s.temperature,
            "filter_thres": s.filter_thres,
            "noise": noise,
            "prompt_mask": mask,
        }
        layer0 = self.comps.s2a_1layer.generate(semantic_ids, prompt_ids, s.steps_1layer, cfg=s.cfg_1layer, **common)
        return self.comps.s2a_full.generate(
            semantic_ids, prompt_ids, s.steps_full, cfg=s.cfg_full, gt_code=layer0, **common
        )

    def _decode(self, jobs: Sequence[WindowJob], acoustic: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [None] * len(jobs)
        rows = [
            torch.cat([self._long(j.decoder_acoustic).reshape(-1, a.shape[-1]), a])
            for j, a in zip(jobs, acoustic, strict=True)
        ]
        for idx in groups(rows, lambda r: r.shape[0]):
            wav = self.comps.acoustic_codec.decode(torch.stack([rows[i] for i in idx]))
            for row, i in enumerate(idx):
                out[i] = wav[row]
        return out
