"""Similarity kernels between two SAEs: pure functions of decoders, encoders or codes.

``pw_mcc`` (Song et al. 2025), ``mmcs`` (Sharkey et al. 2022), ``shared_fraction``
(Paulo & Belrose 2025) and ``activation_mcc`` (MCC as in ICA) are defined in
:mod:`husai.metrics.stability`'s docstring. They sit below baselines and stability in the
import order (matching -> similarity -> baselines -> stability), so the random baselines
can call the very kernels they are baselines for without an import cycle.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from husai.metrics.inputs import as_decoder
from husai.metrics.matching import DENSE_MAX, cosine_matrix, match, match_scores, unit_rows


def pw_mcc(a: Any, b: Any, *, signed: bool = True) -> float:
    """Song et al. 2025 PW-MCC: Hungarian on signed cosine, all latents, mean over matches."""
    dec_a, dec_b = as_decoder(a), as_decoder(b)
    if dec_a.shape[0] * dec_b.shape[0] <= DENSE_MAX:
        dec_a, dec_b = dec_a.double(), dec_b.double()
    return match(dec_a, dec_b, signed=signed).mean


def mmcs(a: Any, b: Any) -> float:
    """Mean max |cosine|, both directions averaged (Sharkey et al. 2022)."""
    dec_a, dec_b = as_decoder(a), as_decoder(b)
    if dec_a.shape[0] == 0 or dec_b.shape[0] == 0:
        return 0.0
    abs_AB = cosine_matrix(dec_a, dec_b).abs()
    return 0.5 * float(
        abs_AB.max(dim=1).values.double().mean() + abs_AB.max(dim=0).values.double().mean()
    )


def shared_fraction(
    dec_a: Any, dec_b: Any, enc_a: Any = None, enc_b: Any = None, *, tau: float = 0.7
) -> float:
    """Share of matched pairs with decoder (and, if given, encoder) cosine >= tau."""
    m = match(as_decoder(dec_a), as_decoder(dec_b))
    if m.values.size == 0:
        return 0.0
    ok = m.values >= tau
    if enc_a is not None and enc_b is not None:
        e_a, e_b = unit_rows(as_decoder(enc_a)), unit_rows(as_decoder(enc_b))
        enc_cos = (e_a[torch.from_numpy(m.rows)] * e_b[torch.from_numpy(m.cols)]).sum(1).numpy()
        ok &= enc_cos >= tau
    return float(ok.mean())


_SCATTER_COST = 16
"""A product of two non-zeros summed by index costs about this many GEMM multiply-adds."""
_PAIRS_PER_CHUNK = 20_000_000
CONSTANT_REL = 1e-6
"""A latent whose standard deviation is <= this share of its |mean| (or <= 1e-12) is constant."""


def correlation_matrix(
    codes_a_NA: Float[Tensor, "N n_a"], codes_b_NB: Float[Tensor, "N n_b"]
) -> Float[Tensor, "n_a n_b"]:
    """Pearson correlation of every latent of A with every latent of B (0 for constant latents).

    In float64, from the centred cross moment ``sum_r (a_r - mu_a)(b_r - mu_b) = A^T B -
    N mu_a mu_b^T``. When the codes are sparse enough (SAE codes usually are) ``A^T B`` is
    summed over each row's pairs of non-zeros (at most ``k_a k_b`` per row), so its cost
    scales with those pairs rather than N n_a n_b; else it is a dense product. Means and
    standard deviations are two-pass (centred). A latent is constant, correlation 0, when
    its standard deviation is <= 1e-12 or <= :data:`CONSTANT_REL` of its |mean| (below that
    the moment form loses the digits that matter); results are clipped to [-1, 1].
    """
    codes_a_NA, codes_b_NB = torch.as_tensor(codes_a_NA), torch.as_tensor(codes_b_NB)
    if codes_a_NA.shape[0] != codes_b_NB.shape[0]:
        raise ValueError(
            f"codes must cover the same inputs: {codes_a_NA.shape[0]} vs {codes_b_NB.shape[0]}"
        )
    # An all-zero latent (a dead one) is constant: its row or column is 0. Only the others
    # are computed; the sparse/dense choice is made on the full widths, so the values (and
    # their bits) are those of the full computation.
    used_a, used_b = nonzero_columns(codes_a_NA), nonzero_columns(codes_b_NB)
    full = torch.zeros(codes_a_NA.shape[1], codes_b_NB.shape[1], dtype=torch.float64)
    if not len(used_a) or not len(used_b):
        return full
    a, b = _Codes(codes_a_NA[:, used_a]), _Codes(codes_b_NB[:, used_b])
    sparse = a.n * a.k * b.k * _SCATTER_COST < a.n * full.shape[0] * full.shape[1]
    full[used_a[:, None], used_b[None, :]] = _correlation(a, b, sparse)
    return full


def nonzero_columns(codes_NS: Tensor) -> Tensor:
    """Indices of the latents that fire at least once (a column with a non-zero)."""
    return torch.nonzero(codes_NS.detach().ne(0).any(dim=0)).flatten()


def _correlation(a: _Codes, b: _Codes, sparse: bool) -> Tensor:
    cross = _sparse_cross(a, b) if sparse else a.dense().T @ b.dense()
    mean_a, std_a = a.moments(sparse)
    mean_b, std_b = b.moments(sparse)
    cov = cross / max(1, a.n) - torch.outer(mean_a, mean_b)
    varies_a, varies_b = _varies(mean_a, std_a), _varies(mean_b, std_b)
    scale = torch.outer(torch.where(varies_a, std_a, 1.0), torch.where(varies_b, std_b, 1.0))
    corr = torch.where(torch.outer(varies_a, varies_b), cov / scale, torch.zeros_like(cov))
    return corr.clamp_(-1.0, 1.0)


class _Codes:
    """One code matrix; for the sparse path, each row's non-zeros padded to ``k`` per row
    (``idx``/``vals`` [N, k], zeros after the row's own non-zeros)."""

    def __init__(self, codes_NS: Tensor) -> None:
        self.codes = torch.as_tensor(codes_NS).detach().cpu()
        self.n, self.width = self.codes.shape
        self.k = int(torch.count_nonzero(self.codes, dim=1).max()) if self.n else 0
        self._padded: tuple[Tensor, Tensor] | None = None

    def dense(self) -> Tensor:
        return self.codes.double()

    def padded(self) -> tuple[Tensor, Tensor]:
        if self._padded is None:
            size = self.codes if bool((self.codes >= 0).all()) else self.codes.abs()
            _, idx = size.topk(self.k, dim=1)  # the row's non-zeros come first
            self._padded = idx, self.codes.gather(1, idx).double()
        return self._padded

    def moments(self, sparse: bool) -> tuple[Tensor, Tensor]:
        """Mean and population standard deviation per latent, two-pass, in float64."""
        n = max(1, self.n)
        if not sparse:
            x = self.dense()
            mean = x.mean(dim=0)
            return mean, (x - mean).pow(2).mean(dim=0).sqrt()
        idx, vals = self.padded()
        flat, w = idx.flatten(), vals.flatten()
        present = w != 0
        mean = torch.bincount(flat, weights=w, minlength=self.width) / n
        dev = torch.where(present, (w - mean[flat]).pow(2), torch.zeros_like(w))
        zeros = self.n - torch.bincount(flat[present], minlength=self.width)
        ss = torch.bincount(flat, weights=dev, minlength=self.width) + zeros * mean.pow(2)
        return mean, (ss / n).sqrt()


def _varies(mean: Tensor, std: Tensor) -> Tensor:
    return (std > 1e-12) & (std > CONSTANT_REL * mean.abs())


def _sparse_cross(a: _Codes, b: _Codes) -> Tensor:
    """``A^T B`` summed over each row's (padded) pairs of non-zeros, in row chunks; bincount
    sums in a fixed order, so the same bits on every run (padding adds exact zeros)."""
    (idx_a, vals_a), (idx_b, vals_b) = a.padded(), b.padded()
    out = torch.zeros(a.width * b.width, dtype=torch.float64)
    step = max(1, _PAIRS_PER_CHUNK // max(1, a.k * b.k))
    for start in range(0, a.n, step):
        rows = slice(start, start + step)
        flat = idx_a[rows, :, None] * b.width + idx_b[rows, None, :]
        w = vals_a[rows, :, None] * vals_b[rows, None, :]
        out += torch.bincount(flat.flatten(), weights=w.flatten(), minlength=out.numel())
    return out.view(a.width, b.width)


def activation_mcc(codes_a_NA: Tensor, codes_b_NB: Tensor) -> float:
    """Hungarian matching on |Pearson correlation| of activations; mean over matched pairs."""
    if codes_a_NA.shape[0] != codes_b_NB.shape[0]:
        raise ValueError(
            f"codes must cover the same inputs: {codes_a_NA.shape[0]} vs {codes_b_NB.shape[0]}"
        )
    return match_scores(correlation_matrix(codes_a_NA, codes_b_NB).abs()).mean
