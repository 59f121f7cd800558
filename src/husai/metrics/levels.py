"""Stability at every level (direction, plane, frequency, allocation, subspace) and where the gap goes.

Seeds can agree on a plane or a frequency while their latents point differently inside it.
This module measures agreement between the SAEs of ``n`` seeds of one configuration at
each level, each beside a random baseline, and splits Song et al.'s gap ``1 - PW-MCC`` into
named parts. Inputs: decoders ``[S, d]`` (rows = latents), alive masks ``[S]`` and the
ground-truth Fourier planes (Nanda et al. 2023). Every score is a mean over seed pairs.

**Planes used.** The fitted key planes overlap: at the default model the ``a`` and ``b``
planes of a frequency coincide and the weak ``a-b`` planes lie partly inside others. Shares
of overlapping planes would count one direction twice, so :func:`profile_planes` makes them
orthogonal first: key planes holding >= ``min_share`` of their frequency's key R^2 (the rule
of ``FourierPlanes.frequency_basis``), strongest first, each keeping only its directions that
are at least ``tol`` (singular value) outside the stronger planes (Gram-Schmidt by plane).
A plane left with no new direction is merged into the plane it overlaps most ("a=b"). With
``Q`` the stacked orthonormal plane rows, latent ``u`` (unit) has coordinates ``c_p = B_p u``,
plane shares ``x_p = |c_p|^2`` and an outside part ``u_out = u - Q^T Q u``, ``x_out = |u_out|^2``;
``sum_p x_p + x_out = 1``.

**Levels** (alive latents, except ``direction_all``):

- ``direction_all``: PW-MCC (Song et al. 2025, arXiv 2505.20254): signed cosine, Hungarian
  matching over all latents, mean over matched pairs (:func:`husai.metrics.similarity.pw_mcc`).
- ``direction_alive``: the same over alive latents (``pw_mcc_alive`` of the run tables).
- ``plane``: each latent's profile ``(x_1..x_P, x_out)``; latents matched (Hungarian) on the
  Bhattacharyya coefficient of profiles, ``BC = sum_p sqrt(x_p y_p) + sqrt(x_out y_out)``
  (Bhattacharyya 1943): 1 iff the profiles are equal, blind to any rotation inside a plane.
- ``frequency``: the same with the shares of each frequency's planes summed.
- ``allocation``: each alive latent counted on its dominant bin (a plane, or "outside" when
  ``x_out`` is largest); agreement of two seeds = ``sum_bins min(c_a, c_b) / min(n_a, n_b)``
  (histogram intersection, Swain & Ballard 1991): the share of matched pairs that could lie
  on one plane given the counts alone. The counts' spread across seeds is in the report.
- ``subspace``: mean cos^2 of the principal angles (Bjorck & Golub 1973) between the top-r
  principal subspaces of the two seeds' unit alive decoder rows
  (:func:`husai.metrics.subspace.subspace_overlap`), r = the larger of the seeds' ranks
  holding 95% of the rows' squared singular values. Small tails of noise directions do
  not count, unlike the plain span (which two random dictionaries of >= d rows share).

**Decomposition.** A chain of scores ``c0, c1 <= c2 <= ... <= c6 <= 1``, each from the last by
removing one source of disagreement; the gap ``1 - c0`` is the sum of the steps, exactly
(``c_p``, ``d_p``: the coordinates of latents ``u``, ``v`` in plane p):

====================  ===========================================  =====================
chain score           definition                                   step to it = term
====================  ===========================================  =====================
c0 direction_all      PW-MCC, all latents
c1 direction_alive    PW-MCC, alive latents                        ``dead``
c2 rotation_free      Hungarian on ``sum_p |c_p||d_p| + u_out.v_out``  ``rotation``
c3 plane              Hungarian on BC of plane profiles            ``outside_planes``
c4 plane_free         best partner on BC of plane profiles         ``allocation``
c5 frequency_free     best partner on BC of frequency profiles     ``mixing_planes``
c6 in_planes_free     best partner on BC of ``(sum_p x_p, x_out)``   ``mixing_frequencies``
1                                                                  ``remainder``
====================  ===========================================  =====================

``rotation_free`` is the cosine with each plane's two components put parallel (the in-plane
angle ignored, ``u.v = sum_p c_p.d_p + u_out.v_out``), so per pair ``cos <= rotation_free <= BC`` (Cauchy-Schwarz; the planes are
orthogonal), and pooling bins never lowers BC (Cauchy-Schwarz again). "Best partner" scores
each latent by its best match in the other seed, many latents sharing one partner (as MMCS
relaxes PW-MCC), from the seed with fewer alive latents (both sides averaged when equal), so
it is >= the Hungarian mean over the same ``min(n_a, n_b)`` latents. Hence every term but
``dead`` is >= 0 (to rounding), and ``dead`` is < 0 only if dead latents match better than
alive ones. What each term can and cannot tell:

- ``dead``: dead latents' decoders, and the alive-count difference (surplus alive latents of
  one seed meet the other's dead ones in ``c0`` and are left unmatched in ``c1``).
- ``rotation``: latents on the same planes at different angles. It cannot tell a uniform
  tiling from latents bunched at one angle (both are "in the plane"). A latent spread over
  many planes has an angle in each, all freed at once, so for such latents (random ones)
  this term also takes up disagreement of direction within the planes' span.
- ``outside_planes``: latents that agree on how much norm lies outside the key planes but
  point differently there (noise directions, or planes that are not key).
- ``allocation``: different numbers of latents on profiles both seeds use. A plane one seed
  covers and the other does not has no partner there, so it counts as mixing at the next
  level (or remainder), not as allocation; the ``allocation`` level counts it.
- ``mixing_planes``: latents whose norm is split differently among the planes of one
  frequency (including a frequency's planes used by one seed and not the other).
- ``mixing_frequencies``: the same across frequencies.
- ``remainder``: latents with no partner of a similar in-plane vs outside split.

Each term depends on the order of the chain (removing allocation before pooling puts
reallocation between planes of one frequency under ``allocation``, not ``mixing_planes``).

**Baselines.** Every level, chain score and term is also computed on random dictionaries
with the same widths and alive counts (the first ``n_alive`` rows of each draw alive): unit
vectors in the activations' principal subspace (``baseline_subspace``,
:func:`husai.metrics.data_baselines.subspace_sampler`) and/or on the sphere of R^d
(``baseline``). Monte Carlo over ``trials`` draws; trial ``t`` seeds
``Generator().manual_seed(seed * 100003 + t)`` and draws the seeds' dictionaries in order.
CIs resample seeds (:mod:`husai.metrics.bootstrap`). Random directions spread their norm
evenly over the planes, so their profiles are alike and they score high at the plane and
frequency levels (0.90-0.94 at the default study's hooks); a dictionary of pure latents that
disagree on allocation can score below them there. The baseline answers "more than random
directions in the data's subspace?", not "is the plane level high?".

Shape suffixes as in docs/ARCHITECTURE.md, plus: A, B the latents of the two seeds of a pair
(as in :mod:`husai.metrics.matching`), V the orthonormal plane rows (2 per plane), F
frequencies, and P1 / F1 the P planes or F frequencies plus the "outside" bin.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from husai.metrics.baselines import MetricValue, Sampler, metric_value, sphere_sampler
from husai.metrics.bootstrap import seed_bootstrap_ci
from husai.metrics.data_baselines import (
    VARIANCE_SHARE,
    DataReference,
    principal_rank,
    subspace_sampler,
)
from husai.metrics.inputs import as_decoder, as_mask
from husai.metrics.matching import match_scores, unit_rows
from husai.metrics.similarity import pw_mcc
from husai.metrics.subspace import subspace_overlap
from husai.model.fourier import FourierPlanes

MIN_SHARE = 0.01
"""Key planes with less than this share of their frequency's key R^2 are left out."""
NEW_DIRECTION = 0.5
"""A plane direction is kept when its part outside the stronger planes has at least this norm."""
LEVELS = ("direction_all", "direction_alive", "plane", "frequency", "allocation", "subspace")
CHAIN = (
    "direction_all",
    "direction_alive",
    "rotation_free",
    "plane",
    "plane_free",
    "frequency_free",
    "in_planes_free",
)
TERMS = (
    "dead",
    "rotation",
    "outside_planes",
    "allocation",
    "mixing_planes",
    "mixing_frequencies",
    "remainder",
)
BASELINE_KINDS = ("random_unit", "subspace")


