"""Per-latent trust across SAEs of one input width: stability, partners, reproducible subspace.

Which latents of an SAE would come back if it were trained again? Given n >= 2 SAEs on
the same activations (seeds, or any SAELens checkpoints), every latent of every SAE gets
(u: its unit decoder row; "the others": the n - 1 other SAEs):

- **partner** in each other SAE: the latent with the largest *signed* decoder cosine to
  u, and that cosine (signed: codes are non-negative, so -u is another feature);
- **stability**: the fraction of the others holding a latent at decoder cosine >= tau
  (default 0.7): the per-feature reappearance estimate of Kurochkin et al. 2026
  ("Unstable Features, Reproducible Subspaces"). Cosines are float32, so one within
  1e-6 below tau counts (tau = 1 then finds exact copies);
- **reproducible-subspace share**: Kurochkin et al. find that unstable latents lie in
  low-rank subspaces that recur across seeds. A latent is *unstable* when its stability
  is < 1/2 (for n = 2: no partner). For SAE i, pool the unit decoder rows of the other
  SAEs' unstable latents and take their top-r principal directions Q_i (eigenvectors of
  the uncentred Gram matrix, i.e. the top right singular vectors); the share of u is
  ||Q_i u||^2 in [0, 1]. r is ``subspace_rank`` when given, else the participation
  ratio (sum lambda)^2 / sum lambda^2 of that Gram matrix's eigenvalues (rounded up),
  capped at d_in // 4; never above the number of pooled rows. Baseline: r / d_in, the
  exact expected share of a uniformly random unit vector in a fixed r-dim subspace; with
  activations also the data-aware one, the exact expected share of a unit vector uniformly
  random inside the activations' principal subspace (orthonormal basis B, rank R):
  E||Q_i u||^2 = tr(Q_i B^T B Q_i^T) / R = ||Q_i B^T||_F^2 / R (since E[u u^T] = B^T B / R).
  Decoders live in the data's subspace, so on low-rank activations this one is near 1.
  With no unstable latent among the others the share is NaN (r = 0);
- with activations ``[R, d_in]``: **firing frequency** (share of rows with code > 0) and
  **partner correlation**: the Pearson correlation of u's codes with its partner's codes
  in each other SAE, mean over the others (constant codes correlate 0).

Random baseline (:func:`random_stability`, analytic and exact): were every decoder row
an independent uniformly random unit vector in R^d, a fixed u has cosine >= tau with one
of them with probability q = I_{1 - tau^2}((d - 1) / 2, 1 / 2) / 2 (the cosine's square
is Beta(1/2, (d - 1)/2)), an SAE of S latents holds one with p = 1 - (1 - q)^S, and the
number of the others holding one is Poisson-binomial in those p. With activations, the
harder, data-aware baseline is the same formula in R^r, r the rank of the activations'
principal subspace holding 95% of their variance
(:func:`husai.metrics.data_baselines.data_rank`): decoder rows uniformly random inside
that subspace have the cosines of R^r (``data_rank``; ``baseline_subspace`` of the
summary's stability numbers).

Cost: each unordered pair of SAEs once, float32 matmuls over row chunks of one SAE
against the whole other (a ``chunk x S`` buffer, never ``n_total x n_total``). Rows get
their max from the chunk; columns keep the max per block of ``block`` rows (cheap
``amax``) and their argmax is recomputed inside their best block only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from scipy.special import betainc
from torch import Tensor

from husai.errors import UserError
from husai.metrics.baselines import MetricValue, metric_value
from husai.metrics.data_baselines import data_reference
from husai.metrics.inputs import as_decoder
from husai.metrics.matching import unit_rows

TAU_SLACK = 1e-6
UNSTABLE_BELOW = 0.5


@dataclass(frozen=True)
class TrustTable:
    """One row per latent of every SAE (SAE order, then latent order)."""

    names: list[str]
    """Each SAE's name (its path for ``husai trust``); ``sae`` indexes this list."""
    sae: Int[np.ndarray, " rows"]
    latent: Int[np.ndarray, " rows"]
    stability: Float[np.ndarray, " rows"]
    partner: Int[np.ndarray, "rows n_saes"]
    """Best partner's latent index in each SAE; -1 in the row's own SAE."""
    partner_cos: Float[np.ndarray, "rows n_saes"]
    """Its signed decoder cosine; NaN in the row's own SAE."""
    subspace_share: Float[np.ndarray, " rows"]
    subspace_rank: Int[np.ndarray, " rows"]
    """r of the row's SAE (the baseline share is r / d_in)."""
    fire_freq: Float[np.ndarray, " rows"] | None
    partner_corr: Float[np.ndarray, " rows"] | None
    tau: float
    d_in: int
    data_rank: int | None = None
    """Rank of the activations' principal subspace (95% of variance); None without them."""
    subspace_baseline_data: Float[np.ndarray, " rows"] | None = None
    """The row's SAE's data-aware subspace-share baseline (module docstring); None without
    activations, NaN where the share is."""

    @property
    def sizes(self) -> list[int]:
        return np.bincount(self.sae, minlength=len(self.names)).tolist()

    def columns(self) -> dict[str, np.ndarray]:
        """The flat table (the schema of trust.parquet / trust.csv), in column order."""
        cols: dict[str, np.ndarray] = {
            "sae": np.asarray(self.names, dtype=object)[self.sae],
            "sae_index": self.sae,
            "latent": self.latent,
            "stability": self.stability,
            "best_cos": np.nanmax(self.partner_cos, axis=1),
            "subspace_share": self.subspace_share,
            "subspace_rank": self.subspace_rank,
            "subspace_baseline": self.subspace_rank / self.d_in,
        }
        if self.subspace_baseline_data is not None:
            cols["subspace_baseline_data"] = self.subspace_baseline_data
        if self.fire_freq is not None and self.partner_corr is not None:
            cols |= {"fire_freq": self.fire_freq, "partner_corr": self.partner_corr}
        for j in range(len(self.names)):
            cols |= {f"partner_in_{j}": self.partner[:, j], f"cos_in_{j}": self.partner_cos[:, j]}
        return cols

    def to_frame(self) -> Any:
        """The table as a pandas DataFrame (pandas imported here: it is heavy)."""
        import pandas as pd

        return pd.DataFrame(self.columns())


