"""The synthetic known-truth SAE task of Song et al. 2025 (arXiv 2505.20254, Sec. 4.1).

``x = s @ A``: ``A`` holds ``m`` true unit-norm directions in ``n`` dimensions (rows,
Gaussian then normalised); each sample has exactly ``k`` active features, chosen
uniformly without replacement, with coefficients ``|N(0, 1)|``. Defaults follow the
paper: n=16, m=32, k=3, 50,000 samples. An SAE that recovers ``A`` scores GT-MCC ~1
(:func:`husai.metrics.gt_mcc`), and so do its seeds against each other (PW-MCC).

Everything is drawn from one ``torch.Generator`` seeded with ``seed``, in a fixed order
(directions, supports, coefficients), so the same seed gives the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class SyntheticData:
    """Samples ``x [N, n]``, true directions ``truth [m, n]`` and true codes ``codes [N, m]``."""

    x: Float[Tensor, "N n"]
    truth: Float[Tensor, "m n"]
    codes: Float[Tensor, "N m"]


def make_synthetic(
    n_dims: int = 16, n_features: int = 32, k: int = 3, n_samples: int = 50_000, seed: int = 0
) -> SyntheticData:
    """Draw the Song et al. sparse-superposition dataset (module docstring)."""
    if not 1 <= k <= n_features:
        raise ValueError(f"k: expected 1 <= k <= n_features ({n_features}), got {k}")
    if n_dims < 1 or n_samples < 1:
        raise ValueError(f"expected n_dims >= 1 and n_samples >= 1, got {n_dims}, {n_samples}")
    gen = torch.Generator().manual_seed(seed)
    truth_MD = torch.randn(n_features, n_dims, generator=gen)
    truth_MD = truth_MD / truth_MD.norm(dim=1, keepdim=True)
    support_NK = torch.rand(n_samples, n_features, generator=gen).topk(k, dim=1).indices
    coef_NK = torch.randn(n_samples, k, generator=gen).abs()
    codes_NM = torch.zeros(n_samples, n_features).scatter_(1, support_NK, coef_NK)
    return SyntheticData(x=codes_NM @ truth_MD, truth=truth_MD, codes=codes_NM)