def profile_planes(
    planes: FourierPlanes, min_share: float = MIN_SHARE, tol: float = NEW_DIRECTION
) -> FourierPlanes:
    """The key planes made mutually orthogonal, strongest first (module docstring).

    A plane keeping one direction gets a zero second row. ``variable`` names merged planes
    ``"a=b"`` (or ``"a=b@k"`` when merged into a plane of frequency k).
    """
    key = planes.key_only()
    order = list(range(key.basis.shape[0]))
    if key.r2 is not None:
        r2 = key.r2.double()
        tot = {int(f): float(r2[key.freq == f].sum()) for f in key.freq.tolist()}
        order = [p for p in order if float(r2[p]) >= min_share * tot[int(key.freq[p])]]
        order.sort(key=lambda p: -float(r2[p]))
    d = key.basis.shape[-1]
    span_VD = torch.zeros(0, d, dtype=torch.float64)
    rows, freq, names, owner = [], [], [], []
    for p in order:
        b_2D = key.basis[p].double()
        _, s, vh = torch.linalg.svd(b_2D - (b_2D @ span_VD.T) @ span_VD, full_matrices=False)
        new_VD = vh[s >= tol]
        if new_VD.shape[0] == 0:
            if rows:
                j = owner[int((b_2D @ span_VD.T).pow(2).sum(0).argmax())]
                same = int(key.freq[p]) == freq[j]
                names[j] += f"={key.variable[p]}" + ("" if same else f"@{int(key.freq[p])}")
            continue
        rows.append(torch.cat([new_VD, torch.zeros(2 - new_VD.shape[0], d, dtype=torch.float64)]))
        freq.append(int(key.freq[p]))
        names.append(key.variable[p])
        owner += [len(rows) - 1] * new_VD.shape[0]
        span_VD = torch.cat([span_VD, new_VD])
    basis = torch.stack(rows) if rows else torch.zeros(0, 2, d, dtype=torch.float64)
    return FourierPlanes(basis, torch.tensor(freq, dtype=torch.long), names)