def trust_table(
    saes: Sequence[Any],
    *,
    tau: float = 0.7,
    subspace_rank: int | None = None,
    acts: Float[Tensor, "R D"] | None = None,
    names: Sequence[str] | None = None,
    chunk: int = 2048,
    block: int = 128,
) -> TrustTable:
    """Per-latent trust of two or more SAEs (module docstring for every definition).

    ``saes``: decoders ``[S, d]``, SAE objects or SAE directories; with ``acts`` each
    must have ``encode``. ``names`` default to "0", "1", ...
    """
    check_tau(tau)
    if subspace_rank is not None and subspace_rank < 1:
        raise UserError(f"subspace_rank: expected an integer >= 1, got {subspace_rank}")
    units = [unit_rows(as_decoder(s)) for s in saes]
    if len(units) < 2:
        raise UserError(f"trust: expected at least 2 SAEs, got {len(units)}")
    if len({u.shape[1] for u in units}) != 1:
        raise UserError(f"trust: SAEs read different input widths {[u.shape[1] for u in units]}")
    names = [str(i) for i in range(len(units))] if names is None else [str(n) for n in names]
    idx, cos = best_partners(units, chunk=chunk, block=block)
    stab = [stability(c, tau) for c in cos]
    shares, ranks, tops = subspace_shares(units, stab, subspace_rank)
    fire = corr = data_basis = None
    if acts is not None:
        fire, corr = activation_stats(saes, acts, idx)
        data_basis = data_reference(acts).basis.double()
    return TrustTable(
        names=names,
        sae=_concat([np.full(len(u), i) for i, u in enumerate(units)]),
        latent=_concat([np.arange(len(u)) for u in units]),
        stability=_concat(stab),
        partner=_concat([i.numpy() for i in idx]),
        partner_cos=_concat([c.double().numpy() for c in cos]),
        subspace_share=_concat(shares),
        subspace_rank=_concat([np.full(len(u), r) for u, r in zip(units, ranks, strict=True)]),
        fire_freq=None if fire is None else _concat(fire),
        partner_corr=None if corr is None else _concat(corr),
        tau=float(tau),
        d_in=int(units[0].shape[1]),
        data_rank=None if data_basis is None else int(data_basis.shape[0]),
        subspace_baseline_data=None if data_basis is None else _per_row(units, tops, data_basis),
    )


