"""Training-time forward of our factorised VQ stages: straight-through gradients, VQ losses, quantiser dropout.

Inference (:mod:`metis_rt.models.quantize`) only needs ids; training needs a differentiable path around the
``argmax``. Per stage (VQ-VAE / DAC recipe):

* ``z_e = in_project(residual)`` [B, d, T]; ids = cosine nearest code (the inference rule, no gradient);
* ``z_q = codebook[ids]`` (the raw row, as inference decodes it);
* commitment loss ``mse(z_e, sg(z_q))`` pulls the encoder to its codes, codebook loss ``mse(sg(z_e), z_q)`` pulls
  the codes to the encoder;
* straight-through ``z_e + sg(z_q - z_e)`` (value = z_q) goes through ``out_project``; the next stage quantises
  ``residual - out``.

Quantiser dropout: row b uses only its first ``n_active[b]`` stages (all stages still run and learn their codes).
:class:`CodeRevival` re-seeds codes nobody picked for a while from recent encoder latents (dead-code restart).
:class:`DataInit` runs once, on the first batch, before any step: it centres the encoder output and seeds every
codebook from the latents it will quantise (without it the quantiser collapses, see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metis_rt.models.quantize import FactorizedVQ, ResidualFVQ


@dataclass
class QuantizeOutput:
    quantized: torch.Tensor  # [B, D, T] sum of the active stages' straight-through outputs
    ids: torch.Tensor  # [B, T, Q] int64, every stage
    commitment: torch.Tensor  # scalar, mean over stages of the active rows' commitment MSE
    codebook: torch.Tensor  # scalar, same for the codebook MSE
    latents: list[torch.Tensor]  # per stage, projected latents z_e [B, d, T] (detached), for code revival


def quantize_stage(fvq: FactorizedVQ, residual: torch.Tensor):
    """residual [B, D, T] -> (out [B, D, T], ids [B, T], z_e [B, d, T], commitment [B], codebook [B])."""
    z_e = fvq.in_project(residual)
    ids = fvq.nearest(z_e.detach())
    z_q = fvq.codebook(ids).transpose(1, 2)
    commitment = (z_e - z_q.detach()).pow(2).mean(dim=(1, 2))
    codebook = (z_q - z_e.detach()).pow(2).mean(dim=(1, 2))
    straight_through = z_e + (z_q - z_e).detach()
    return fvq.out_project(straight_through), ids, z_e, commitment, codebook


def residual_quantize(rvq: ResidualFVQ, z: torch.Tensor, n_active: torch.Tensor | None = None) -> QuantizeOutput:
    """z [B, D, T]; ``n_active`` [B] int (default: all stages) -> :class:`QuantizeOutput`."""
    batch = z.shape[0]
    if n_active is None:
        n_active = torch.full((batch,), rvq.num_quantizers, device=z.device)
    residual, total = z, torch.zeros_like(z)
    commitment = codebook = z.new_zeros(())
    ids, latents = [], []
    for q, fvq in enumerate(rvq.quantizers):
        out, stage_ids, z_e, commit_q, codebook_q = quantize_stage(fvq, residual)
        active = (n_active > q).to(z.dtype)  # [B]
        total = total + out * active[:, None, None]
        residual = residual - out
        commitment = commitment + (commit_q * active).mean()
        codebook = codebook + (codebook_q * active).mean()
        ids.append(stage_ids)
        latents.append(z_e.detach())
    n_stages = rvq.num_quantizers
    return QuantizeOutput(total, torch.stack(ids, dim=-1), commitment / n_stages, codebook / n_stages, latents)


def sample_active_stages(batch: int, n_stages: int, dropout: float) -> torch.Tensor:
    """[B] stage counts: rows drawn with probability ``dropout`` get U{1..n_stages}, the others all stages."""
    n_active = torch.full((batch,), n_stages, dtype=torch.long)
    dropped = torch.rand(batch) < dropout
    random_counts = torch.randint(1, n_stages + 1, (batch,))
    return torch.where(dropped, random_counts, n_active)


class CodeRevival(nn.Module):
    """Counts code use per stage; every ``every`` calls, codes unused since the last check are re-seeded.

    A revived code becomes a randomly chosen projected latent of the last batch, so it is picked again soon.
    ``every = 0`` disables revival. The counts are a buffer: a resumed run keeps them.
    """

    def __init__(self, n_stages: int, codebook_size: int, every: int):
        super().__init__()
        self.every = every
        self.register_buffer("counts", torch.zeros(n_stages, codebook_size, dtype=torch.long))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self._latents: list[torch.Tensor] | None = None

    def observe(self, ids: torch.Tensor, latents: list[torch.Tensor]) -> None:
        """ids [B, T, Q] picked in this step; latents per stage [B, d, T] (kept for the next revival)."""
        if self.every <= 0:
            return
        for q in range(ids.shape[-1]):
            self.counts[q] += torch.bincount(ids[..., q].flatten(), minlength=self.counts.shape[1]).to(self.counts)
        self.calls += 1
        self._latents = [z.transpose(1, 2).reshape(-1, z.shape[1]).cpu() for z in latents]

    @torch.no_grad()
    def revive(self, rvq: ResidualFVQ) -> int:
        """Re-seed dead codes if a check is due (call before the forward pass); returns how many were re-seeded."""
        if self.every <= 0 or self._latents is None or int(self.calls) < self.every:
            return 0
        revived = 0
        for q, fvq in enumerate(rvq.quantizers):
            dead = (self.counts[q] == 0).nonzero().flatten()
            pool = self._latents[q]
            if len(dead) == 0 or len(pool) == 0:
                continue
            pick = torch.randint(0, len(pool), (len(dead),))
            weight = fvq.codebook.weight
            weight[dead.to(weight.device)] = pool[pick].to(weight)
            revived += len(dead)
        self.counts.zero_()
        self.calls.zero_()
        return revived


def codebook_usage(ids: torch.Tensor, codebook_size: int) -> float:
    """Fraction of the codebook used by ids [..., T] (stage 0 if [B, T, Q]), for logging."""
    flat = ids[..., 0] if ids.dim() == 3 else ids
    return float(torch.unique(flat).numel()) / codebook_size


class DataInit(nn.Module):
    """Data-dependent initialisation of encoder output + quantiser on the first training batch (once).

    Why: at random initialisation the encoder output carries a large constant offset (Snake adds a positive term,
    every conv a bias) and each ``in_project`` adds its own bias, so all projected latents point the same way
    (mean pairwise cosine 0.96 on our small codec) and the cosine lookup picks ~10 of 1,024 codes; training then
    collapsed (0.3 % layer-0 use) and dead-code revival could not undo it (the revived codes share the cone).
    What: shift the encoder's last conv bias by minus the batch mean of its output, zero each stage's
    ``in_project`` bias, and seed each stage's codebook with randomly drawn projected latents of that stage's
    residual (stage by stage, so later stages see the residuals they will get). All three are ordinary
    parameter values: nothing here exists at inference and the exported layout is unchanged.
    The ``done`` buffer is saved with the checkpoint, so a resumed run does not redo it.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("done", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def initialise(self, out_conv: nn.Conv1d, rvq: ResidualFVQ, latent: torch.Tensor, seed: int = 0) -> bool:
        """latent [B, D, T] = encoder output for the first batch; returns whether it initialised now."""
        if bool(self.done):
            return False
        mean = latent.mean(dim=(0, 2))  # [D]
        out_conv.bias -= mean.to(out_conv.bias)
        residual = latent - mean[None, :, None]
        generator = torch.Generator().manual_seed(seed)
        for fvq in rvq.quantizers:
            nn.init.zeros_(fvq.in_project.bias)
            z_e = fvq.in_project(residual)
            pool = z_e.transpose(1, 2).reshape(-1, z_e.shape[1]).cpu()
            size = fvq.codebook.weight.shape[0]
            pick = torch.randint(0, len(pool), (size,), generator=generator)
            noise = 1e-3 * pool.std() * torch.randn(size, pool.shape[1], generator=generator)  # break ties
            fvq.codebook.weight.copy_((pool[pick] + noise).to(fvq.codebook.weight))
            residual = residual - fvq.decode(fvq.nearest(z_e))
        self.done.fill_(True)
        return True
