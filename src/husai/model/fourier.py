"""Fourier analysis over Z_p and ground-truth Fourier feature planes (pure tensor maths).

This module imports only torch (and ``husai.errors``), so ``husai.metrics`` can use it
without TransformerLens.

- :class:`FourierGroup` / :func:`task_group`: the cyclic group Z_n whose characters are a
  task's ground truth, and where each residue sits in it. Addition and subtraction live in
  Z_p itself (variables a, b, a+b, a-b; the answer is carried by a+b, resp. a-b: for
  subtraction cos(w(a-b)) = cos(wa)cos(wb) + sin(wa)sin(wb), the same trigonometry as
  Nanda et al. 2023). Multiplication mod a prime p lives in (Z/p)*, cyclic of order
  n = p - 1: with a primitive root g every nonzero x is g^log(x), and ab = g^(log a + log b),
  so a grokked model computes with cos/sin(2 pi k log(x) / n) (Chughtai, Chan & Nanda 2023,
  "A toy model of universality", Sec. 4; variables a, b, ab, a/b, answer ab). The residue 0
  is outside the group: 'mul' datasets drop pairs with a zero operand (husai.tasks.modular).
  Division has no ground truth here (its dataset keeps a = 0), so asking for it is a
  UserError, as is 'mul' with a composite modulus ((Z/n)* need not be cyclic).

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
  inputs are regressed on cos/sin(2 pi k v / n) for v in the group's four variables (for
  Z_p: a, b, a+b, a-b), k = 1..(n-1)//2; each (frequency, variable) pair gives one plane:
  the 2 x d row space of its two coefficient rows and the share of activation variance its
  fitted part explains. On the full grid the regressors are orthogonal, so the shares add
  up to the total R^2 (for even n the 1-D character k = n/2, the Legendre symbol for
  'mul', is no plane and stays in the residual). The a-b planes matter because ReLU
  neurons multiply a- and b-components: cos x cos y = (cos(x+y) + cos(x-y)) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from husai.errors import UserError

VARIABLES = ("a", "b", "a+b", "a-b")
MUL_VARIABLES = ("a", "b", "ab", "a/b")
_ANSWER = {"add": "a+b", "sub": "a-b", "mul": "ab"}


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def primitive_root(p: int) -> int:
    """The smallest generator of (Z/p)* for a prime p (3 for p = 113)."""
    if not is_prime(p):
        raise ValueError(f"expected a prime modulus, got {p}")
    factors = [q for q in range(2, p) if (p - 1) % q == 0 and is_prime(q)]
    return next(g for g in range(1, p) if all(pow(g, (p - 1) // q, p) != 1 for q in factors))


def discrete_log(p: int, g: int | None = None) -> Int[Tensor, " p"]:
    """``log[x]`` with g^log[x] = x mod p for x = 1..p-1, and -1 for x = 0."""
    g = primitive_root(p) if g is None else g
    log = torch.full((p,), -1, dtype=torch.long)
    x = 1
    for i in range(p - 1):
        if log[x] >= 0:
            raise ValueError(f"{g} is not a primitive root mod {p}")
        log[x] = i
        x = x * g % p
    return log


@dataclass(frozen=True)
class FourierGroup:
    """The cyclic group Z_n of a task's ground truth; ``log[x]`` is residue x's element (-1: none)."""

    op: str
    modulus: int
    log: Int[Tensor, " p"]
    variables: tuple[str, ...]
    generator: int | None = None

    @property
    def order(self) -> int:
        return int((self.log >= 0).sum())

    @property
    def answer(self) -> str:
        """The variable whose planes carry the answer (a+b, a-b or ab)."""
        return _ANSWER[self.op]

    @property
    def elements(self) -> Int[Tensor, " n"]:
        """The residue of each group element 0..n-1 (for 'mul', g^i mod p)."""
        members = torch.nonzero(self.log >= 0).flatten()
        return members[self.log[members].argsort()]

    def rows(self, w_PD: Tensor) -> Tensor:
        """Rows of ``w`` (indexed by residue) in group order, ready for :func:`frequency_norms`."""
        if self.generator is None:  # Z_p: residue order already (kept as is, bit for bit)
            return w_PD
        return w_PD[self.elements]

    def coordinates(self, pairs_N2: Int[Tensor, "n 2"]) -> dict[str, Float[Tensor, " n"]]:
        """Each variable's group element (unreduced sums/differences of logs) per pair."""
        la, lb = self.log[pairs_N2[:, 0]], self.log[pairs_N2[:, 1]]
        if bool((la < 0).any() | (lb < 0).any()):
            raise UserError(f"op {self.op!r}: a pair has an operand outside the group (zero?)")
        la, lb = la.double(), lb.double()
        return dict(zip(self.variables, (la, lb, la + lb, la - lb), strict=True))

    def info(self) -> dict[str, object]:
        return {"op": self.op, "order": self.order, "generator": self.generator}


