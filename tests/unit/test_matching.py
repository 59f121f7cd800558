"""Exact matching: the sparse certified solver equals scipy's dense optimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from husai.metrics.matching import cosine_matrix, linear_assignment, match


def _dense_total(score: np.ndarray) -> float:
    r, c = linear_sum_assignment(score, maximize=True)
    return float(score[r, c].sum())


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    n_a=st.integers(3, 60),
    n_b=st.integers(3, 60),
    seed=st.integers(0, 10_000),
    ties=st.booleans(),
)
def test_sparse_equals_dense_optimum(n_a: int, n_b: int, seed: int, ties: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(n_a, n_b, generator=gen, dtype=torch.float64)
    if ties:  # many equal scores stress the certificate
        score = (score * 4).round() / 4
    rows, cols = linear_assignment(score, method="sparse", candidates=2)
    assert len(set(rows.tolist())) == len(rows) == min(n_a, n_b)
    assert len(set(cols.tolist())) == len(cols)
    got = float(score[rows, cols].sum())
    assert got == pytest.approx(_dense_total(score.numpy()), abs=1e-9)


def test_sparse_certifies_random_cosines_against_scipy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="husai.metrics.matching")
    gen = torch.Generator().manual_seed(1)
    sim = cosine_matrix(torch.randn(700, 32, generator=gen), torch.randn(650, 32, generator=gen))
    rows, cols = linear_assignment(sim, method="sparse", candidates=3)
    want = _dense_total(sim.double().numpy()) / 650
    assert float(sim[rows, cols].double().mean()) == pytest.approx(want, abs=1e-9)
    assert "violating" in caplog.text  # the certificate ran (and added edges)
    assert "falling back" not in caplog.text  # ... and certified without the dense solver


def test_permuted_copy_matches_itself() -> None:
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(50, 16, generator=gen)
    perm = torch.randperm(50, generator=gen)
    m = match(a, a[perm])
    assert m.mean == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(perm.numpy()[m.cols], m.rows)


def test_zero_rows_have_zero_cosine_not_nan() -> None:
    a = torch.zeros(4, 8)
    a[0, 0] = 1.0
    sim = cosine_matrix(a, a)
    assert torch.isfinite(sim).all()
    assert sim[0, 0] == pytest.approx(1.0) and float(sim[1:].abs().sum()) == 0.0


def test_empty_and_bad_shapes() -> None:
    assert match(torch.zeros(0, 4), torch.randn(3, 4)).mean == 0.0
    with pytest.raises(ValueError):
        cosine_matrix(torch.randn(3, 4), torch.randn(3, 5))


def test_hub_columns_need_column_candidates() -> None:
    """Every row prefers the same columns: rows' top-c alone admit no full matching."""
    gen = torch.Generator().manual_seed(3)
    score = torch.linspace(1.0, 0.0, 40)[None, :] + 0.01 * torch.rand(30, 40, generator=gen)
    rows, cols = linear_assignment(score, method="sparse", candidates=2)
    assert float(score[rows, cols].double().sum()) == pytest.approx(
        _dense_total(score.double().numpy()), abs=1e-6
    )
