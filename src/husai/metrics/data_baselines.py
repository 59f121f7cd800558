"""Data-aware random baselines: random dictionaries shaped like the activations.

The unit-sphere baseline (:mod:`husai.metrics.baselines`) asks how similar two random
dictionaries in R^d are. Activations of a small transformer are low-rank (effective rank
7-12 in d = 128 or 512), and trained decoders put nearly all their norm inside the
activations' principal subspace, so two *unrelated* dictionaries fitted to the same data
already agree far more than two random ones in R^d. Two harder baselines, each with the
same numbers of latents (alive latents for the alive-only metrics) as the measured pair:

- ``subspace``: uniform random unit vectors inside the principal subspace holding
  ``share`` (default 95%) of the activations' variance. The subspace is spanned by the
  top-r eigenvectors of the covariance of the *centred* activations (PCA; r is the
  smallest rank whose eigenvalues sum to >= share of the trace). A draw is
  ``random_unit(n, r) @ Q`` with ``Q [r, d]`` orthonormal, an isometry, so every cosine
  equals that of the same draw in R^r: on activations lying in an exact r-dim subspace
  this baseline is the unit-sphere baseline in d = r.
- ``acts``: activation rows drawn at random (without replacement within a set,
  independently for A and B), *centred* (the mean row subtracted) and normalised. An
  SAE reconstructs ``x = b_dec + sum_i z_i W_dec[i]`` and its trained ``b_dec`` absorbs
  the mean, so the latents model deviations from the mean; uncentred rows would all
  share the mean direction (38% of the second moment at the MLP hook) and credit every
  random dictionary with a direction no latent needs. Rows whose centred norm is ~0 are
  left out of the pool.

Both are Monte Carlo over ``trials`` seeded draws (trial ``t`` uses
``Generator().manual_seed(seed * 100003 + t)``, set A then set B) and cached in memory
and on disk under a key holding the activations' content hash, the variance share and
the counts, so a unit's pairs with equal alive counts share one estimate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from husai.metrics.baselines import (
    BaselineCache,
    MetricSpec,
    Sampler,
    check_specs,
    default_trials,
    random_unit,
    sampled_baselines,
)
from husai.metrics.ground_truth import plane_coverage

DATA_KINDS = ("subspace", "acts")
"""The data-aware baseline kinds, as named in tables (``baseline_<kind>``)."""
VARIANCE_SHARE = 0.95
_CACHE = BaselineCache(8192)
_REFS_MAX = 4
_REFS: dict[str, DataReference] = {}


@dataclass(frozen=True, eq=False)
class DataReference:
    """What the data-aware baselines need of one activation set.

    ``basis``: orthonormal rows spanning the principal subspace ``[r, d]``; ``rows``:
    centred, unit-norm activation rows ``[R', d]``; ``key``: content hash of the
    activations and ``share``, naming the cache entries.
    """

    basis: Float[Tensor, "r d"]
    rows: Float[Tensor, "R d"]
    share: float
    key: str

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    @property
    def d(self) -> int:
        return int(self.basis.shape[1])


def principal_rank(eigvals: Tensor, share: float) -> int:
    """Smallest r whose top-r eigenvalues (any order) hold >= ``share`` of their sum."""
    ev = eigvals.double().clamp_min(0.0).sort(descending=True).values
    total = float(ev.sum())
    if total <= 0.0:
        return 0
    cum = ev.cumsum(0) / total
    return int((cum < share - 1e-12).sum()) + 1


def _principal_axes(x32_RD: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centred float64 rows, and the eigenvalues and eigenvectors of their covariance."""
    x_RD = x32_RD.double()
    centred_RD = x_RD - x_RD.mean(dim=0, keepdim=True)
    eigvals, eigvecs = torch.linalg.eigh(centred_RD.T @ centred_RD / max(1, x_RD.shape[0]))
    return centred_RD, eigvals, eigvecs


def data_rank(acts_RD: Float[Tensor, "R d"], share: float = VARIANCE_SHARE) -> int:
    """The rank of :func:`data_reference`'s principal subspace (same computation), without
    building or caching the reference."""
    x32_RD = torch.as_tensor(acts_RD).detach().to("cpu", torch.float32).contiguous()
    return principal_rank(_principal_axes(x32_RD)[1], share)


def data_reference(acts_RD: Float[Tensor, "R d"], share: float = VARIANCE_SHARE) -> DataReference:
    """PCA subspace and centred unit rows of ``acts_RD`` (module docstring).

    Cached by content: the units of a study that share activations build it once.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share: expected a fraction in (0, 1], got {share}")
    x32_RD = torch.as_tensor(acts_RD).detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(x32_RD.numpy().tobytes()).hexdigest()[:32]
    key = f"{digest}:{tuple(x32_RD.shape)}:{share:g}"
    if key not in _REFS:
        if len(_REFS) >= _REFS_MAX:
            _REFS.pop(next(iter(_REFS)))
        _REFS[key] = _build_reference(x32_RD, share, key)
    return _REFS[key]


def _build_reference(x32_RD: Tensor, share: float, key: str) -> DataReference:
    centred_RD, eigvals, eigvecs = _principal_axes(x32_RD)
    order = eigvals.argsort(descending=True)
    r = principal_rank(eigvals, share)
    basis = eigvecs[:, order[:r]].T.contiguous().float()
    norms_R = centred_RD.norm(dim=1)
    keep_R = norms_R > 1e-6 * max(float(norms_R.max()) if norms_R.numel() else 0.0, 1e-30)
    rows = (centred_RD[keep_R] / norms_R[keep_R, None]).float().contiguous()
    return DataReference(basis=basis, rows=rows, share=float(share), key=key)


def subspace_sampler(ref: DataReference) -> Sampler:
    """Uniform unit vectors inside the principal subspace (an isometric image of R^r)."""
    return lambda n, gen: random_unit(n, ref.rank, gen) @ ref.basis


def acts_sampler(ref: DataReference) -> Sampler:
    """Centred unit activation rows, without replacement within a set (with it if n > R)."""
    pool = ref.rows.shape[0]

    def draw(n: int, gen: torch.Generator) -> Tensor:
        if n > pool:
            return ref.rows[torch.randint(pool, (n,), generator=gen)]
        if 4 * n <= pool:  # rejection of repeats: O(n), not O(R) like a permutation
            idx = torch.randint(pool, (2 * n + 16,), generator=gen).tolist()
            first = list(dict.fromkeys(idx))[:n]
            if len(first) == n:
                return ref.rows[torch.tensor(first)]
        return ref.rows[torch.randperm(pool, generator=gen)[:n]]

    return draw


SAMPLERS = {"subspace": subspace_sampler, "acts": acts_sampler}


def data_baseline(
    metric: str,
    kind: str,
    n_a: int,
    n_b: int,
    ref: DataReference,
    trials: int | None = None,
    seed: int = 0,
    **params: Any,
) -> tuple[float, float]:
    """Monte Carlo (mean, std) of ``metric`` on pairs of ``kind`` random dictionaries.

    Every metric here is symmetric in its two sets and both sets come from one sampler,
    so the counts are put in ascending order first: (a, b) and (b, a) share one estimate.
    NaN when the kind is undefined for these activations (no variance, no usable row).
    """
    return data_baseline_many([(metric, params)], kind, n_a, n_b, ref, trials, seed)[0]


def data_baseline_many(
    specs: list[MetricSpec],
    kind: str,
    n_a: int,
    n_b: int,
    ref: DataReference,
    trials: int | None = None,
    seed: int = 0,
) -> list[tuple[float, float]]:
    """:func:`data_baseline` of every spec, the uncached ones from one set of draws."""
    if kind not in SAMPLERS:
        raise ValueError(f"kind: expected one of {sorted(SAMPLERS)}, got {kind!r}")
    check_specs(specs)
    if (ref.rank if kind == "subspace" else ref.rows.shape[0]) == 0:
        return [(float("nan"), float("nan"))] * len(specs)
    trials = default_trials(n_a, n_b) if trials is None else int(trials)
    n_a, n_b = sorted((int(n_a), int(n_b)))
    keys = [
        json.dumps([kind, ref.key, m, n_a, n_b, trials, seed, sorted(p.items())]) for m, p in specs
    ]
    return sampled_baselines(_CACHE, keys, specs, (n_a, n_b), SAMPLERS[kind](ref), trials, seed)


def data_baselines(
    metric: str,
    n_a: int,
    n_b: int,
    ref: DataReference | None,
    trials: int | None = None,
    seed: int = 0,
    **params: Any,
) -> dict[str, float]:
    """``{kind: mean}`` for every data-aware kind (empty without a reference)."""
    return data_baselines_many([(metric, params)], n_a, n_b, ref, trials, seed)[0]


def data_baselines_many(
    specs: list[MetricSpec],
    n_a: int,
    n_b: int,
    ref: DataReference | None,
    trials: int | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """:func:`data_baselines` of every spec, each kind's draws shared by all specs."""
    if ref is None:
        return [{} for _ in specs]
    by_kind = {
        kind: data_baseline_many(specs, kind, n_a, n_b, ref, trials, seed) for kind in DATA_KINDS
    }
    return [{kind: by_kind[kind][i][0] for kind in DATA_KINDS} for i in range(len(specs))]


def weighted_mean(values_P: Any, weights_P: Any) -> float:
    """``sum_p w_p v_p / sum_p w_p`` (NaN when the weights sum to 0 or lengths differ)."""
    v = torch.as_tensor(values_P, dtype=torch.float64).flatten()
    w = torch.as_tensor(weights_P, dtype=torch.float64).flatten().clamp_min(0.0)
    if v.numel() != w.numel() or float(w.sum()) <= 0.0:
        return float("nan")
    return float((w * v).sum() / w.sum())


def plane_coverage_baselines(
    planes: Any,
    n: int,
    weights_P: Any,
    ref: DataReference | None,
    trials: int = 8,
    seed: int = 0,
    min_purity: float = 0.5,
) -> dict[str, float]:
    """Mean plane coverage, plain and ``weights_P``-weighted, of ``n`` random latents.

    ``planes`` are the planes the coverage is measured on (key planes), ``weights_P``
    their variance shares. Keys: ``plane_coverage_weighted_baseline`` (unit sphere; the
    plain unit-sphere one is ``ground_truth_summary``'s ``plane_coverage_baseline``, from
    the same draws) and, with ``ref``, ``plane_coverage_{mean,weighted}_baseline_subspace``
    (random directions in the activations' principal subspace, where the planes live).
    """
    d = int(torch.as_tensor(planes.basis).shape[-1])
    samplers = {"": lambda k, gen: random_unit(k, d, gen)}
    if ref is not None and ref.rank > 0:
        samplers["_subspace"] = subspace_sampler(ref)
    out: dict[str, float] = {}
    for suffix, sampler in samplers.items():
        draws = [
            plane_coverage(
                sampler(n, torch.Generator().manual_seed(seed * 100003 + t)), planes, min_purity
            )
            for t in range(trials)
        ]
        if suffix:
            out[f"plane_coverage_mean_baseline{suffix}"] = float(
                sum(float(c.mean()) for c in draws) / len(draws)
            )
        out[f"plane_coverage_weighted_baseline{suffix}"] = float(
            sum(weighted_mean(c, weights_P) for c in draws) / len(draws)
        )
    return out
