"""Optimal one-to-one matching of latents (Hungarian / linear assignment), exact and fast.

``cosine_matrix`` gives the cosine similarity between two sets of directions
(decoder rows, encoder columns, ground-truth directions). A zero-norm (dead) latent
has cosine 0 with everything, by definition: the row is left at zero instead of being
divided by its norm. This is what Song et al. 2025's released ``MCC`` does (it replaces
a zero norm by 1 before dividing), and it is why no metric here can produce NaN.

``linear_assignment`` maximises the summed score over one-to-one matchings; with
``n_a != n_b`` it matches ``min(n_a, n_b)`` pairs (rectangular assignment, as
``scipy.optimize.linear_sum_assignment``). Two exact solvers:

- ``dense``: ``scipy.optimize.linear_sum_assignment`` (LAPJV), O(n^3).
- ``sparse``: a candidate graph (the top ``c`` scores of every row; every column's top
  ``c`` are added only if the rows alone admit no full matching) solved by ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (LAPJVsp),
  followed by an optimality certificate on the *full* matrix. Dual potentials of the
  sparse optimum are shortest-path distances in its residual graph (Bellman-Ford,
  vectorised, on the column graph); if every entry of the full matrix has non-negative
  reduced cost the matching is optimal for the full matrix (LP duality). Violating
  entries are added to the graph and the problem re-solved; after ``max_rounds`` the
  dense solver is used. Only rows whose c-th best score could beat their dual bound are
  scanned (an entry outside row i's top c scores at most that c-th score). The result is exact up to ``tol`` per matched pair in the
  score (default 1e-9), never approximate beyond that.

``auto`` picks ``sparse`` above ``dense_max`` entries. Candidates from random
directions are the worst case; trained seeds match more sharply and certify faster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor

log = logging.getLogger(__name__)

DENSE_MAX = 2048 * 2048
"""Problems with at most this many entries go to scipy's dense solver under 'auto'."""


@dataclass(frozen=True)
class Matching:
    """A one-to-one matching: pair ``t`` matches ``rows[t]`` of A with ``cols[t]`` of B."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    """The score (e.g. cosine) of each matched pair."""
    n_a: int
    n_b: int

    @property
    def mean(self) -> float:
        """Mean score over matched pairs (0.0 when nothing is matched)."""
        return float(self.values.mean()) if self.values.size else 0.0

    def per_a(self, fill: float = 0.0) -> np.ndarray:
        """Score of each latent of A (``fill`` where A has more latents than B)."""
        out = np.full(self.n_a, fill, dtype=np.float64)
        out[self.rows] = self.values
        return out


def unit_rows(
    x_ND: Float[Tensor, "n d"], dtype: torch.dtype = torch.float32
) -> Float[Tensor, "n d"]:
    """Rows scaled to unit norm, in ``dtype``; zero rows stay zero (cosines 0, never NaN)."""
    x_ND = torch.as_tensor(x_ND).detach().to(dtype)
    norm_N1 = x_ND.norm(dim=1, keepdim=True)
    return x_ND / torch.where(norm_N1 > 0, norm_N1, torch.ones_like(norm_N1))


def cosine_matrix(
    a_AD: Float[Tensor, "n_a d"], b_BD: Float[Tensor, "n_b d"]
) -> Float[Tensor, "n_a n_b"]:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (0 for zero rows)."""
    a_AD, b_BD = torch.as_tensor(a_AD), torch.as_tensor(b_BD)
    if a_AD.ndim != 2 or b_BD.ndim != 2 or a_AD.shape[1] != b_BD.shape[1]:
        raise ValueError(
            f"expected [n_a, d] and [n_b, d], got {tuple(a_AD.shape)}, {tuple(b_BD.shape)}"
        )
    return unit_rows(a_AD) @ unit_rows(b_BD).T


def match(
    a_AD: Float[Tensor, "n_a d"],
    b_BD: Float[Tensor, "n_b d"],
    *,
    signed: bool = True,
    method: str = "auto",
) -> Matching:
    """Hungarian matching of two direction sets on (signed or absolute) cosine similarity."""
    sim_AB = cosine_matrix(a_AD, b_BD)
    return match_scores(sim_AB.abs() if not signed else sim_AB, method=method)