def plane_labels(planes: FourierPlanes) -> list[str]:
    """``k=<freq> (<variable>)`` per plane, then ``outside`` (the allocation bins)."""
    return [
        f"k={int(f)}" + (f" ({v})" if v else "")
        for f, v in zip(planes.freq.tolist(), planes.variable, strict=True)
    ] + ["outside"]


@dataclass(frozen=True)
class _Seed:
    """One seed's latents as the levels see them (alive rows unless said otherwise)."""

    dec_SD: Tensor  # every latent (direction_all)
    alive_SD: Tensor  # alive rows as given (direction_alive)
    unit_SD: Tensor  # alive unit rows, float64
    coords_SV: Tensor  # coordinates on the stacked orthonormal plane rows (V = 2P)
    profile_SP1: Tensor  # plane shares, then the outside share


def _seed(dec: Any, alive: Any, planes: FourierPlanes) -> _Seed:
    dec_SD = as_decoder(dec)
    alive_S = as_mask(alive, dec_SD.shape[0], "alive")
    unit_SD = unit_rows(dec_SD[alive_S], torch.float64)
    span_VD = planes.basis.double().reshape(-1, dec_SD.shape[1])
    coords_SV = unit_SD @ span_VD.T
    shares_SP = coords_SV.pow(2).reshape(len(unit_SD), planes.basis.shape[0], 2).sum(-1)
    outside_S = (unit_SD - coords_SV @ span_VD).pow(2).sum(1)
    profile_SP1 = torch.cat([shares_SP, outside_S[:, None]], 1).clamp_min(0.0)
    return _Seed(dec_SD, dec_SD[alive_S], unit_SD, coords_SV, profile_SP1)


