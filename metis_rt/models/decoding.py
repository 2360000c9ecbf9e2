"""Masked generative (MaskGIT-style) iterative decoding shared by Metis stage 1 and MaskGCT S2A.

The algorithm follows the official ``reverse_diffusion`` loops exactly:

* timesteps ``t_i = 1 - i/steps`` (materialised as float32), cosine schedule: after step i,
  ``n_next = int(float32(sin(float32(t_{i+1}) * pi/2)) * T)`` positions are re-masked (0 ends the loop);
* logits are top-k filtered, ``k = ceil((1 - filter_thres) * V)``;
* sampling ``argmax(logits / max(temp_i, 1e-3) + g)`` with ``temp_i = temperature * t_i``; the last step of a
  multi-step loop is greedy; a single-step loop samples at temperature 0.2;
* only masked positions take the new ids; the confidence ``p`` = softmax(filtered logits)[id];
  score ``1 - (p + t_i * g')``; committed positions are never re-masked; the ``n_next`` highest scores
  are re-masked.

``g`` and ``g'`` come from an injectable :class:`NoiseSource`: :class:`GumbelNoise` (sampling) or
:class:`ZeroNoise` (noise-free, deterministic decoding as in the parity vectors).

Batching: all rows share T (so the schedule is shared); CFG statistics are per row (see :func:`apply_cfg`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from metis_rt.models.checkpoints import compute_dtype
from metis_rt.models.transformer import guide as apply_cfg  # noqa: F401  (re-exported: CFG lives with the stack)

GUMBEL_EPS = 1e-10
MIN_TEMPERATURE = 1e-3
SINGLE_STEP_TEMPERATURE = 0.2
CHOICE_TEMPERATURE = 1.0


class NoiseSource(Protocol):
    def gumbel(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        """Gumbel(0, 1) noise of ``shape`` with the dtype/device of ``like``."""


class ZeroNoise:
    """Noise-free decoding: every Gumbel draw is exactly 0."""

    def gumbel(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)


class GumbelNoise:
    """``-log(-log(u + eps) + eps)`` with ``u ~ U(0, 1)`` from a seeded generator."""

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu"):
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def uniform(self, shape: torch.Size) -> torch.Tensor:
        """The float32 U(0, 1) draw behind :meth:`gumbel` (advances the generator the same way)."""
        return torch.rand(shape, generator=self.generator, device=self.generator.device, dtype=torch.float32)

    def gumbel(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        return gumbel_from_uniform(self.uniform(shape), like)


def gumbel_from_uniform(u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``-log(-log(u + eps) + eps)`` in the dtype/device of ``like`` (elementwise: rows can be transformed apart
    or together with the same result)."""
    u = u.to(device=like.device, dtype=like.dtype)
    return -torch.log(-torch.log(u + GUMBEL_EPS) + GUMBEL_EPS)


