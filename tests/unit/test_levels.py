"""Stability levels and the decomposition of 1 - PW-MCC, on planted dictionaries with known answers.

Planes are 2-D subspaces of R^24 taken from one random orthonormal basis; a planted
dictionary tiles each plane's circle with latents at known angles. Seeds differ by exactly
one thing (an in-plane rotation, a reallocation, dead latents, mixing, outside directions),
and the decomposition must put the whole gap on that one term.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from husai.metrics.data_baselines import data_reference, subspace_sampler
from husai.metrics.levels import (
    CHAIN,
    LEVELS,
    TERMS,
    best_partner,
    level_set,
    pair_levels,
    profile_planes,
)
from husai.metrics.similarity import pw_mcc
from husai.metrics.stability import stability_pair
from husai.model.fourier import FourierPlanes

D = 24
FREQS = [1, 1, 2, 3]  # planes 0 and 1 share a frequency
TOL = 1e-6


def _basis(seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed)))
    return q.T.double()  # orthonormal rows


Q = _basis()
PLANES = FourierPlanes(Q[: 2 * len(FREQS)].reshape(len(FREQS), 2, D).float(), torch.tensor(FREQS))
OUTSIDE = Q[2 * len(FREQS) :]  # directions outside every plane


def _in_plane(p: int, angle: float) -> torch.Tensor:
    b = PLANES.basis[p].double()
    return math.cos(angle) * b[0] + math.sin(angle) * b[1]


def _tiling(counts: list[int], phases: list[float] | None = None) -> torch.Tensor:
    """``counts[p]`` latents evenly around plane p's circle, starting at ``phases[p]``."""
    phases = phases or [0.0] * len(counts)
    rows = [
        _in_plane(p, phases[p] + 2 * math.pi * i / m)
        for p, m in enumerate(counts)
        for i in range(m)
    ]
    return torch.stack(rows)


