"""Fourier analysis over Z_p and ground-truth Fourier feature planes (pure tensor maths).

This module imports only torch, so ``husai.metrics`` can use it without TransformerLens.

- :func:`fourier_basis`: the orthonormal real Fourier basis of functions on Z_p: a constant,
  then cos/sin(2 pi k x / p) for k = 1..p//2 (Nanda et al. 2023, Sec. 3).
- :func:`frequency_norms`: the norm of a matrix's Fourier components per frequency, e.g. of
  the embedding W_E (rows indexed by the input token) or of W_L = W_out W_U (columns indexed by
  the output). Key frequencies (:func:`key_frequencies`) are the fewest frequencies carrying a
  share of the non-constant squared norm; :func:`gini` is the Gini coefficient of the norms
  (Nanda et al. 2023, Sec. 5.1; Hurley & Rickard 2009).
- :func:`restricted_and_excluded`: the logit components along cos/sin(w_k (a + b)) for the key
  frequencies, which carry the Fourier algorithm's answer cos(w_k (a + b - c)); restricted loss
  keeps only them (plus each output's mean), excluded loss removes them (Nanda et al. 2023,
  Sec. 5.1, "restricted loss" and "excluded loss").
- :func:`fit_planes`: ground truth in the model's own activation space. Activations over all
  inputs are regressed on cos/sin(2 pi k v / p) for v in a, b, a+b, a-b; each (frequency,
  variable) pair gives one plane: the 2 x d row space of its two coefficient rows and the
  share of activation variance its fitted part explains. On the full p x p grid with p odd the
  regressors are orthogonal, so the shares add up to the total R^2. The a-b planes matter
  because ReLU neurons multiply a- and b-components: cos x cos y = (cos(x+y) + cos(x-y)) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

VARIABLES = ("a", "b", "a+b", "a-b")


def fourier_basis(p: int) -> tuple[Float[Tensor, "p p"], list[str]]:
    """Orthonormal real Fourier basis (rows) over Z_p and a label per row."""
    x = torch.arange(p, dtype=torch.float64)
    rows, labels = [torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64)], ["const"]
    for k in range(1, p // 2 + 1):
        angle = 2 * math.pi * k * x / p
        for name, fn in (("cos", torch.cos), ("sin", torch.sin)):
            row = fn(angle)
            if row.norm() > 1e-9:  # sin(pi x) vanishes for even p
                rows.append(row / row.norm())
                labels.append(f"{name} {k}")
    return torch.stack(rows), labels


def row_frequencies(p: int) -> Int[Tensor, " p"]:
    """The frequency of each row of :func:`fourier_basis` (0 for the constant)."""
    _, labels = fourier_basis(p)
    return torch.tensor([0 if lab == "const" else int(lab.split()[1]) for lab in labels])


def frequency_norms(w_PD: Float[Tensor, "p d"]) -> Float[Tensor, " n_freq"]:
    """Norm of ``w``'s Fourier components per frequency 0..p//2 (first dim indexed by Z_p)."""
    p = w_PD.shape[0]
    basis, _ = fourier_basis(p)
    coef_PD = basis @ w_PD.detach().double()
    sq_F = torch.zeros(p // 2 + 1, dtype=torch.float64)
    sq_F.index_add_(0, row_frequencies(p), coef_PD.pow(2).sum(-1))
    return sq_F.sqrt()


def top_share(norms_F: Float[Tensor, " n_freq"], k: int = 8, squared: bool = True) -> float:
    """Share of the non-constant (squared, by default) Fourier norm in the top ``k`` frequencies."""
    vals = norms_F[1:].double().pow(2 if squared else 1)
    return (vals.sort(descending=True).values[:k].sum() / vals.sum()).item()


def key_frequencies(norms_F: Float[Tensor, " n_freq"], coverage: float = 0.9) -> list[int]:
    """The fewest frequencies (>= 1) whose squared norms carry ``coverage`` of the non-constant total."""
    sq = norms_F[1:].double().pow(2)
    order = sq.argsort(descending=True)
    cum = sq[order].cumsum(0) / sq.sum()
    n = int((cum < coverage).sum().item()) + 1
    return sorted(int(i) + 1 for i in order[:n])


def gini(values: Float[Tensor, " n"]) -> float:
    """Gini coefficient of non-negative values: sum_ij |x_i - x_j| / (2 n^2 mean)."""
    x = values.double().flatten()
    return ((x[:, None] - x[None, :]).abs().sum() / (2 * x.numel() ** 2 * x.mean())).item()


def restricted_and_excluded(
    logits_ABC: Float[Tensor, "p p c"], key_freqs: list[int]
) -> tuple[Float[Tensor, "p p c"], Float[Tensor, "p p c"]]:
    """Logits restricted to (mean + key cos/sin(w_k(a+b)) components), and logits without them."""
    p = logits_ABC.shape[0]
    x = logits_ABC.double()
    a = torch.arange(p, dtype=torch.float64)
    s_AB = a[:, None] + a[None, :]
    key_ABC = torch.zeros_like(x)
    for k in key_freqs:
        for fn in (torch.cos, torch.sin):
            u_AB = fn(2 * math.pi * k * s_AB / p)
            coef_C = torch.einsum("ab,abc->c", u_AB, x) / u_AB.pow(2).sum()
            key_ABC += u_AB[:, :, None] * coef_C
    mean_C = x.mean(dim=(0, 1), keepdim=True)
    return mean_C + key_ABC, x - key_ABC


def design_matrix(
    pairs_N2: Int[Tensor, "n 2"], p: int, freqs: list[int], variables: tuple[str, ...] = VARIABLES
) -> tuple[Float[Tensor, "n m"], list[tuple[int, str]]]:
    """Columns cos, sin(2 pi k v / p) per (frequency, variable) plane, and the plane list."""
    a, b = pairs_N2[:, 0].double(), pairs_N2[:, 1].double()
    values = {"a": a, "b": b, "a+b": a + b, "a-b": a - b}
    cols, planes = [], []
    for k in freqs:
        for var in variables:
            angle = 2 * math.pi * k * values[var] / p
            cols += [torch.cos(angle), torch.sin(angle)]
            planes.append((k, var))
    return torch.stack(cols, dim=1), planes


@dataclass(frozen=True)
class FourierPlanes:
    """One 2-D plane per (frequency, variable): its orthonormal basis and variance share."""

    basis: Float[Tensor, "P 2 d"]
    freq: Int[Tensor, " P"]
    variable: list[str]
    r2: Float[Tensor, " P"]
    is_key: Bool[Tensor, " P"]

    @property
    def key_freqs(self) -> list[int]:
        return sorted({int(f) for f in self.freq[self.is_key]})

    @property
    def key_r2_total(self) -> float:
        return float(self.r2[self.is_key].sum())

    def r2_by_variable(self, key_only: bool = True) -> dict[str, float]:
        mask = self.is_key if key_only else torch.ones_like(self.is_key)
        return {
            v: float(
                sum(
                    r
                    for r, vv, m in zip(self.r2, self.variable, mask, strict=True)
                    if vv == v and m
                )
            )
            for v in dict.fromkeys(self.variable)
        }

    def frequency_basis(self, freq: int, min_share: float = 0.01) -> Float[Tensor, "r d"]:
        """Orthonormal span of the key planes of ``freq`` (up to 8 dims).

        Planes explaining less than ``min_share`` of that frequency's key-plane R^2 are left
        out, so a plane the hook does not carry adds no noise directions.
        """
        idx = torch.nonzero(self.is_key & (self.freq == freq)).flatten()
        if idx.numel() == 0:
            raise ValueError(f"frequency {freq} is not a key frequency (key: {self.key_freqs})")
        r2 = self.r2[idx]
        idx = idx[r2 >= min_share * r2.sum()]
        rows = self.basis[idx].reshape(-1, self.basis.shape[-1]).double()
        _, s, vh = torch.linalg.svd(rows, full_matrices=False)
        return vh[s > 1e-6 * s[0]].float()

    def to_tensors(self) -> dict[str, Tensor]:
        return {"basis": self.basis, "freq": self.freq, "r2": self.r2, "is_key": self.is_key}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], variable: list[str]) -> FourierPlanes:
        return cls(
            t["basis"].float(),
            t["freq"].long(),
            list(variable),
            t["r2"].float(),
            t["is_key"].bool(),
        )