class RowNoise:
    """One noise source per batch row (each stream keeps its own seeded generator when batched).

    Seeded rows draw their uniforms from their own generators, then one transform serves the whole batch: the same
    values as each row's :meth:`GumbelNoise.gumbel`, in a few calls instead of a few per row."""

    def __init__(self, sources: list[NoiseSource]):
        self.sources = sources
        seeded = all(isinstance(src, GumbelNoise) for src in sources)
        self._uniform = seeded and len({src.generator.device for src in sources}) <= 1

    def gumbel(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        if shape[0] != len(self.sources):
            raise ValueError(f"batch of {shape[0]} rows but {len(self.sources)} noise sources")
        row = torch.Size([1, *shape[1:]])
        if self._uniform:
            return gumbel_from_uniform(torch.cat([src.uniform(row) for src in self.sources]), like)
        return torch.cat([src.gumbel(row, like) for src in self.sources])


def top_k_filter(logits: torch.Tensor, filter_thres: float) -> torch.Tensor:
    """Keep the ``ceil((1 - filter_thres) * V)`` largest logits of the last axis, set the rest to -inf."""
    k = math.ceil((1 - filter_thres) * logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)
    out = torch.full_like(logits, float("-inf"))
    return out.scatter_(-1, indices, values)


def timesteps(steps: int) -> list[float]:
    """``[1 - i/steps for i in range(steps)] + [0]`` as the reference builds it."""
    h = 1.0 / steps
    return [1.0 - i * h for i in range(steps)] + [0.0]


def next_mask_count(t_next: float, length: int) -> int:
    """Number of positions masked after a step (float32 arithmetic with truncation, as the reference)."""
    t32 = torch.tensor(t_next, dtype=torch.float32)
    return int((torch.sin(t32 * math.pi / 2) * length).long().item())


def mask_schedule(steps: int, length: int) -> list[int]:
    ts = timesteps(steps)
    return [next_mask_count(ts[i + 1], length) for i in range(steps)]


@functools.lru_cache(maxsize=256)
def cached_mask_schedule(steps: int, length: int) -> tuple[int, ...]:
    """:func:`mask_schedule`, remembered: a streaming geometry decodes the same (steps, length) every hop."""
    return tuple(mask_schedule(steps, length))


@functools.lru_cache(maxsize=256)
def step_times(steps: int, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The step timesteps ``float32(t_i)`` as [batch] tensors, made once per (steps, batch, device): the same
    tensors every hop, so a stack can remember what it derives from them
    (:meth:`~metis_rt.models.transformer.DiffusionTransformer.conditioning`)."""
    with torch.inference_mode(False):  # ordinary tensors: also usable where autograd records
        ts = torch.tensor(timesteps(steps)[:steps], dtype=torch.float32).to(device)  # one transfer
        return tuple(ts[i].expand(batch).clone() for i in range(steps))


@dataclass(frozen=True)
class SamplingParams:
    steps: int
    temperature: float
    filter_thres: float


# (seq [B, T] ids, mask [B, T] bool = still masked, t [B] float32 timesteps) -> filtered-or-raw logits [B, T, V]
PredictFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def masked_decode(
    predict: PredictFn,
    batch: int,
    length: int,
    params: SamplingParams,
    noise: NoiseSource,
    device: torch.device | str,
    *,
    fast: bool = True,
) -> torch.Tensor:
    """Iteratively fill ``length`` masked positions per row; returns ids [B, T] (int64).

    ``fast`` (default): the schedule and the step timesteps are computed once before the loop (no host round trip
    per step) and the mask buffer is reused; ``fast=False`` is the pre-issue-20 loop. Both give identical ids.
    """
    if not fast:
        return _masked_decode_reference(predict, batch, length, params, noise, device)
    seq = torch.zeros(batch, length, dtype=torch.long, device=device)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    if length == 0:
        return seq
    ts = timesteps(params.steps)
    counts = cached_mask_schedule(params.steps, length)  # host integers, computed once per (steps, length)
    t_steps = step_times(params.steps, batch, torch.device(device))
    for i in range(params.steps):
        t = t_steps[i]
        logits = top_k_filter(predict(seq, mask, t), params.filter_thres)
        ids = _sample(logits, i, params, ts[i], noise)
        seq = torch.where(mask, ids, seq)
        if counts[i] == 0:
            break
        work = compute_dtype(logits.dtype)
        probs = torch.softmax(logits.to(work), dim=-1)
        p = probs.gather(-1, ids[..., None])[..., 0]
        score = 1 - (p + CHOICE_TEMPERATURE * ts[i] * noise.gumbel(p.shape, p))
        score = score.masked_fill(~mask, -torch.finfo(work).max)
        remask = score.topk(counts[i], dim=-1).indices
        mask = mask.zero_().scatter_(-1, remask, True)
        seq = seq.masked_fill_(mask, 0)
    return seq


def _masked_decode_reference(
    predict: PredictFn, batch: int, length: int, params: SamplingParams, noise: NoiseSource, device
) -> torch.Tensor:
    """The loop as it stood before issue 20 (``HopSpeed(fast_path=False)``), kept as the comparison baseline."""
    seq = torch.zeros(batch, length, dtype=torch.long, device=device)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    if length == 0:
        return seq
    ts = timesteps(params.steps)
    for i in range(params.steps):
        t = torch.full((batch,), ts[i], dtype=torch.float32, device=device)
        logits = top_k_filter(predict(seq, mask, t), params.filter_thres)
        ids = _sample(logits, i, params, ts[i], noise)
        seq = torch.where(mask, ids, seq)
        n_next = next_mask_count(ts[i + 1], length)
        if n_next == 0:
            break
        work = compute_dtype(logits.dtype)
        probs = torch.softmax(logits.to(work), dim=-1)
        p = probs.gather(-1, ids[..., None])[..., 0]
        score = 1 - (p + CHOICE_TEMPERATURE * ts[i] * noise.gumbel(p.shape, p))
        score = score.masked_fill(~mask, -torch.finfo(work).max)
        remask = score.topk(n_next, dim=-1).indices
        mask = torch.zeros_like(mask).scatter_(-1, remask, True)
        seq = seq.masked_fill(mask, 0)
    return seq


def _sample(logits: torch.Tensor, i: int, params: SamplingParams, t: float, noise: NoiseSource) -> torch.Tensor:
    if params.steps == 1:
        temperature = SINGLE_STEP_TEMPERATURE
    elif i == params.steps - 1:
        return logits.argmax(dim=-1)
    else:
        temperature = max(params.temperature * t, MIN_TEMPERATURE)
    g = noise.gumbel(logits.shape, logits)
    return (logits / max(temperature, GUMBEL_EPS) + g).argmax(dim=-1)
