"""The seed bootstrap of means over seed pairs: known answers and why pairs are not enough."""

from itertools import combinations

import numpy as np
import pytest

from husai.metrics.bootstrap import seed_bootstrap_ci


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = zip(*combinations(range(n), 2), strict=True)
    return np.array(a), np.array(b)


def _pair_bootstrap(vals: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, len(vals), size=(n_boot, len(vals)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def test_constant_pairs_give_a_point_interval_and_it_is_deterministic() -> None:
    a, b = _pairs(5)
    assert seed_bootstrap_ci(np.full(10, 0.8), a, b, 500, seed=0) == pytest.approx((0.8, 0.8))
    vals = np.random.default_rng(1).uniform(0.5, 0.9, 10)
    assert seed_bootstrap_ci(vals, a, b, 500, 3) == seed_bootstrap_ci(vals, a, b, 500, 3)


def test_interval_brackets_the_mean_and_seeds_are_labels_not_positions() -> None:
    a, b = _pairs(6)
    vals = np.random.default_rng(2).normal(0.6, 0.05, len(a))
    lo, hi = seed_bootstrap_ci(vals, a, b, 2000, seed=0)
    assert lo < vals.mean() < hi
    assert seed_bootstrap_ci(vals, b, a, 2000, seed=0) == (lo, hi)  # pairs are unordered
    assert seed_bootstrap_ci(vals, a + 100, b + 100, 2000, seed=0) == (lo, hi)


def test_one_odd_seed_widens_the_interval_beyond_a_pair_bootstrap() -> None:
    """Seed 0 is bad: its 4 pairs are low. Pairs sharing it are not independent draws, so a
    bootstrap over pairs understates the spread; the seed bootstrap does not."""
    a, b = _pairs(5)
    vals = np.where((a == 0) | (b == 0), 0.3, 0.9) + np.random.default_rng(0).normal(0, 0.01, 10)
    lo_s, hi_s = seed_bootstrap_ci(vals, a, b, 4000, seed=0)
    lo_p, hi_p = _pair_bootstrap(vals, 4000, seed=0)
    assert hi_s - lo_s > 1.2 * (hi_p - lo_p)
    assert hi_s == pytest.approx(0.9, abs=0.02)  # draws without seed 0 reach the clean value


def test_too_few_seeds_or_no_resamples_give_nan() -> None:
    assert np.isnan(seed_bootstrap_ci([0.5], [0], [1], 1000, 0)).all()
    a, b = _pairs(4)
    assert np.isnan(seed_bootstrap_ci(np.ones(6), a, b, 0, 0)).all()
    with pytest.raises(ValueError, match="itself"):
        seed_bootstrap_ci([0.5, 0.5, 0.5], [0, 1, 2], [1, 2, 2], 10, 0)