def best_partner(score_AB: Tensor) -> float:
    """Mean best-partner score from the seed with fewer latents (both sides when equal)."""
    n_a, n_b = score_AB.shape
    if n_a == 0 or n_b == 0:
        return 0.0
    rows = float(score_AB.max(dim=1).values.mean())
    cols = float(score_AB.max(dim=0).values.mean())
    return rows if n_a < n_b else cols if n_b < n_a else 0.5 * (rows + cols)


def _bc(x: Tensor, y: Tensor) -> Tensor:
    """Bhattacharyya coefficient of every pair of profiles: rows of ``x`` by rows of ``y``."""
    return x.sqrt() @ y.sqrt().T


def _subspace(a_AD: Tensor, b_BD: Tensor) -> float:
    """``subspace_overlap`` at r = the larger 95%-energy rank of the two unit row sets."""
    ranks = [principal_rank(torch.linalg.svdvals(x).pow(2), VARIANCE_SHARE) for x in (a_AD, b_BD)]
    return subspace_overlap(a_AD, b_BD, r=max(ranks))


def _pair(a: _Seed, b: _Seed, pool_P1F1: Tensor) -> dict[str, float]:
    """Every level and chain score of one seed pair (module docstring)."""
    out = {"direction_all": pw_mcc(a.dec_SD, b.dec_SD)}
    if not len(a.unit_SD) or not len(b.unit_SD):  # nothing alive to match: every level is 0
        return out | {k: 0.0 for k in dict.fromkeys(LEVELS + CHAIN) if k != "direction_all"}
    out["direction_alive"] = pw_mcc(a.alive_SD, b.alive_SD)
    amp_AP, amp_BP = a.profile_SP1[:, :-1].sqrt(), b.profile_SP1[:, :-1].sqrt()
    outside_AB = a.unit_SD @ b.unit_SD.T - a.coords_SV @ b.coords_SV.T
    out["rotation_free"] = match_scores(amp_AP @ amp_BP.T + outside_AB).mean
    plane_AB = _bc(a.profile_SP1, b.profile_SP1)
    out["plane"] = match_scores(plane_AB).mean
    out["plane_free"] = best_partner(plane_AB)
    freq_AB = _bc(a.profile_SP1 @ pool_P1F1, b.profile_SP1 @ pool_P1F1)
    out["frequency"] = match_scores(freq_AB).mean
    out["frequency_free"] = best_partner(freq_AB)
    inside_P12 = torch.zeros(pool_P1F1.shape[0], 2, dtype=torch.float64)
    inside_P12[:-1, 0], inside_P12[-1, 1] = 1.0, 1.0
    in_AB = _bc(a.profile_SP1 @ inside_P12, b.profile_SP1 @ inside_P12)
    out["in_planes_free"] = best_partner(in_AB)
    c_a, c_b = allocation_counts(a.profile_SP1), allocation_counts(b.profile_SP1)
    out["allocation"] = float(np.minimum(c_a, c_b).sum() / min(len(a.unit_SD), len(b.unit_SD)))
    out["subspace"] = _subspace(a.unit_SD, b.unit_SD)
    return out


def allocation_counts(profile_SP1: Float[Tensor, "S P1"]) -> np.ndarray:
    """[P1] alive latents per dominant bin (each plane, then outside)."""
    n_bins = profile_SP1.shape[1]
    return np.bincount(profile_SP1.argmax(dim=1).numpy(), minlength=n_bins)


def decompose(chain: dict[str, float]) -> dict[str, float]:
    """The terms of ``1 - direction_all``: successive steps of the chain (they sum to it)."""
    c = [float(chain[k]) for k in CHAIN] + [1.0]
    return {term: c[i + 1] - c[i] for i, term in enumerate(TERMS)}


