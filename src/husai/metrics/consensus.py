"""Consensus dictionaries: cluster the latents of n SAEs, keep those most seeds learn.

Kurochkin et al. 2026 ("Unstable Features, Reproducible Subspaces") find that a latent
either recurs across seeds or does not, and pool the features seeds share into one
dictionary. Here (pure functions of decoders; :mod:`husai.metrics.consensus_sae` turns the
result into a fitted, saved SAE):

1. **Pool** the latents of the n SAEs as unit decoder rows u (zero rows, dead by
   construction, have cosine 0 with everything and stay alone).
2. **Cluster** them (:func:`cluster_latents`): greedy complete linkage under a
   cannot-link constraint. Candidate edges are the pairs of latents of *different* SAEs
   with *signed* decoder cosine >= tau (signed: codes are non-negative, so -u is another
   feature), visited in descending cosine (ties by index). An edge merges its two clusters
   when (a) they hold no latent of the same SAE and (b) every cross pair has cosine >= tau.
   Every cluster is then a clique at tau with at most one latent per SAE: (a) because two
   latents of one SAE are two features of that SAE, and merging them would count one SAE
   twice as support; (b) because single linkage chains (a ~ b and b ~ c at 0.7 put a and c
   in one cluster at cosine down to -0.02). Once two clusters fail (b) they fail it for
   good (clusters only grow), so one pass over the edges suffices. A cluster of m latents
   means each member has stability >= (m - 1) / (n - 1) at tau in
   :mod:`husai.metrics.trust` (the same cosines, the same 1e-6 slack).
3. **Keep** the clusters with latents from >= ``min_seeds`` SAEs (default
   :func:`default_min_seeds`: the smallest m with (m - 1) / (n - 1) >= 1/2, trust's
   "stable"). Each kept cluster's mean unit row, renormalised, is a consensus decoder row
   (:func:`consensus_decoder`), in the clusters' order: support, then mean cosine.

Chance baseline of the kept count (:func:`chance_kept`): were every decoder row an
independent uniformly random unit vector, a latent would have >= m - 1 partners at tau with
the probability :func:`husai.metrics.trust.random_stability` gives; a kept cluster needs m
such latents, so (pooled latents x that probability) / m bounds the expected kept count.

Cost: one float32 product per pair of SAEs in row chunks (as trust), then a Python pass
over the candidate edges, each checked against at most (n / 2)^2 cosines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from husai.errors import UserError
from husai.metrics.matching import unit_rows
from husai.metrics.trust import TAU_SLACK, UNSTABLE_BELOW, check_tau, random_stability

MAX_EDGES = 20_000_000
"""Candidate edges above which clustering refuses (a tau so low that most pairs qualify)."""


@dataclass(frozen=True)
class Clusters:
    """Clusters of pooled latents: cluster c holds latent ``members[c][i]`` of SAE i."""

    members: list[dict[int, int]]
    mean_cos: Float[np.ndarray, " C"]
    """Mean pairwise signed cosine inside each cluster (1.0 for a single latent)."""

    @property
    def support(self) -> np.ndarray:
        return np.array([len(m) for m in self.members], dtype=np.int64)


def cluster_latents(
    decoders: Sequence[Float[Tensor, "S D"]], tau: float, chunk: int = 2048
) -> Clusters:
    """Greedy complete-linkage clusters of all latents, at most one per SAE (module doc).

    Clusters of two or more latents come first (by support, then mean cosine, then their
    first member), then every latent left alone, in pooled order.
    """
    check_tau(tau)
    units = [unit_rows(d) for d in decoders]
    offsets = np.cumsum([0] + [len(u) for u in units])
    owner = np.repeat(np.arange(len(units)), np.diff(offsets))
    pooled = torch.cat(units).numpy()
    a, b, cos = _candidate_edges(units, offsets, tau, chunk)
    order = np.lexsort((b, a, -cos))
    cluster_of = np.arange(len(pooled))
    members: dict[int, dict[int, int]] = {i: {int(owner[i]): i} for i in range(len(pooled))}
    for i, j in zip(a[order].tolist(), b[order].tolist(), strict=True):
        ci, cj = cluster_of[i], cluster_of[j]
        if ci == cj or members[ci].keys() & members[cj].keys():
            continue
        rows_i, rows_j = list(members[ci].values()), list(members[cj].values())
        if (pooled[rows_i] @ pooled[rows_j].T).min() < tau - TAU_SLACK:
            continue
        keep, drop = (ci, cj) if len(rows_i) >= len(rows_j) else (cj, ci)
        members[keep] |= members.pop(drop)
        cluster_of[list(members[keep].values())] = keep
    groups = list(members.values())
    mean_cos = np.array([_mean_pairwise(pooled[list(g.values())]) for g in groups])
    rank = sorted(
        range(len(groups)),
        key=lambda c: (-len(groups[c]), -mean_cos[c], min(groups[c].values())),
    )
    local = [{s: int(g - offsets[s]) for s, g in groups[c].items()} for c in rank]
    return Clusters(members=local, mean_cos=mean_cos[rank])


def _candidate_edges(
    units: list[Tensor], offsets: np.ndarray, tau: float, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled indices (a < b) and cosine of every cross-SAE pair with cosine >= tau."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_edges = 0
    for i in range(len(units)):
        a_np = units[i].numpy()
        for j in range(i + 1, len(units)):
            b_np = units[j].numpy()
            for start in range(0, len(a_np), chunk):
                sim = a_np[start : start + chunk] @ b_np.T
                r, c = np.divmod(np.flatnonzero(sim >= tau - TAU_SLACK), sim.shape[1])
                parts.append((r + start + offsets[i], c + offsets[j], sim[r, c]))
                n_edges += len(r)
                if n_edges > MAX_EDGES:
                    raise UserError(
                        f"tau: {tau} leaves over {MAX_EDGES:,} latent pairs to cluster; "
                        "raise tau (0.7 is usual)"
                    )
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]


def _mean_pairwise(u_MD: np.ndarray) -> float:
    m = len(u_MD)
    if m < 2:
        return 1.0
    gram = u_MD.astype(np.float64) @ u_MD.T.astype(np.float64)
    return float((gram.sum() - np.trace(gram)) / (m * (m - 1)))


def consensus_decoder(
    decoders: Sequence[Float[Tensor, "S D"]], clusters: Clusters, min_seeds: int
) -> tuple[Float[Tensor, "C D"], list[int]]:
    """Unit mean rows of the clusters with support >= ``min_seeds``, and those clusters'
    indices; a lone zero row (a latent with no direction, kept only at ``min_seeds`` 1)
    is dropped."""
    units = [unit_rows(d).double() for d in decoders]
    means, kept = [], []
    for c, members in enumerate(clusters.members):
        if len(members) < min_seeds:
            continue
        mean_D = torch.stack([units[s][i] for s, i in sorted(members.items())]).mean(0)
        if float(mean_D.norm()) > 1e-6:
            means.append(mean_D / mean_D.norm())
            kept.append(c)
    if not means:
        return torch.zeros(0, decoders[0].shape[1]), kept
    return torch.stack(means).float(), kept


def default_min_seeds(n: int) -> int:
    """Smallest m whose members are trust-stable: (m - 1) / (n - 1) >= 1/2."""
    return 1 + math.ceil(UNSTABLE_BELOW * (n - 1))


def chance_kept(sizes: Sequence[int], d: int, tau: float, min_seeds: int) -> float:
    """Bound on the expected kept clusters of random unit decoders (module docstring)."""
    if min_seeds < 2:
        return float(sum(sizes))
    dist = random_stability(sizes, d, tau)
    return float(sum(sizes) * dist[min_seeds - 1 :].sum() / min_seeds)
