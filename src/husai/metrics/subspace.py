"""Subspace overlap between two dictionaries: principal angles (Bjorck & Golub 1973).

Two SAEs can disagree on individual directions yet span the same subspace (e.g. a
rotation inside a Fourier plane). Two measures:

- ``span_overlap``: mean cos^2 of the principal angles between the decoder spans
  (``||Q_a Q_b^T||_F^2 / min(rank_a, rank_b)``). Trivially 1 when both spans are all of
  R^d (n_latents >= d), so it is informative for narrow dictionaries only.
- ``subspace_overlap(r)``: the same between the top-r principal subspaces of the
  unit-normalised decoder rows (top-r right singular vectors, uncentred). For random
  directions it is about r/d.

Zero (dead) rows contribute nothing to either subspace.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from husai.metrics.matching import unit_rows


def principal_cosines(
    q_a: Float[Tensor, "r_a d"], q_b: Float[Tensor, "r_b d"]
) -> Float[Tensor, " r"]:
    """Cosines of the principal angles between the row spans of two orthonormal bases."""
    if q_a.shape[0] == 0 or q_b.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    return torch.linalg.svdvals(q_a.double() @ q_b.double().T).clamp(0.0, 1.0)


def row_basis(x_ND: Float[Tensor, "n d"], rtol: float = 1e-6) -> Float[Tensor, "r d"]:
    """Orthonormal basis (rows) of the span of the rows of ``x``."""
    _, s, vh = torch.linalg.svd(unit_rows(x_ND).double(), full_matrices=False)
    keep = s > rtol * (s[0] if s.numel() else 1.0)
    return vh[keep]


def top_subspace(x_ND: Float[Tensor, "n d"], r: int) -> Float[Tensor, "r d"]:
    """The top-r principal directions (right singular vectors) of the unit rows of ``x``."""
    return row_basis(x_ND)[:r]


def span_overlap(a_AD: Float[Tensor, "n_a d"], b_BD: Float[Tensor, "n_b d"]) -> float:
    """Mean cos^2 of the principal angles between the two decoder spans."""
    cos = principal_cosines(row_basis(a_AD), row_basis(b_BD))
    return float((cos**2).mean()) if cos.numel() else 0.0


def subspace_overlap(
    a_AD: Float[Tensor, "n_a d"], b_BD: Float[Tensor, "n_b d"], r: int = 16
) -> float:
    """Mean cos^2 of the principal angles between the top-r principal subspaces."""
    q_a, q_b = top_subspace(a_AD, r), top_subspace(b_BD, r)
    cos = principal_cosines(q_a, q_b)
    return float((cos**2).sum() / max(q_a.shape[0], q_b.shape[0], 1))


def default_ranks(d: int, n_a: int, n_b: int) -> list[int]:
    """r = 8, 16, 32, ... below both d and the number of latents."""
    out, r = [], 8
    while r < d and r <= min(n_a, n_b):
        out.append(r)
        r *= 2
    return out