def _pool(planes: FourierPlanes) -> tuple[list[int], Tensor]:
    """Frequencies and the [P + 1, F + 1] 0/1 matrix summing plane shares per frequency."""
    freqs = sorted(set(planes.freq.tolist()))
    pool_P1F1 = torch.zeros(len(planes.freq) + 1, len(freqs) + 1, dtype=torch.float64)
    for p, f in enumerate(planes.freq.tolist()):
        pool_P1F1[p, freqs.index(f)] = 1.0
    pool_P1F1[-1, -1] = 1.0
    return freqs, pool_P1F1


def pair_levels(dec_a: Any, dec_b: Any, alive_a: Any, alive_b: Any, planes: FourierPlanes) -> dict:
    """Levels, chain scores, ``gap`` and ``gap_<term>`` of one seed pair (fitted ``planes``)."""
    ortho = profile_planes(planes)
    scores = _pair(_seed(dec_a, alive_a, ortho), _seed(dec_b, alive_b, ortho), _pool(ortho)[1])
    return _with_terms(scores)


@dataclass(frozen=True)
class LevelReport:
    """Levels, chain scores and terms of one configuration, each a MetricValue.

    ``levels`` holds LEVELS and CHAIN; ``terms`` holds TERMS (MetricValues named
    ``gap_<term>``) and ``gap`` (= 1 - PW-MCC);
    ``counts`` [n_seeds, P + 1] are alive latents per dominant plane (last column: outside),
    named by ``labels``; ``planes`` are the orthogonal planes used.
    """

    levels: dict[str, MetricValue]
    terms: dict[str, MetricValue]
    counts: np.ndarray
    labels: list[str]
    planes: FourierPlanes

    def allocation_spread(self) -> dict[str, list[float]]:
        """Per bin: mean and sample std of the counts across seeds, and std / mean."""
        mean = self.counts.mean(axis=0)
        std = self.counts.std(axis=0, ddof=1) if len(self.counts) > 1 else 0 * mean
        cv = np.divide(std, mean, out=np.zeros_like(mean), where=mean > 0)
        return {"mean": mean.tolist(), "std": std.tolist(), "cv": cv.tolist()}

    def row(self) -> dict[str, float]:
        """Flat columns: each level and ``gap_<term>``, with ``_baseline``, ``_baseline_subspace``,
        ``_ci_lo`` and ``_ci_hi``."""
        out: dict[str, float] = {}
        for mv in [*self.levels.values(), *self.terms.values()]:
            name = mv.name
            ci = mv.ci if mv.ci is not None else (float("nan"), float("nan"))
            out |= {name: mv.value, f"{name}_baseline": mv.baseline}
            out |= {f"{name}_baseline_subspace": mv.baseline_subspace}
            out |= {f"{name}_ci_lo": ci[0], f"{name}_ci_hi": ci[1]}
        return out