def task_group(op: str, p: int) -> FourierGroup:
    """The ground-truth group of task ``op`` mod ``p``; a one-line UserError where none exists."""
    if op in ("add", "sub"):
        return FourierGroup(op, p, torch.arange(p), VARIABLES)
    if op == "mul" and is_prime(p):
        g = primitive_root(p)
        return FourierGroup(op, p, discrete_log(p, g), MUL_VARIABLES, g)
    why = (
        "the discrete-log ground truth needs a prime modulus"
        if op == "mul"
        else "no Fourier ground truth is implemented for it (supported: add, sub, mul)"
    )
    raise UserError(f"task.op: {op!r} mod {p}: {why}")


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
    logits_ABC: Float[Tensor, "p p c"],
    key_freqs: list[int],
    answer_AB: Float[Tensor, "p p"] | None = None,
    order: int | None = None,
) -> tuple[Float[Tensor, "p p c"], Float[Tensor, "p p c"]]:
    """Logits restricted to (mean + key cos/sin(w_k s) components), and logits without them.

    ``s = answer_AB`` is the answer's group element per input (default a + b on the p x p
    grid, ``order`` p); w_k = 2 pi k / order.
    """
    p = logits_ABC.shape[0]
    x = logits_ABC.double()
    a = torch.arange(p, dtype=torch.float64)
    s_AB = a[:, None] + a[None, :] if answer_AB is None else answer_AB.double()
    order = p if order is None else order
    key_ABC = torch.zeros_like(x)
    for k in key_freqs:
        for fn in (torch.cos, torch.sin):
            u_AB = fn(2 * math.pi * k * s_AB / order)
            coef_C = torch.einsum("ab,abc->c", u_AB, x) / u_AB.pow(2).sum()
            key_ABC += u_AB[:, :, None] * coef_C
    mean_C = x.mean(dim=(0, 1), keepdim=True)
    return mean_C + key_ABC, x - key_ABC


def design_matrix(
    pairs_N2: Int[Tensor, "n 2"],
    p: int,
    freqs: list[int],
    variables: tuple[str, ...] | None = None,
    group: FourierGroup | None = None,
) -> tuple[Float[Tensor, "n m"], list[tuple[int, str]]]:
    """Columns cos, sin(2 pi k v / n) per (frequency, variable) plane, and the plane list.

    ``group`` defaults to Z_p (v in a, b, a+b, a-b); ``variables`` to all of the group's.
    """
    group = task_group("add", p) if group is None else group
    values = group.coordinates(pairs_N2)
    n = group.order
    cols, planes = [], []
    for k in freqs:
        for var in group.variables if variables is None else variables:
            angle = 2 * math.pi * k * values[var] / n
            cols += [torch.cos(angle), torch.sin(angle)]
            planes.append((k, var))
    return torch.stack(cols, dim=1), planes