def _per_row(units: list[Tensor], tops: list[Tensor | None], basis_RD: Tensor) -> np.ndarray:
    """Each row's SAE's data-aware subspace-share baseline."""
    per_sae = [_share_in_data(t, basis_RD) for t in tops]
    return _concat([np.full(len(u), b) for u, b in zip(units, per_sae, strict=True)])


def _share_in_data(top_Dr: Tensor | None, basis_RD: Tensor) -> float:
    """E||Q^T u||^2 for u uniform on the unit sphere of the data subspace (module docstring)."""
    if top_Dr is None or not len(basis_RD):
        return math.nan
    return min(1.0, float((basis_RD @ top_Dr.double()).pow(2).sum()) / basis_RD.shape[0])


def _concat(parts: Sequence[Any]) -> np.ndarray:
    return np.concatenate([np.asarray(x) for x in parts])


def check_tau(tau: float) -> None:
    if not (isinstance(tau, (int, float)) and 0.0 < tau <= 1.0):
        raise UserError(f"tau: expected a decoder cosine in (0, 1], got {tau}")


def stability(cos_SN: Float[Tensor, "S N"], tau: float) -> Float[np.ndarray, " S"]:
    """Fraction of the other SAEs with a partner at cosine >= tau (own column NaN)."""
    hits = (cos_SN >= tau - TAU_SLACK).sum(dim=1)
    return (hits.double() / (cos_SN.shape[1] - 1)).numpy()


def best_partners(
    units: list[Float[Tensor, "S D"]], *, chunk: int = 2048, block: int = 128
) -> tuple[list[Tensor], list[Tensor]]:
    """Per SAE i: partner index ``[S_i, n]`` (-1 at i) and signed cosine (NaN at i)."""
    n = len(units)
    idx = [torch.full((len(u), n), -1, dtype=torch.long) for u in units]
    cos = [torch.full((len(u), n), math.nan) for u in units]
    for i in range(n):
        for j in range(i + 1, n):
            ia, ca, ib, cb = pair_partners(units[i], units[j], chunk=chunk, block=block)
            idx[i][:, j], cos[i][:, j], idx[j][:, i], cos[j][:, i] = ia, ca, ib, cb
    return idx, cos