def _all(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


def _only(out: dict, term: str) -> None:
    """The whole gap sits on ``term``; every other term is zero."""
    assert out[f"gap_{term}"] == pytest.approx(out["gap"], abs=TOL)
    for t in TERMS:
        if t != term:
            assert abs(out[f"gap_{t}"]) < TOL, (t, out)


def test_rotation_only_is_rotation():
    phases = [0.3, 0.5, 0.2, 0.1]  # below 45 degrees: each latent keeps its partner
    a, b = _tiling([4, 4, 4, 4]), _tiling([4, 4, 4, 4], phases)
    out = pair_levels(a, b, _all(16), _all(16), PLANES)
    assert out["direction_all"] == pytest.approx(np.mean(np.cos(phases)), abs=TOL)
    assert out["direction_all"] < 0.99
    for name in ("plane", "frequency", "allocation", "rotation_free", "plane_free"):
        assert out[name] == pytest.approx(1.0, abs=TOL)
    _only(out, "rotation")


def test_reallocation_only_is_allocation():
    third, fifth = 2 * math.pi / 3, 2 * math.pi / 5
    shared = _tiling([0, 0, 4, 4])
    a = torch.cat([_tiling([3, 5, 0, 0]), shared])  # plane 0: 3 latents, plane 1: 5
    extra = torch.stack([_in_plane(0, third / 2), _in_plane(0, 3 * third / 2)])
    b_plane1 = torch.stack([_in_plane(1, fifth * i) for i in range(3)])  # 3 of a's 5
    b = torch.cat([_tiling([3, 0, 0, 0]), extra, b_plane1, shared])  # plane 0: 5, plane 1: 3
    out = pair_levels(a, b, _all(16), _all(16), PLANES)
    assert out["gap"] == pytest.approx(2 / 16, abs=TOL)  # two latents lose their partner
    assert out["allocation"] == pytest.approx(14 / 16, abs=TOL)  # min(3,5)+min(5,3)+4+4
    assert out["plane"] == pytest.approx(14 / 16, abs=TOL)
    assert out["frequency"] == pytest.approx(1.0, abs=TOL)  # planes 0, 1: same frequency
    _only(out, "allocation")


def test_reallocation_counts_and_spread():
    a = torch.cat([_tiling([3, 5, 4, 4])])
    b = torch.cat([_tiling([5, 3, 4, 4])])
    c = torch.cat([_tiling([4, 4, 4, 4])])
    rep = level_set([a, b, c], [_all(16)] * 3, PLANES, trials=1, n_boot=50)
    assert rep.counts.tolist() == [[3, 5, 4, 4, 0], [5, 3, 4, 4, 0], [4, 4, 4, 4, 0]]
    assert rep.labels == ["k=1", "k=1", "k=2", "k=3", "outside"]
    spread = rep.allocation_spread()
    assert spread["std"][0] == pytest.approx(1.0) and spread["std"][2] == 0.0
    assert rep.terms["allocation"].value > 0.05
    assert abs(rep.terms["mixing_planes"].value) < TOL


def test_dead_latents_only_is_dead():
    gen = torch.Generator().manual_seed(1)
    alive = torch.arange(20) < 16
    a = torch.cat([_tiling([4, 4, 4, 4]), torch.randn(4, D, generator=gen).double()])
    b = torch.cat([_tiling([4, 4, 4, 4]), torch.randn(4, D, generator=gen).double()])
    out = pair_levels(a, b, alive, alive, PLANES)
    assert out["gap"] > 0.05
    assert out["direction_alive"] == pytest.approx(1.0, abs=TOL)
    _only(out, "dead")


@pytest.mark.parametrize(
    ("p", "q", "term"), [(0, 1, "mixing_planes"), (2, 3, "mixing_frequencies")]
)
def test_mixing(p, q, term):
    """Seed A: pure latents in planes p and q; seed B: their +- mixtures (cosine 1/sqrt 2)."""
    u, w = (
        _tiling([4 if i == p else 0 for i in range(4)]),
        _tiling([4 if i == q else 0 for i in range(4)]),
    )
    a, b = torch.cat([u, w]), torch.cat([(u + w) / math.sqrt(2), (u - w) / math.sqrt(2)])
    out = pair_levels(a, b, _all(8), _all(8), PLANES)
    assert out["gap"] == pytest.approx(1 - 1 / math.sqrt(2), abs=TOL)
    _only(out, term)


def test_outside_directions_and_remainder():
    alpha = 0.6
    inside = _tiling([2, 2, 2, 2])
    a = math.cos(alpha) * inside + math.sin(alpha) * OUTSIDE[0]
    b = math.cos(alpha) * inside + math.sin(alpha) * OUTSIDE[1]
    out = pair_levels(a, b, _all(8), _all(8), PLANES)
    assert out["gap"] == pytest.approx(math.sin(alpha) ** 2, abs=TOL)
    _only(out, "outside_planes")
    out = pair_levels(inside, OUTSIDE[:8], _all(8), _all(8), PLANES)  # nothing in common
    assert out["gap"] == pytest.approx(1.0, abs=TOL)
    _only(out, "remainder")


def test_overlapping_planes_are_merged_not_double_counted():
    """Duplicated planes (the default model's a and b planes coincide) count once."""
    basis = torch.cat([PLANES.basis, PLANES.basis[:1]])  # plane 4 = plane 0
    r2 = torch.tensor([0.4, 0.1, 0.2, 0.2, 0.3])
    planes = FourierPlanes(basis, torch.tensor([*FREQS, 1]), ["a+b", "x", "a", "a", "b"], r2)
    ortho = profile_planes(planes)
    assert ortho.basis.shape[0] == 4
    assert "a+b=b" in ortho.variable
    torch.testing.assert_close(
        ortho.basis.reshape(-1, D) @ ortho.basis.reshape(-1, D).T, torch.eye(8).double()
    )
    a, b = _tiling([4, 4, 4, 4]), _tiling([4, 4, 4, 4], [0.3] * 4)
    out = pair_levels(a, b, _all(16), _all(16), planes)
    assert out["plane"] == pytest.approx(1.0, abs=TOL)
    _only(out, "rotation")


def test_weak_planes_are_dropped_and_partial_ones_keep_their_new_direction():
    b = PLANES.basis
    mixed = torch.stack([b[0, 0], (b[0, 1] + b[1, 0]) / 2**0.5])  # half new: b[1, 0]
    planes = FourierPlanes(
        torch.stack([b[0], mixed, b[2], b[3]]),
        torch.tensor([1, 1, 2, 2]),
        ["a", "b", "a", "b"],
        torch.tensor([1.0, 0.5, 1e-4, 1.0]),  # plane 2: < 1% of frequency 2's R^2
    )
    ortho = profile_planes(planes)
    assert ortho.freq.tolist() == [1, 2, 1]  # strongest first, plane 2 left out
    assert ortho.variable == ["a", "b", "b"]
    assert float(ortho.basis[2, 1].norm()) == 0.0  # one new direction, one zero row
    assert abs(float(ortho.basis[2, 0] @ b[1, 0].double())) == pytest.approx(1.0, abs=1e-6)


def test_best_partner_uses_the_smaller_side():
    score = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert best_partner(score) == 1.0  # both rows find a partner; the third column is surplus
    assert best_partner(score.T) == 1.0
    assert best_partner(torch.eye(2)[[0, 0]]) == pytest.approx(0.75)
    assert best_partner(torch.zeros(0, 3)) == 0.0


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(3, 20),
    dead=st.floats(0.0, 0.9),
    overlap=st.booleans(),
)
def test_terms_add_up_to_the_gap_and_steps_are_nonnegative(seed, n, dead, overlap):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, D, generator=gen), torch.randn(n, D, generator=gen)
    a[: n // 2] = _tiling([n // 2, 0, 0, 0], [float(seed)] * 4).float() + 0.1 * a[: n // 2]
    alive_a, alive_b = torch.rand(n, generator=gen) >= dead, torch.rand(n, generator=gen) >= dead
    planes = PLANES
    if overlap:  # planes that overlap each other, as fitted planes do
        basis = PLANES.basis + 0.3 * torch.randn(PLANES.basis.shape, generator=gen)
        basis = torch.linalg.qr(basis.transpose(1, 2)).Q.transpose(1, 2)
        planes = FourierPlanes(basis.contiguous(), PLANES.freq)
    out = pair_levels(a, b, alive_a, alive_b, planes)
    terms = sum(out[f"gap_{t}"] for t in TERMS)
    assert terms == pytest.approx(1 - pw_mcc(a, b), abs=1e-9)
    assert out["gap"] == pytest.approx(terms, abs=1e-12)
    for t in TERMS[1:]:
        assert out[f"gap_{t}"] >= -TOL, (t, out)
    ref = stability_pair(a, b, alive_a=alive_a, alive_b=alive_b, baselines=False)
    assert out["direction_alive"] == pytest.approx(ref["pw_mcc_alive"].value, abs=1e-9)
    for name in LEVELS + CHAIN:
        assert -1.0 - TOL <= out[name] <= 1.0 + TOL


def _reference(seed: int = 3):
    """Activations inside the planes plus two outside directions (rank 10)."""
    gen = torch.Generator().manual_seed(seed)
    span = torch.cat([PLANES.basis.reshape(-1, D).double(), OUTSIDE[:2]])
    return data_reference((torch.randn(400, 10, generator=gen).double() @ span).float())


def test_random_directions_score_near_their_baseline_and_planted_ones_above():
    ref = _reference()
    gen = torch.Generator().manual_seed(11)
    draw = subspace_sampler(ref)
    decs = [draw(24, gen) for _ in range(4)]
    alive = [torch.arange(24) < k for k in (16, 20, 24, 24)]
    rep = level_set(decs, alive, PLANES, data=ref, trials=8, n_boot=100)
    for name, mv in {**rep.levels, **{f"t_{k}": v for k, v in rep.terms.items()}}.items():
        spread = 4 * mv.extra["baseline_subspace_std"] + 0.01
        assert abs(mv.value - mv.baseline_subspace) <= spread, (name, mv)
    planted = [_tiling([6, 6, 6, 6], [0.1 * s] * 4) for s in range(4)]
    good = level_set(planted, [_all(24)] * 4, PLANES, data=ref, trials=4, n_boot=100)
    for name in ("direction_all", "allocation"):
        assert good.levels[name].value > good.levels[name].baseline_subspace + 0.2
    assert good.levels["direction_all"].ci is not None


def test_level_set_values_baselines_and_row():
    decs = [_tiling([4, 4, 4, 4], [0.2 * s] * 4) for s in range(3)]
    rep = level_set(decs, [_all(16)] * 3, PLANES, kinds=("random_unit",), trials=2, n_boot=50)
    pair = pair_levels(decs[0], decs[1], _all(16), _all(16), PLANES)
    assert rep.levels["direction_all"].value < pair["direction_all"] + 1e-9  # pairs 0-2 are worse
    assert rep.terms["rotation"].value == pytest.approx(rep.terms["gap"].value, abs=TOL)
    assert np.isfinite(rep.levels["plane"].baseline)
    assert np.isnan(rep.levels["plane"].baseline_subspace)
    row = rep.row()
    assert row["gap_rotation"] == rep.terms["rotation"].value
    assert {"plane_baseline", "gap_dead_ci_lo", "subspace_baseline_subspace"} <= set(row)
    assert rep.levels["direction_all"].dead_included and not rep.levels["plane"].dead_included


@pytest.mark.parametrize("threads", [1, 2])
def test_same_numbers_at_any_thread_count(threads):
    ref = _reference()
    gen = torch.Generator().manual_seed(5)
    decs = [torch.randn(32, D, generator=gen) for _ in range(3)]
    alive = [torch.rand(32, generator=gen) > 0.3 for _ in range(3)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = level_set(decs, alive, PLANES, data=ref, trials=2, n_boot=50).row()
        torch.set_num_threads(threads)
        many = level_set(decs, alive, PLANES, data=ref, trials=2, n_boot=50).row()
    finally:
        torch.set_num_threads(before)
    for k, v in one.items():
        assert many[k] == pytest.approx(v, abs=1e-6, nan_ok=True), k


def test_nothing_alive_and_bad_input():
    a = _tiling([4, 4, 4, 4])
    out = pair_levels(a, a, torch.zeros(16, dtype=torch.bool), _all(16), PLANES)
    assert out["direction_all"] == pytest.approx(1.0) and out["plane"] == 0.0
    assert sum(out[f"gap_{t}"] for t in TERMS) == pytest.approx(out["gap"], abs=1e-12)
    with pytest.raises(ValueError, match="2 seeds"):
        level_set([a], [_all(16)], PLANES)
    with pytest.raises(ValueError, match="needs data"):
        level_set([a, a], [_all(16)] * 2, PLANES, kinds=("subspace",))
    with pytest.raises(ValueError, match="no key plane"):
        level_set([a, a], [_all(16)] * 2, FourierPlanes(PLANES.basis[:0], PLANES.freq[:0]))