def match_scores(score_AB: Tensor | np.ndarray, *, method: str = "auto") -> Matching:
    """Maximum-total-score one-to-one matching of a score matrix."""
    score_AB = torch.as_tensor(score_AB)
    rows, cols = linear_assignment(score_AB, method=method)
    values = score_AB[torch.as_tensor(rows), torch.as_tensor(cols)].double().numpy()
    return Matching(rows, cols, values, score_AB.shape[0], score_AB.shape[1])


def linear_assignment(
    score_AB: Tensor | np.ndarray,
    *,
    method: str = "auto",
    candidates: int = 16,
    tol: float = 1e-9,
    max_rounds: int = 8,
    dense_max: int = DENSE_MAX,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a maximum-score assignment (exact; see module docstring)."""
    score_AB = torch.as_tensor(score_AB)
    n_a, n_b = score_AB.shape
    if n_a == 0 or n_b == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"method: expected 'auto', 'dense' or 'sparse', got {method!r}")
    use_dense = method == "dense" or (method == "auto" and n_a * n_b <= dense_max)
    if not use_dense and min(n_a, n_b) > candidates:
        if n_a > n_b:
            cols, rows = _sparse_assignment(score_AB.T, candidates, tol, max_rounds)
            order = np.argsort(rows)
            return rows[order], cols[order]
        return _sparse_assignment(score_AB, candidates, tol, max_rounds)
    return _dense_assignment(score_AB)


def _dense_assignment(score_AB: Tensor) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = linear_sum_assignment(score_AB.double().numpy(), maximize=True)
    return rows.astype(np.int64), cols.astype(np.int64)


def _row_candidates(score_NM: Tensor, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear indices (i * m + j) of each row's top-c entries, and each row's c-th largest score.

    Every entry left out of row i scores <= that c-th value: the bound that lets the
    certificate skip rows that cannot hold a violating entry.
    """
    n, m = score_NM.shape
    top = torch.topk(score_NM, min(c, m), dim=1)
    lin = (torch.arange(n).unsqueeze(1) * m + top.indices).flatten().numpy()
    return np.unique(lin), top.values[:, -1].double().numpy()


def _col_candidates(score_NM: Tensor, c: int) -> np.ndarray:
    """Linear indices of each column's top-c entries (used only when rows alone do not match)."""
    n, m = score_NM.shape
    top_cols = torch.topk(score_NM, min(c, n), dim=0).indices
    return (top_cols * m + torch.arange(m).unsqueeze(0)).flatten().numpy()


def _sparse_assignment(
    score_NM: Tensor, c: int, tol: float, max_rounds: int, near: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Exact assignment for n <= m via candidate graph + dual certificate (module docstring)."""
    n, m = score_NM.shape
    flat = score_NM.reshape(-1)
    edges, row_kth = _row_candidates(score_NM, c)
    for round_ in range(max_rounds):
        weight = 2.0 - flat[torch.from_numpy(edges)].double().numpy()  # > 0: LAPJVsp needs non-zero
        graph = csr_matrix((weight, (edges // m, edges % m)), shape=(n, m))
        try:
            rows, cols = min_weight_full_bipartite_matching(graph)
        except ValueError:
            log.info("candidate graph has no full matching; adding column candidates")
            edges = np.union1d(edges, _col_candidates(score_NM, c))
            continue
        pot_M = _column_potentials(graph, rows, cols)
        if pot_M is None:
            break
        mate_w = 2.0 - score_NM[torch.from_numpy(rows), torch.from_numpy(cols)].double().numpy()
        row_pot = np.empty(n)
        row_pot[rows] = pot_M[cols] - mate_w
        scan_rows = np.flatnonzero(row_kth > 2.0 + row_pot - pot_M.max() - tol - 1e-6)
        bad, close = _scan(score_NM, row_pot, pot_M, tol, near if round_ == 0 else 0.0, scan_rows)
        log.debug(
            "sparse assignment round %d: scanned %d rows, %d violating entries",
            round_,
            scan_rows.size,
            bad.size,
        )
        if bad.size == 0:
            return rows.astype(np.int64), cols.astype(np.int64)
        edges = np.union1d(edges, np.union1d(bad, close[: 8 * m]))
    log.warning("sparse assignment did not certify; falling back to the dense solver")
    return _dense_assignment(score_NM)


def _column_potentials(graph: csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """Shortest-path potentials on columns of the residual graph of an optimal matching.

    Min-cost form with weights w. Arc j -> j' (cost w[i, j'] - w[i, j]) for each row i
    matched to j and each candidate j' of i; free columns (n < m) reach every column at
    cost 0 (the dummy rows of the square padding). A virtual source reaches every column
    at cost 0. Returns None if relaxation does not settle (a negative cycle: not optimal).
    """
    n, m = graph.shape
    mate_col = np.empty(n, dtype=np.int64)
    mate_col[rows] = cols
    coo = graph.tocoo()
    src = mate_col[coo.row]
    keep = coo.col != src
    mate_w = np.asarray(graph[rows, cols]).ravel()
    row_mate_w = np.empty(n)
    row_mate_w[rows] = mate_w
    cost = coo.data[keep] - row_mate_w[coo.row[keep]]
    src, dst = src[keep], coo.col[keep]
    order = np.argsort(src, kind="stable")
    src, dst, cost = src[order], dst[order], cost[order]
    indptr = np.searchsorted(src, np.arange(m + 1))
    free = np.ones(m, dtype=bool)
    free[cols] = False
    return _bellman_ford(indptr, dst, cost, free, m)


def _bellman_ford(
    indptr: np.ndarray, dst: np.ndarray, cost: np.ndarray, free: np.ndarray, m: int
) -> np.ndarray | None:
    """Frontier Bellman-Ford from a virtual source at distance 0 to every node."""
    dist = np.zeros(m)
    frontier = np.arange(m)
    has_free = bool(free.any())
    for _ in range(m + 2):
        starts, ends = indptr[frontier], indptr[frontier + 1]
        counts = ends - starts
        if counts.sum() == 0 and not has_free:
            return dist
        arc = np.repeat(ends - counts.cumsum(), counts) + np.arange(counts.sum())
        src = np.repeat(frontier, counts)
        new = dist.copy()
        np.minimum.at(new, dst[arc], dist[src] + cost[arc])
        if has_free:
            np.minimum(new, new[free].min(), out=new)
        changed = np.flatnonzero(new < dist - 1e-12)
        if changed.size == 0:
            return dist
        dist = np.minimum(new, dist)
        frontier = changed
    return None


def _scan(
    score_NM: Tensor,
    row_pot: np.ndarray,
    col_pot: np.ndarray,
    tol: float,
    near: float,
    scan_rows: np.ndarray,
    chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Entries of the full matrix with reduced cost r = 2 + u_i - s_ij - v_j below -tol.

    A float32 pass finds every entry with r < 1e-4 (float32 error is ~1e-6 here); those
    are re-checked exactly in float64. Also returns the entries with r < ``near``: the
    next round's likely violators, added together so that few rounds are needed.
    Only ``scan_rows`` are read: the others cannot violate (see ``_row_candidates``).
    """
    n, m = score_NM.shape
    u32_N = torch.from_numpy(2.0 + row_pot).float()
    v32_M = torch.from_numpy(col_pot).float()
    suspect, close = [], []
    idx_R = torch.from_numpy(scan_rows)
    for lo in range(0, idx_R.numel(), chunk):
        rows_C = idx_R[lo : lo + chunk]
        block = score_NM.index_select(0, rows_C).float()
        red = (u32_N[rows_C, None] - block) - v32_M[None, :]
        i, j = torch.nonzero(red < max(near, 1e-4), as_tuple=True)
        lin = (rows_C[i] * m + j).numpy()
        r = red[i, j].numpy()
        suspect.append(lin[r < 1e-4])
        close.append(lin[r < near])
    if not suspect:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    suspect_lin, close_lin = np.concatenate(suspect), np.concatenate(close)
    si, sj = suspect_lin // m, suspect_lin % m
    exact = (
        2.0 + row_pot[si] - score_NM[torch.from_numpy(si), torch.from_numpy(sj)].double().numpy()
    )
    exact -= col_pot[sj]
    return suspect_lin[exact < -tol], close_lin