@torch.no_grad()
def pair_partners(
    a_AD: Float[Tensor, "A D"], b_BD: Float[Tensor, "B D"], *, chunk: int = 2048, block: int = 128
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Best partner (index, cosine) of each row of A in B and of each row of B in A.

    Rows must be unit (or zero). One pass of ``a @ b.T`` in row chunks of A: row maxima
    directly; for B, the max per block of ``block`` rows of A, then the argmax recomputed
    in each column's best block. The chunk products go through numpy's BLAS (OpenBLAS in
    the numpy wheels: 134 GFLOP/s against 110 for torch's MKL on the 2-core AMD EPYC of
    BENCHMARKS.md, "Per-latent trust") into one reused buffer that torch reduces in place.
    """
    a_np, b_np = _f32(a_AD), _f32(b_BD)
    n_a, n_b = a_np.shape[0], b_np.shape[0]
    idx_a, cos_a = torch.empty(n_a, dtype=torch.long), torch.empty(n_a)
    best_b = torch.full((n_b,), -math.inf)
    start_b = torch.zeros(n_b, dtype=torch.long)
    buf = torch.empty(min(chunk, n_a), n_b)
    for start in range(0, n_a, chunk):
        stop = min(start + chunk, n_a)
        sim = buf[: stop - start]
        np.matmul(a_np[start:stop], b_np.T, out=sim.numpy())
        torch.max(sim, dim=1, out=(cos_a[start:stop], idx_a[start:stop]))
        for b0 in range(0, stop - start, block):
            top = sim[b0 : b0 + block].amax(dim=0)
            better = top > best_b
            best_b = torch.where(better, top, best_b)
            start_b[better] = start + b0
    idx_b, cos_b = _argmax_in_blocks(a_AD, b_BD, start_b, block)
    return idx_a, cos_a, idx_b, cos_b


def _f32(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


def _argmax_in_blocks(
    a_AD: Tensor, b_BD: Tensor, start_b: Tensor, block: int
) -> tuple[Tensor, Tensor]:
    """Each row of B's best row of A, searched in the block of A starting at ``start_b``."""
    idx_b, cos_b = torch.empty(len(b_BD), dtype=torch.long), torch.empty(len(b_BD))
    order = torch.argsort(start_b, stable=True)
    starts, counts = torch.unique_consecutive(start_b[order], return_counts=True)
    for s, cols in zip(starts.tolist(), order.split(counts.tolist()), strict=True):
        vals, k = (b_BD[cols] @ a_AD[s : s + block].T).max(dim=1)
        idx_b[cols], cos_b[cols] = k + s, vals
    return idx_b, cos_b


def subspace_shares(
    units: list[Float[Tensor, "S D"]], stab: list[np.ndarray], rank: int | None
) -> tuple[list[np.ndarray], list[int], list[Tensor | None]]:
    """Per SAE: each latent's share in the top-r subspace of the others' unstable latents,
    r, and that subspace's orthonormal basis ``[D, r]`` (None where r = 0)."""
    d = units[0].shape[1]
    pools = [
        u[torch.from_numpy(s < UNSTABLE_BELOW) & (u.norm(dim=1) > 0)]
        for u, s in zip(units, stab, strict=True)
    ]
    grams = [(p.T @ p).double() for p in pools]
    total = sum(grams, torch.zeros(d, d, dtype=torch.float64))
    shares, ranks, tops = [], [], []
    for i, u in enumerate(units):
        n_pooled = sum(len(p) for j, p in enumerate(pools) if j != i)
        if n_pooled == 0:
            shares.append(np.full(len(u), math.nan))
            ranks.append(0)
            tops.append(None)
            continue
        lam, vec = torch.linalg.eigh(total - grams[i])  # ascending
        lam = lam.clamp_min(0.0)
        r = rank if rank is not None else _participation_rank(lam, d)
        r = min(r, d, n_pooled)
        top = vec[:, -r:].float()  # [D, r]: the top-r principal directions as columns
        shares.append((u @ top).pow(2).sum(dim=1).clamp(0.0, 1.0).double().numpy())
        ranks.append(r)
        tops.append(top)
    return shares, ranks, tops


def _participation_rank(lam: Tensor, d: int) -> int:
    """ceil((sum lambda)^2 / sum lambda^2), capped at d // 4, at least 1 (uncentred)."""
    pr = float(lam.sum() ** 2 / lam.pow(2).sum().clamp_min(1e-300))
    return max(1, min(math.ceil(pr - 1e-9), d // 4))


@torch.no_grad()
def activation_stats(
    saes: Sequence[Any], acts_RD: Float[Tensor, "R D"], idx: list[Tensor], batch: int = 1024
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per SAE: firing frequency and mean Pearson correlation with the partners' codes.

    Streams ``acts`` in batches: the codes of every SAE for one batch, latent-major
    (``[S, B]``, so partners are gathered as contiguous rows), summed per batch in float32
    (x, x^2, and x * partner's x per other SAE) into float64 totals.
    """
    for s in saes:
        if not hasattr(s, "encode"):
            raise UserError("activations given, but an SAE has no encoder (pass SAE objects)")
    n, n_rows = len(saes), acts_RD.shape[0]
    s1 = [torch.zeros(len(i), dtype=torch.float64) for i in idx]
    s2, fires = [t.clone() for t in s1], [t.clone() for t in s1]
    sxy = [torch.zeros(len(i), n, dtype=torch.float64) for i in idx]
    for start in range(0, n_rows, batch):
        x_BD = acts_RD[start : start + batch]
        codes_SB = [s.encode(x_BD).float().T.contiguous() for s in saes]
        for i, c_SB in enumerate(codes_SB):
            s1[i] += c_SB.sum(1)
            s2[i] += torch.einsum("sb,sb->s", c_SB, c_SB)
            fires[i] += (c_SB > 0).sum(1)
            for j in range(n):
                if j != i:
                    partner_SB = codes_SB[j][idx[i][:, j]]
                    sxy[i][:, j] += torch.einsum("sb,sb->s", c_SB, partner_SB)
    mean = [t / n_rows for t in s1]
    var = [(b / n_rows - m**2).clamp_min(0.0) for b, m in zip(s2, mean, strict=True)]
    corr = []
    for i in range(n):
        cols = [
            _pearson(sxy[i][:, j] / n_rows, mean[i], var[i], mean[j], var[j], idx[i][:, j])
            for j in range(n)
            if j != i
        ]
        corr.append(torch.stack(cols, 1).mean(1).numpy())
    return [(f / n_rows).numpy() for f in fires], corr


def _pearson(
    exy: Tensor, mx: Tensor, vx: Tensor, my: Tensor, vy: Tensor, partner: Tensor
) -> Tensor:
    cov = exy - mx * my[partner]
    den = (vx * vy[partner]).sqrt()
    ok = (vx > 1e-12 * (vx + mx**2)) & (vy[partner] > 1e-12 * (vy + my**2)[partner])
    return torch.where(ok, cov / torch.where(ok, den, 1.0), 0.0).clamp(-1.0, 1.0)


def random_stability(sizes: Sequence[int], d: int, tau: float) -> Float[np.ndarray, " n_saes"]:
    """P(stability = k / (n - 1)), k = 0..n-1, of a latent drawn from all SAEs, if decoders
    were independent uniformly random unit vectors in R^d (analytic, exact)."""
    q = 0.5 if d == 1 else 0.5 * float(betainc((d - 1) / 2, 0.5, max(0.0, 1.0 - tau * tau)))
    hold = [-math.expm1(s * math.log1p(-q)) if q < 1 else 1.0 for s in sizes]
    n, total = len(sizes), float(sum(sizes))
    dist = np.zeros(n)
    for i, s in enumerate(sizes):
        pmf = np.array([1.0])  # Poisson-binomial over the others
        for j, p in enumerate(hold):
            if j != i:
                pmf = np.convolve(pmf, [1.0 - p, p])
        dist += s / total * pmf
    return dist


RANDOM_KIND = "random_unit_analytic"


def trust_summary(table: TrustTable) -> dict[str, MetricValue]:
    """Headline numbers, each beside its random baseline (analytic; module docstring): the
    unit sphere's, and with activations the data subspace's (``baseline_subspace``)."""
    dist = random_stability(table.sizes, table.d_in, table.tau)
    rank = table.data_rank
    sub = None if not rank else random_stability(table.sizes, rank, table.tau)
    n = len(table.names)
    levels = np.arange(n) / (n - 1)
    stab, n_rows = table.stability, len(table.stability)
    unstable = stab < UNSTABLE_BELOW
    share = table.subspace_share[unstable]
    ok = ~np.isnan(share)
    sub_base = (table.subspace_rank[unstable][ok] / table.d_in).mean() if ok.any() else math.nan

    def value(
        name: str, x: float, base: float, kind: str = RANDOM_KIND, n: int = n_rows, **extra: Any
    ) -> MetricValue:
        return metric_value(name, x, base, baseline_kind=kind, n_latents=(n, n_rows), **extra)

    def stat(name: str, x: float, of: Any) -> MetricValue:
        in_data = {} if sub is None else {"baseline_subspace": float(of(sub))}
        return value(name, x, float(of(dist)), **in_data)

    return {
        "mean_stability": stat("mean_stability", stab.mean(), lambda p: p @ levels),
        "stable_in_all": stat("stable_in_all", (stab >= 1.0).mean(), lambda p: p[-1]),
        "stable_in_any": stat("stable_in_any", (stab > 0).mean(), lambda p: 1.0 - p[0]),
        "subspace_share_unstable": value(
            "subspace_share_unstable",
            share[ok].mean() if ok.any() else math.nan,
            sub_base,
            kind="random_unit_exact",
            n=int(ok.sum()),
            **_data_share_baseline(table, unstable, ok),
        ),
    }


def _data_share_baseline(table: TrustTable, unstable: np.ndarray, ok: np.ndarray) -> dict:
    """``baseline_subspace`` of the unstable latents' subspace share, when activations gave one."""
    if table.subspace_baseline_data is None or not ok.any():
        return {}
    return {"baseline_subspace": float(table.subspace_baseline_data[unstable][ok].mean())}
