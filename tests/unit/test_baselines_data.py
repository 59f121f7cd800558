"""Data-aware random baselines: cases whose answer is known, seeding, and stability_pair wiring."""

from __future__ import annotations

import math

import pytest
import torch

from husai.metrics import random_unit_baseline, stability_pair
from husai.metrics.baselines import hardest, metric_value
from husai.metrics.data_baselines import (
    data_baseline,
    data_reference,
    plane_coverage_baselines,
    principal_rank,
    weighted_mean,
)
from husai.model.fourier import FourierPlanes


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUSAI_CACHE_DIR", "off")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal(r: int, d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=_gen(seed), dtype=torch.float64))
    return q.T.float()  # [r, d], orthonormal rows


def _in_subspace(r: int, d: int, rows: int = 4000, seed: int = 0) -> torch.Tensor:
    """Isotropic Gaussian activations inside an exact r-dim subspace of R^d, plus an offset."""
    z = torch.randn(rows, r, generator=_gen(seed + 1))
    offset = 3.0 * torch.randn(d, generator=_gen(seed + 2))
    return z @ _orthonormal(r, d, seed) + offset


def test_principal_rank_on_a_known_spectrum() -> None:
    ev = torch.tensor([0.5, 5.0, 1.0, 3.0, 0.5])  # order must not matter; total 10
    assert principal_rank(ev, 0.5) == 1
    assert principal_rank(ev, 0.9) == 3
    assert principal_rank(ev, 0.95) == 4  # 9.5 / 10 reaches 0.95 exactly
    assert principal_rank(ev, 0.96) == 5
    assert principal_rank(torch.zeros(3), 0.95) == 0