@dataclass(frozen=True)
class FourierPlanes:
    """One 2-D plane per (frequency, variable): its orthonormal basis and variance share.

    The one plane type of HUSAI: fitted here, saved in ``planes.safetensors``, read back by
    the metrics and the report. Built by hand (tests, planted dictionaries) it may omit
    ``variable`` (then ``""`` each), ``r2`` (then unknown: ``None``) and ``is_key`` (then
    every plane is key).
    """

    basis: Float[Tensor, "P 2 d"]
    freq: Int[Tensor, " P"]
    variable: list[str] = field(default_factory=list)
    r2: Float[Tensor, " P"] | None = None
    is_key: Bool[Tensor, " P"] | None = None

    def __post_init__(self) -> None:
        n = self.basis.shape[0]
        if not self.variable:
            object.__setattr__(self, "variable", [""] * n)
        if self.is_key is None:
            object.__setattr__(self, "is_key", torch.ones(n, dtype=torch.bool))

    def key_only(self) -> FourierPlanes:
        """The key-frequency planes alone (all planes when none is marked key)."""
        keep = torch.as_tensor(self.is_key).bool()
        if not bool(keep.any()):
            return self
        return FourierPlanes(
            self.basis[keep],
            self.freq[keep],
            [v for v, k in zip(self.variable, keep.tolist(), strict=True) if k],
            None if self.r2 is None else self.r2[keep],
            keep[keep],
        )

    def known_r2(self) -> Float[Tensor, " P"]:
        """``r2``, which planes built by hand may lack (then a ValueError)."""
        if self.r2 is None:
            raise ValueError("these planes carry no variance shares (r2)")
        return self.r2

    @property
    def key_freqs(self) -> list[int]:
        return sorted({int(f) for f in self.freq[self.is_key]})

    @property
    def key_r2_total(self) -> float:
        return float(self.known_r2()[self.is_key].sum())

    def r2_by_variable(self, key_only: bool = True) -> dict[str, float]:
        mask = self.is_key if key_only else torch.ones_like(self.is_key)
        return {
            v: float(
                sum(
                    r
                    for r, vv, m in zip(self.known_r2(), self.variable, mask, strict=True)
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
        if self.r2 is not None:
            r2 = self.r2[idx]
            idx = idx[r2 >= min_share * r2.sum()]
        rows = self.basis[idx].reshape(-1, self.basis.shape[-1]).double()
        _, s, vh = torch.linalg.svd(rows, full_matrices=False)
        return vh[s > 1e-6 * s[0]].float()

    def to_tensors(self) -> dict[str, Tensor]:
        out = {"basis": self.basis, "freq": self.freq, "is_key": self.is_key}
        return out if self.r2 is None else {**out, "r2": self.r2}

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], variable: list[str]) -> FourierPlanes:
        """Planes as saved by :meth:`to_tensors` (``r2`` and ``is_key`` may be absent)."""
        return cls(
            t["basis"].float(),
            t["freq"].long(),
            list(variable),
            t["r2"].float() if "r2" in t else None,
            t["is_key"].bool() if "is_key" in t else None,
        )


def fit_planes(
    acts_ND: Float[Tensor, "n d"],
    pairs_N2: Int[Tensor, "n 2"],
    p: int,
    key_freqs: list[int],
    variables: tuple[str, ...] | None = None,
    group: FourierGroup | None = None,
) -> FourierPlanes:
    """Regress centred activations on every (k = 1..(n-1)//2, variable) plane; see module doc."""
    group = task_group("add", p) if group is None else group
    x_ND = acts_ND.double() - acts_ND.double().mean(0)
    freqs = list(range(1, (group.order - 1) // 2 + 1))
    phi_NM, planes = design_matrix(pairs_N2, p, freqs, variables, group)
    phi_NM = phi_NM - phi_NM.mean(0)
    # QR without pivoting (gels): the columns are orthogonal on the full grid, so full rank.
    # The default driver (gelsy, pivoted QR) gave coefficients differing in the last bits
    # between calls on identical inputs in one process, even on one thread; gels gives the
    # same bits every time at a given thread count (across thread counts they differ ~4e-16).
    coef_MD = torch.linalg.lstsq(phi_NM, x_ND, driver="gels").solution
    # plane j's fitted part phi_j c_j has squared norm tr(c_j^T (phi_j^T phi_j) c_j): from the
    # 2 x 2 Gram blocks, without forming the n x d fitted activations of every plane
    phi_NP2 = phi_NM.reshape(phi_NM.shape[0], len(planes), 2)
    gram_P22 = torch.einsum("npi,npk->pik", phi_NP2, phi_NP2)
    coef_P2D = coef_MD.reshape(len(planes), 2, -1)
    fitted_P = torch.einsum("pid,pik,pkd->p", coef_P2D, gram_P22, coef_P2D)
    bases = torch.linalg.svd(coef_P2D, full_matrices=False)[2]
    freq = torch.tensor([k for k, _ in planes])
    return FourierPlanes(
        basis=bases.float(),
        freq=freq,
        variable=[v for _, v in planes],
        r2=(fitted_P / x_ND.pow(2).sum()).float(),
        is_key=torch.isin(freq, torch.tensor(sorted(key_freqs), dtype=torch.long)),
    )


def effective_rank(acts_ND: Float[Tensor, "n d"]) -> float:
    """Participation ratio (sum lambda)^2 / sum lambda^2 of the covariance eigenvalues."""
    x = acts_ND.double() - acts_ND.double().mean(0)
    lam = torch.linalg.svdvals(x).pow(2)
    return (lam.sum().pow(2) / lam.pow(2).sum()).item()