def fit_planes(
    acts_ND: Float[Tensor, "n d"],
    pairs_N2: Int[Tensor, "n 2"],
    p: int,
    key_freqs: list[int],
    variables: tuple[str, ...] = VARIABLES,
) -> FourierPlanes:
    """Regress centred activations on every (k = 1..(p-1)//2, variable) plane; see module doc."""
    x_ND = acts_ND.double() - acts_ND.double().mean(0)
    phi_NM, planes = design_matrix(pairs_N2, p, list(range(1, (p - 1) // 2 + 1)), variables)
    phi_NM = phi_NM - phi_NM.mean(0)
    coef_MD = torch.linalg.lstsq(phi_NM, x_ND).solution
    total = x_ND.pow(2).sum()
    bases, r2s = [], []
    for j in range(len(planes)):
        c_2D = coef_MD[2 * j : 2 * j + 2]
        r2s.append((phi_NM[:, 2 * j : 2 * j + 2] @ c_2D).pow(2).sum() / total)
        bases.append(torch.linalg.svd(c_2D, full_matrices=False)[2])
    freq = torch.tensor([k for k, _ in planes])
    return FourierPlanes(
        basis=torch.stack(bases).float(),
        freq=freq,
        variable=[v for _, v in planes],
        r2=torch.stack(r2s).float(),
        is_key=torch.isin(freq, torch.tensor(sorted(key_freqs), dtype=torch.long)),
    )


def effective_rank(acts_ND: Float[Tensor, "n d"]) -> float:
    """Participation ratio (sum lambda)^2 / sum lambda^2 of the covariance eigenvalues."""
    x = acts_ND.double() - acts_ND.double().mean(0)
    lam = torch.linalg.svdvals(x).pow(2)
    return (lam.sum().pow(2) / lam.pow(2).sum()).item()