def test_reference_finds_the_exact_subspace() -> None:
    r, d = 6, 40
    acts = _in_subspace(r, d)
    ref = data_reference(acts)
    assert ref.rank == r and ref.d == d
    q = _orthonormal(r, d, 0).double()
    # the basis spans the planted subspace: projecting it on the subspace keeps all its norm
    proj = ref.basis.double() @ q.T
    assert torch.allclose(proj.pow(2).sum(1), torch.ones(r, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(ref.rows.norm(dim=1), torch.ones(ref.rows.shape[0]), atol=1e-5)
    assert ref.rows.mean(0).norm() < 0.05  # centred: the offset is gone


@pytest.mark.parametrize(("metric", "n_a", "n_b"), [("pw_mcc", 15, 20), ("mmcs", 9, 30)])
def test_subspace_baseline_equals_unit_sphere_baseline_in_d_equal_r(
    metric: str, n_a: int, n_b: int
) -> None:
    """In an exact r-dim subspace, random directions are the unit sphere of R^r, draw for draw."""
    r, d = 6, 40
    ref = data_reference(_in_subspace(r, d))
    sub_mean, sub_std = data_baseline(metric, "subspace", n_a, n_b, ref, trials=6, seed=2)
    ball_mean, ball_std = random_unit_baseline(metric, n_a, n_b, r, trials=6, seed=2)
    assert sub_mean == pytest.approx(ball_mean, abs=1e-5)
    assert sub_std == pytest.approx(ball_std, abs=1e-5)
    full, _ = random_unit_baseline(metric, n_a, n_b, d, trials=6, seed=2)
    assert sub_mean > full + 0.1  # and far above the unit sphere of R^d
    # symmetric metrics: (b, a) is the same estimate (counts are sorted before drawing)
    assert data_baseline(metric, "subspace", n_b, n_a, ref, trials=6, seed=2)[0] == sub_mean


def _axes_data(m: int, d: int, offset: float, per_sign: int = 50) -> torch.Tensor:
    """Rows +-u_i (i < m, orthonormal u) in equal numbers, plus a constant offset."""
    u = _orthonormal(m, d, 7)
    rows = torch.cat([torch.cat([u, -u]) for _ in range(per_sign)])
    return rows + offset * _orthonormal(1, d, 8)[0] * (1 if offset else 0)


def test_acts_baseline_single_axis_is_exactly_known() -> None:
    """Centred rows are all +-u: |cos| of any two draws is 1; the signed cosine averages 0."""
    ref = data_reference(_axes_data(1, 12, offset=5.0))
    mean, std = data_baseline("mmcs", "acts", 1, 1, ref, trials=16, seed=0)
    assert mean == pytest.approx(1.0, abs=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    signed, sd = data_baseline("pw_mcc", "acts", 1, 1, ref, trials=400, seed=0)
    assert sd == pytest.approx(1.0, abs=0.01)  # each draw is +1 or -1 ...
    assert abs(signed) < 4 / math.sqrt(400)  # ... with equal odds: mean 0 within 4 sigma


def test_acts_baseline_is_centred_planted_axes() -> None:
    """Rows c + (+-u_i): centred, one draw each matches in |cos| with probability 1/m.

    Uncentred rows would all lie near c (|cos| ~ 1), so this also pins the centring.
    """
    m, trials = 4, 2000
    ref = data_reference(_axes_data(m, 16, offset=10.0))
    mean, std = data_baseline("mmcs", "acts", 1, 1, ref, trials=trials, seed=1)
    sigma = math.sqrt((1 / m) * (1 - 1 / m) / trials)
    assert mean == pytest.approx(1 / m, abs=5 * sigma)
    assert std > 0.3


def test_data_baselines_are_seeded_and_keyed_by_the_data() -> None:
    acts = _in_subspace(5, 24, seed=3)
    ref = data_reference(acts)
    one = data_baseline("pw_mcc", "acts", 10, 12, ref, trials=3, seed=4)
    assert one == data_baseline("pw_mcc", "acts", 10, 12, data_reference(acts.clone()), 3, 4)
    assert one != data_baseline("pw_mcc", "acts", 10, 12, ref, trials=3, seed=5)
    other = data_reference(_in_subspace(5, 24, seed=9))
    assert other.key != ref.key
    assert one != data_baseline("pw_mcc", "acts", 10, 12, other, trials=3, seed=4)
    with pytest.raises(ValueError, match="kind"):
        data_baseline("pw_mcc", "sphere", 3, 3, ref)


def test_no_variance_gives_nan_not_a_crash() -> None:
    ref = data_reference(torch.ones(50, 8))
    assert ref.rank == 0 and ref.rows.shape[0] == 0
    assert all(math.isnan(x) for x in data_baseline("pw_mcc", "subspace", 3, 3, ref))
    assert all(math.isnan(x) for x in data_baseline("pw_mcc", "acts", 3, 3, ref))


def test_hardest_is_the_largest_finite_baseline() -> None:
    assert hardest(0.1, float("nan"), 0.4) == 0.4
    assert math.isnan(hardest(float("nan"), None))
    mv = metric_value("x", 0.5, 0.1, baseline_subspace=0.3, baseline_acts=0.45)
    assert mv.baseline_hardest == 0.45 and mv.excess_hardest == pytest.approx(0.05)
    assert mv.excess == pytest.approx(0.4)  # 'excess' keeps its unit-sphere meaning
    assert mv.to_dict()["baseline_hardest"] == 0.45


def test_stability_pair_carries_data_baselines_with_alive_counts() -> None:
    r, d, n = 5, 32, 24
    acts = _in_subspace(r, d, seed=11)
    ref = data_reference(acts)
    a = torch.randn(n, r, generator=_gen(1)) @ ref.basis  # decoders inside the data subspace
    b = torch.randn(n, r, generator=_gen(2)) @ ref.basis
    alive_a = torch.arange(n) < 20
    alive_b = torch.arange(n) < 17
    out = stability_pair(
        a, b, alive_a=alive_a, alive_b=alive_b, enc_a=a, enc_b=b, trials=3, ranks=[], data=ref
    )
    alive = out["pw_mcc_alive"]
    expect, _ = data_baseline("pw_mcc", "subspace", 20, 17, ref, trials=3, seed=0)
    assert alive.baseline_subspace == pytest.approx(expect)
    assert alive.baseline_hardest >= alive.baseline_subspace > alive.baseline + 0.1
    # random decoders inside the subspace sit at the subspace baseline, not above it
    assert abs(out["pw_mcc"].value - out["pw_mcc"].baseline_subspace) < 0.15
    assert out["pw_mcc"].excess_hardest < out["pw_mcc"].excess - 0.1
    for name in ("pw_mcc_encoder", "shared_fraction"):  # encoder-based: unit sphere only
        assert math.isnan(out[name].baseline_subspace) and math.isnan(out[name].baseline_acts)
    no_data = stability_pair(a, b, trials=3, ranks=[])
    assert math.isnan(no_data["pw_mcc"].baseline_subspace)
    assert no_data["pw_mcc"].baseline_hardest == no_data["pw_mcc"].baseline


def test_weighted_mean_and_coverage_baselines_known_cases() -> None:
    assert weighted_mean([1.0, 0.0, 0.0], [0.9, 0.05, 0.05]) == pytest.approx(0.9)
    assert math.isnan(weighted_mean([1.0], [0.0]))
    # The activations' principal subspace is exactly one plane: random directions inside
    # it lie fully in that plane, and any two of them span it: coverage 1.
    d = 30
    basis = _orthonormal(2, d, 3)
    acts = torch.randn(3000, 2, generator=_gen(4)) @ basis
    ref = data_reference(acts)
    assert ref.rank == 2
    far = _orthonormal(4, d, 5)
    planes = FourierPlanes(torch.stack([basis, far[:2]]), torch.tensor([1, 2]))
    out = plane_coverage_baselines(planes, 8, [0.9, 0.1], ref, trials=4)
    assert out["plane_coverage_mean_baseline_subspace"] == pytest.approx(0.5, abs=0.02)
    assert out["plane_coverage_weighted_baseline_subspace"] == pytest.approx(0.9, abs=0.02)
    assert out["plane_coverage_weighted_baseline"] < 0.2  # unit sphere of R^30
