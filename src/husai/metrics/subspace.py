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

Both measures come from one SVD per dictionary (:func:`row_basis`): the ``*_of_bases``
forms take the bases, so a caller measuring several ranks, or the span too, decomposes
each dictionary once. The pair forms look the bases up in a small in-memory LRU cache
(:func:`cached_row_basis`) keyed by the tensor's content (sha256 of dtype, shape and
bits), so a decoder met again, in another seed pair or after a reload, is not
decomposed again, and a tensor changed in place gets a new key, never a stale basis.
The values are those of the uncached computation, bit for bit.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from jaxtyping import Float
from torch import Tensor

from husai.io import sha256_tensors
from husai.metrics.matching import unit_rows

CACHE_MAX_BYTES = 256 * 2**20
"""Total size of the bases :func:`cached_row_basis` keeps (least recently used go first)."""
_BASES: OrderedDict[tuple[str, str, float], Tensor] = OrderedDict()


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


def cached_row_basis(x_ND: Float[Tensor, "n d"], rtol: float = 1e-6) -> Float[Tensor, "r d"]:
    """:func:`row_basis`, kept by content (module docstring); callers must not modify it."""
    x_ND = torch.as_tensor(x_ND).detach()
    key = (sha256_tensors({"x": x_ND}), str(x_ND.device), float(rtol))
    if key in _BASES:
        _BASES.move_to_end(key)
        return _BASES[key]
    basis = _BASES[key] = row_basis(x_ND, rtol)
    while sum(q.nbytes for q in _BASES.values()) > CACHE_MAX_BYTES and len(_BASES) > 1:
        _BASES.popitem(last=False)
    return basis


def top_subspace(x_ND: Float[Tensor, "n d"], r: int) -> Float[Tensor, "r d"]:
    """The top-r principal directions (right singular vectors) of the unit rows of ``x``."""
    return cached_row_basis(x_ND)[:r]


def span_overlap_of_bases(q_a: Float[Tensor, "r_a d"], q_b: Float[Tensor, "r_b d"]) -> float:
    """:func:`span_overlap` from the two :func:`row_basis` bases."""
    cos = principal_cosines(q_a, q_b)
    return float((cos**2).mean()) if cos.numel() else 0.0


def subspace_overlap_of_bases(
    q_a: Float[Tensor, "r_a d"], q_b: Float[Tensor, "r_b d"], r: int = 16
) -> float:
    """:func:`subspace_overlap` from the two :func:`row_basis` bases (top r rows used)."""
    q_a, q_b = q_a[:r], q_b[:r]
    cos = principal_cosines(q_a, q_b)
    return float((cos**2).sum() / max(q_a.shape[0], q_b.shape[0], 1))


def span_overlap(a_AD: Float[Tensor, "n_a d"], b_BD: Float[Tensor, "n_b d"]) -> float:
    """Mean cos^2 of the principal angles between the two decoder spans."""
    return span_overlap_of_bases(cached_row_basis(a_AD), cached_row_basis(b_BD))


def subspace_overlap(
    a_AD: Float[Tensor, "n_a d"], b_BD: Float[Tensor, "n_b d"], r: int = 16
) -> float:
    """Mean cos^2 of the principal angles between the top-r principal subspaces."""
    return subspace_overlap_of_bases(cached_row_basis(a_AD), cached_row_basis(b_BD), r)


def default_ranks(d: int, n_a: int, n_b: int) -> list[int]:
    """r = 8, 16, 32, ... below both d and the number of latents."""
    out, r = [], 8
    while r < d and r <= min(n_a, n_b):
        out.append(r)
        r *= 2
    return out
