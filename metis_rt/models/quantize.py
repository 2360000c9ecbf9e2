"""Factorised vector quantisation (cosine nearest neighbour in a small code space) and its residual stack.

Shared by the semantic codec (1 stage, 8192 x 8) and the acoustic codec (12 stages, 1024 x 8).
Key names follow the official files: ``in_project``/``out_project`` (weight-normed 1x1 convolutions with
bias) and ``codebook``; the residual stack holds them in ``quantizers.{q}``.

Layout: latents are channel-first [B, D, T]; ids are [B, T] per stage and [B, T, Q] for the stack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metis_rt.models.checkpoints import WNConv1d, compute_dtype

L2_NORMALIZE_EPS = 1e-12  # F.normalize default, as in the reference


class FactorizedVQ(nn.Module):
    """One quantiser stage: project D -> d, pick the nearest L2-normalised code, project back d -> D."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_project = WNConv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_project = WNConv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    @property
    def codebook_size(self) -> int:
        return self.codebook.num_embeddings

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D, T] -> ids [B, T] (int64)."""
        return self.nearest(self.in_project(z))

    def nearest(self, latent: torch.Tensor) -> torch.Tensor:
        """Projected latent [B, d, T] -> ids [B, T] of the closest code after L2 normalisation of both sides.

        Distances ``||e||^2 - 2 e.c + ||c||^2`` are evaluated in ``compute_dtype`` (at least float32) so that
        narrow model dtypes do not flip decisions; the smallest distance wins (argmax of the negation).
        """
        work = compute_dtype(latent.dtype)
        enc = F.normalize(latent.transpose(1, 2).to(work), dim=-1, eps=L2_NORMALIZE_EPS)  # [B, T, d]
        codes = F.normalize(self.codebook.weight.to(work), dim=-1, eps=L2_NORMALIZE_EPS)  # [K, d]
        dist = enc.pow(2).sum(-1, keepdim=True) - 2 * enc @ codes.t() + codes.pow(2).sum(-1)  # [B, T, K]
        return (-dist).argmax(dim=-1)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> out_project(codebook[ids]) [B, D, T] (the un-normalised codebook row)."""
        return self.out_project(self.codebook(ids).transpose(1, 2))


class ResidualFVQ(nn.Module):
    """Residual stack of :class:`FactorizedVQ`: stage q quantises what stages 0..q-1 left over."""

    def __init__(self, num_quantizers: int, input_dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.quantizers = nn.ModuleList(
            FactorizedVQ(input_dim, codebook_size, codebook_dim) for _ in range(num_quantizers)
        )

    @property
    def num_quantizers(self) -> int:
        return len(self.quantizers)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D, T] -> ids [B, T, Q] with all Q stages (residual r -= decode(ids_q) after each stage)."""
        residual = z
        ids_per_stage = []
        for quantizer in self.quantizers:
            ids = quantizer.encode(residual)
            ids_per_stage.append(ids)
            residual = residual - quantizer.decode(ids)
        return torch.stack(ids_per_stage, dim=-1)

    def decode(self, ids: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """ids [B, T, Q'] -> sum over the first ``n_quantizers`` stages of their decodes, [B, D, T].

        ``n_quantizers`` defaults to Q' (the ids given); it may not exceed Q' nor the number of stages.
        """
        if ids.dim() != 3:
            raise ValueError(f"ids must be [B, T, Q], got shape {list(ids.shape)}")
        n_used = ids.shape[-1] if n_quantizers is None else n_quantizers
        if not 0 < n_used <= min(ids.shape[-1], self.num_quantizers):
            raise ValueError(
                f"cannot decode {n_used} quantizer stage(s): ids carry {ids.shape[-1]}, "
                f"the model has {self.num_quantizers}"
            )
        out = self.quantizers[0].decode(ids[..., 0])
        for q in range(1, n_used):
            out = out + self.quantizers[q].decode(ids[..., q])
        return out
