"""Confidence intervals for means over seed pairs, resampling seeds.

A stability number is a mean over all pairs (i, j) of seeds. Pairs are not independent:
the 10 pairs of 5 seeds share their seeds, and one odd seed moves 4 of them at once, so a
bootstrap over pairs is optimistic. This bootstrap resamples the seeds (Efron & Tibshirani
1993, ch. 6): each draw picks n seeds with replacement, with counts c_s, and its statistic
is the mean over pairs of distinct seeds weighted by how often each pair was drawn,

    sum_{a < b} c_a c_b v_ab / sum_{a < b} c_a c_b,

so a seed drawn twice counts twice and a seed is never paired with itself. Draws that hold
a single distinct seed have no pair and are dropped. With fewer than 3 seeds there is no
meaningful resampling and the interval is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_SEEDS = 3


def seed_bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    seeds_a: Sequence[int] | np.ndarray,
    seeds_b: Sequence[int] | np.ndarray,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of the mean of ``values[p]`` (pair p of seeds ``seeds_a[p]``,
    ``seeds_b[p]``), resampling seeds; (nan, nan) without resamples or with < 3 seeds."""
    values = np.asarray(values, dtype=np.float64)
    labels, inverse = np.unique(np.concatenate([seeds_a, seeds_b]), return_inverse=True)
    n = len(labels)
    if n_boot == 0 or n < MIN_SEEDS or len(values) == 0:
        return float("nan"), float("nan")
    ia, ib = inverse[: len(values)], inverse[len(values) :]
    if np.any(ia == ib):
        raise ValueError("a seed pair pairs a seed with itself")
    sums, counts = np.zeros((n, n)), np.zeros((n, n))
    np.add.at(sums, (ia, ib), values)
    np.add.at(counts, (ia, ib), 1.0)
    sums, counts = sums + sums.T, counts + counts.T
    pair_mean = np.divide(sums, counts, out=np.zeros((n, n)), where=counts > 0)
    present = np.triu(counts > 0, k=1)
    rng = np.random.default_rng(seed)
    draws = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)])
    weights = draws[:, :, None] * draws[:, None, :] * present[None]
    total = weights.sum(axis=(1, 2))
    keep = total > 0
    means = (weights[keep] * pair_mean[None]).sum(axis=(1, 2)) / total[keep]
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
