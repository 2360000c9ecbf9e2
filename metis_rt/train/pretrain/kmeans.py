"""HuBERT-style cluster targets: frame features -> k-means -> one class id per 50 Hz SSL frame.

Iteration 1 clusters MFCCs computed from the SSL extractor's own input (80 CMVN log-mel bins per 10 ms, two frames
stacked per 20 ms): DCT-II of each 10 ms half -> 13 coefficients, both halves side by side (26-d), plus their
first difference along time (52-d). Iteration 2 clusters the normalised features of a previously trained SSL model
instead. Features are standardised per dimension before clustering (mean/std kept with the centroids).

:func:`fit_kmeans` is plain k-means++ seeding + Lloyd iterations in torch (no scikit-learn).
"""

from __future__ import annotations

import math

import torch
from torch import nn

N_MFCC = 13
MEL_BINS = 80  # per 10 ms frame of the SeamlessM4T extractor
STACK = 2  # 10 ms frames per 20 ms SSL frame
MFCC_TARGET_DIM = 2 * STACK * N_MFCC  # coefficients + deltas
DISTANCE_CHUNK = 8192  # rows per distance block (bounds memory to chunk x k)
STD_FLOOR = 1e-5


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Orthonormal DCT-II basis [n_in, n_out]."""
    n = torch.arange(n_in, dtype=torch.float64)[:, None]
    k = torch.arange(n_out, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.float()


def mfcc_features(input_features: torch.Tensor) -> torch.Tensor:
    """Extractor output [B, T, 160] -> MFCC + delta targets' features [B, T, 52]."""
    b, t, _ = input_features.shape
    log_mel = input_features.reshape(b, t, STACK, MEL_BINS)
    mfcc = (log_mel @ dct_matrix(MEL_BINS, N_MFCC).to(input_features)).reshape(b, t, STACK * N_MFCC)
    delta = torch.zeros_like(mfcc)
    if t > 1:
        delta[:, 1:] = mfcc[:, 1:] - mfcc[:, :-1]
    return torch.cat([mfcc, delta], dim=-1)


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N], squared distances [N]) of the closest centroid, computed in blocks."""
    ids, dists = [], []
    c_sq = centroids.pow(2).sum(-1)
    for block in x.split(DISTANCE_CHUNK):
        d = block.pow(2).sum(-1, keepdim=True) - 2 * block @ centroids.t() + c_sq
        best, idx = d.min(dim=-1)
        ids.append(idx)
        dists.append(best.clamp(min=0))
    return torch.cat(ids), torch.cat(dists)


def fit_kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """x [N, F] -> centroids [k, F]: k-means++ seeding, ``iters`` Lloyd steps; empty clusters take far points."""
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} frames, got {n}; give it more audio (kmeans_examples)")
    centroids = x[torch.randint(0, n, (1,), generator=generator)]
    dist = _nearest(x, centroids)[1]
    for _ in range(1, k):
        probs = dist / dist.sum() if float(dist.sum()) > 0 else torch.full_like(dist, 1.0 / n)
        pick = torch.multinomial(probs, 1, generator=generator)
        centroids = torch.cat([centroids, x[pick]])
        dist = torch.minimum(dist, _nearest(x, x[pick])[1])
    for _ in range(iters):
        ids, dist = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, ids, x)
        counts = torch.bincount(ids, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        centroids = sums / counts.clamp(min=1)[:, None].to(x)
        if len(empty):
            centroids[empty] = x[dist.topk(len(empty)).indices]
    return centroids


class ClusterTargets(nn.Module):
    """Standardisation + centroids of the target features; fitted once, then part of the task's checkpoint."""

    def __init__(self, n_clusters: int, feature_dim: int):
        super().__init__()
        self.register_buffer("centroids", torch.zeros(n_clusters, feature_dim))
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def n_clusters(self) -> int:
        return self.centroids.shape[0]

    def fit(self, features: torch.Tensor, iters: int, generator: torch.Generator | None = None) -> None:
        """features [N, F] (all frames of the fitting audio)."""
        x = features.float()
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp(min=STD_FLOOR))
        self.centroids.copy_(fit_kmeans((x - self.mean) / self.std, self.n_clusters, iters, generator))
        self.fitted.fill_(True)

    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, T, F] -> class ids [B, T] (int64)."""
        if not bool(self.fitted):
            raise RuntimeError("cluster targets are not fitted yet: batches() fits them on its first examples")
        x = (features.float() - self.mean) / self.std
        return _nearest(x.reshape(-1, x.shape[-1]), self.centroids)[0].reshape(features.shape[:-1])