def level_set(
    decs: list[Any],
    alive: list[Any],
    planes: FourierPlanes,
    *,
    data: DataReference | None = None,
    kinds: tuple[str, ...] | None = None,
    trials: int = 4,
    seed: int = 0,
    n_boot: int = 1000,
) -> LevelReport:
    """Every level and term over all seed pairs of one configuration, with baselines and CIs.

    ``decs``: each seed's decoder ``[S, d]`` (tensor, SAE or SAE dir); ``alive``: its alive
    mask ``[S]``; ``planes``: the fitted planes (key planes are used). ``kinds``: baselines
    to draw, of ``random_unit`` and ``subspace`` (needs ``data``); default ``subspace`` when
    ``data`` is given, else ``random_unit``.
    """
    if len(decs) < 2 or len(decs) != len(alive):
        raise ValueError(
            f"level_set: need >= 2 seeds with one mask each, got {len(decs)}, {len(alive)}"
        )
    kinds = kinds or (("subspace",) if data is not None else ("random_unit",))
    if set(kinds) - set(BASELINE_KINDS) or ("subspace" in kinds and data is None):
        raise ValueError(f"kinds: expected {BASELINE_KINDS} ('subspace' needs data), got {kinds}")
    ortho = profile_planes(planes)
    if ortho.basis.shape[0] == 0:
        raise ValueError("level_set: the planes hold no key plane")
    _, pool_P1F1 = _pool(ortho)
    seeds = [_seed(dec, mask, ortho) for dec, mask in zip(decs, alive, strict=True)]
    pairs = list(combinations(range(len(seeds)), 2))
    per_pair = [_with_terms(_pair(seeds[i], seeds[j], pool_P1F1)) for i, j in pairs]
    shape = [(s.dec_SD.shape[0], len(s.unit_SD)) for s in seeds]
    d = seeds[0].dec_SD.shape[1]
    base = {
        kind: _random(_sampler(kind, d, data), shape, ortho, pool_P1F1, pairs, trials, seed)
        for kind in kinds
    }
    values = {
        name: _metric(name, [p[name] for p in per_pair], pairs, base, shape, n_boot, seed)
        for name in per_pair[0]
    }
    counts = np.stack([allocation_counts(s.profile_SP1) for s in seeds])
    return LevelReport(
        levels={k: values[k] for k in dict.fromkeys(LEVELS + CHAIN)},
        terms={k: values[f"gap_{k}" if k in TERMS else k] for k in (*TERMS, "gap")},
        counts=counts,
        labels=plane_labels(ortho),
        planes=ortho,
    )


def _with_terms(scores: dict[str, float]) -> dict[str, float]:
    terms = {f"gap_{k}": v for k, v in decompose(scores).items()}
    return scores | terms | {"gap": 1.0 - scores["direction_all"]}


def _sampler(kind: str, d: int, data: DataReference | None) -> Sampler:
    return subspace_sampler(data) if kind == "subspace" else sphere_sampler(d)


def _random(
    sampler: Sampler,
    shape: list[tuple[int, int]],
    ortho: FourierPlanes,
    pool_P1F1: Tensor,
    pairs: list[tuple[int, int]],
    trials: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """(mean, std) over trials of every pair-mean score on random dictionaries of ``shape``."""
    draws: list[dict[str, float]] = []
    for t in range(trials):
        gen = torch.Generator().manual_seed(seed * 100003 + t)
        seeds = [_seed(sampler(n, gen), torch.arange(n) < n_alive, ortho) for n, n_alive in shape]
        per_pair = [_with_terms(_pair(seeds[i], seeds[j], pool_P1F1)) for i, j in pairs]
        draws.append({k: float(np.mean([p[k] for p in per_pair])) for k in per_pair[0]})
    return {
        k: (float(np.mean([x[k] for x in draws])), float(np.std([x[k] for x in draws], ddof=1)))
        if trials > 1
        else (draws[0][k], 0.0)
        for k in draws[0]
    }


def _metric(
    name: str,
    vals: list[float],
    pairs: list[tuple[int, int]],
    base: dict[str, dict[str, tuple[float, float]]],
    shape: list[tuple[int, int]],
    n_boot: int,
    seed: int,
) -> MetricValue:
    lo, hi = seed_bootstrap_ci(vals, [a for a, _ in pairs], [b for _, b in pairs], n_boot, seed)
    unit, sub = base.get("random_unit", {}).get(name), base.get("subspace", {}).get(name)
    all_latents = name in ("direction_all", "gap", "gap_dead")
    n = (
        min(s if all_latents else a for s, a in shape),
        max(s if all_latents else a for s, a in shape),
    )
    return metric_value(
        name,
        float(np.mean(vals)),
        None if unit is None else unit[0],
        baseline_std=None if unit is None else unit[1],
        n_latents=n,
        dead_included=all_latents,
        ci=None if np.isnan(lo) else (lo, hi),
        note="mean over seed pairs; n_latents: fewest and most latents of a seed",
        extra={} if sub is None else {"baseline_subspace_std": sub[1]},
        baseline_subspace=None if sub is None else sub[0],
    )
