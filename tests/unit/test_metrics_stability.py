"""Stability metrics: known answers, baselines, dead latents, n_a != n_b."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from husai.metrics import (
    activation_mcc,
    correlation_matrix,
    mmcs,
    per_latent_stability,
    pw_mcc,
    random_unit,
    random_unit_baseline,
    shared_fraction,
    stability_pair,
    stability_set,
    subspace_overlap,
)


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUSAI_CACHE_DIR", "off")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _song_mcc(a: np.ndarray, b: np.ndarray) -> float:
    """Song et al. 2025's MCC, re-derived from its description: unit rows (0-norm -> 1),
    cost 1 - A B^T, Hungarian, 1 - mean matched cost."""
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    a, b = a / np.where(na == 0, 1, na), b / np.where(nb == 0, 1, nb)
    cost = 1 - a @ b.T
    r, c = linear_sum_assignment(cost)
    return float(1 - cost[r, c].sum() / len(r))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    n_a=st.integers(1, 40), n_b=st.integers(1, 40), d=st.integers(2, 12), seed=st.integers(0, 999)
)
def test_pw_mcc_matches_song_et_al(n_a: int, n_b: int, d: int, seed: int) -> None:
    a = torch.randn(n_a, d, generator=_gen(seed), dtype=torch.float64)
    b = torch.randn(n_b, d, generator=_gen(seed + 1), dtype=torch.float64)
    a[0] = 0.0  # a dead latent
    assert pw_mcc(a, b) == pytest.approx(_song_mcc(a.numpy(), b.numpy()), abs=1e-6)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(n=st.integers(2, 16), d=st.integers(16, 32), seed=st.integers(0, 999))
def test_permuted_copy_scores_one_and_sign_flip_only_abs(n: int, d: int, seed: int) -> None:
    a = torch.linalg.qr(torch.randn(d, d, generator=_gen(seed)))[0][:n]  # orthonormal rows
    perm = torch.randperm(n, generator=_gen(seed + 1))
    flipped = a[perm] * -1.0
    assert pw_mcc(a, a[perm]) == pytest.approx(1.0, abs=1e-5)
    assert mmcs(a, flipped) == pytest.approx(1.0, abs=1e-5)
    assert pw_mcc(a, flipped, signed=False) == pytest.approx(1.0, abs=1e-5)
    assert pw_mcc(a, flipped) < 1e-5  # signed: a flipped latent is no match (best is 0)


def test_random_unit_acceptance_d128_1024() -> None:
    """Issue acceptance: random unit vectors, d=128, 1024 latents: PW-MCC ~0.27, MMCS ~0.30."""
    a, b = random_unit(1024, 128, _gen(11)), random_unit(1024, 128, _gen(12))
    out = stability_pair(a, b, trials=4, ranks=[])
    assert out["pw_mcc"].value == pytest.approx(0.27, abs=0.01)
    assert out["mmcs"].value == pytest.approx(0.30, abs=0.01)
    for name in ("pw_mcc", "mmcs"):
        mv = out[name]
        assert mv.baseline == pytest.approx(mv.value, abs=0.005)
        assert abs(mv.excess) < 0.005 and mv.ratio == pytest.approx(1.0, abs=0.02)
        assert mv.dead_included and mv.n_latents == (1024, 1024)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    n_a=st.integers(8, 40), n_b=st.integers(8, 40), d=st.integers(8, 32), seed=st.integers(0, 99)
)
def test_random_inputs_within_three_sigma_of_baseline(
    n_a: int, n_b: int, d: int, seed: int
) -> None:
    a, b = random_unit(n_a, d, _gen(5000 + seed)), random_unit(n_b, d, _gen(9000 + seed))
    for name, value in (("pw_mcc", pw_mcc(a, b)), ("mmcs", mmcs(a, b))):
        mean, std = random_unit_baseline(name, n_a, n_b, d, trials=25, seed=1)
        assert abs(value - mean) <= 3 * std + 1e-9, (name, value, mean, std)


def test_baseline_is_seeded_and_cached() -> None:
    one = random_unit_baseline("pw_mcc", 20, 30, 8, trials=5, seed=3)
    two = random_unit_baseline("pw_mcc", 20, 30, 8, trials=5, seed=3)
    other = random_unit_baseline("pw_mcc", 20, 30, 8, trials=5, seed=4)
    assert one == two and one != other


def test_unequal_sizes_subset_scores_one() -> None:
    a = torch.randn(30, 8, generator=_gen(1))
    assert pw_mcc(a, a[:12]) == pytest.approx(1.0, abs=1e-6)
    assert pw_mcc(a[:12], a) == pytest.approx(1.0, abs=1e-6)
    out = stability_pair(a, a[:12], trials=2)
    assert out["pw_mcc"].n_latents == (30, 12)


def test_dead_latents_never_nan_and_alive_only_counts() -> None:
    a = torch.randn(20, 8, generator=_gen(2))
    b = a.clone()
    a[:5] = 0.0  # dead: zero decoder rows
    codes_a = torch.relu(torch.randn(100, 20, generator=_gen(3)))
    codes_a[:, :5] = 0.0
    codes_b = torch.relu(torch.randn(100, 20, generator=_gen(4)))  # all of b fires
    out = stability_pair(a, b, codes_a=codes_a, codes_b=codes_b, trials=2)
    for mv in out.values():
        for x in (mv.value, mv.baseline):
            assert math.isfinite(x), mv
    alive = out["pw_mcc_alive"]
    assert alive.n_latents == (15, 20) and not alive.dead_included
    assert alive.value == pytest.approx(1.0, abs=1e-6)
    assert out["pw_mcc"].value == pytest.approx(15 / 20, abs=1e-6)  # dead rows score 0
    assert out["mmcs_alive"].n_latents == (15, 20) and out["mmcs_alive"].value < 1.0
    assert out["mmcs_alive"].baseline < out["mmcs_alive"].value


def test_shared_fraction_needs_encoder_agreement() -> None:
    dec = torch.randn(40, 16, generator=_gen(4))
    enc = torch.randn(40, 16, generator=_gen(5))
    perm = torch.randperm(40, generator=_gen(6))
    assert shared_fraction(dec, dec[perm], enc, enc[perm]) == 1.0
    assert shared_fraction(dec, dec[perm], enc, torch.randn(40, 16, generator=_gen(7))) == 0.0
    half = dec[perm].clone()
    half[:20] = torch.randn(20, 16, generator=_gen(8))
    assert shared_fraction(dec, half) == pytest.approx(0.5)


def test_activation_mcc_permuted_scaled_codes() -> None:
    codes = torch.relu(torch.randn(300, 10, generator=_gen(9)))
    perm = torch.randperm(10, generator=_gen(10))
    assert activation_mcc(codes, 3.0 * codes[:, perm]) == pytest.approx(1.0, abs=1e-9)
    codes_dead = codes.clone()
    codes_dead[:, 0] = 0.0
    assert math.isfinite(activation_mcc(codes_dead, codes))
    out = stability_pair(
        torch.randn(10, 4, generator=_gen(1)),
        torch.randn(10, 4, generator=_gen(2)),
        codes_a=codes,
        codes_b=codes[:, perm],
        trials=2,
    )
    mv = out["activation_mcc"]
    assert mv.value == pytest.approx(1.0) and mv.baseline < 0.3 and mv.baseline_kind == "permuted"


def test_per_latent_stability_flags_the_changed_latent() -> None:
    a = torch.randn(12, 64, generator=_gen(11))
    b = torch.cat([a[1:], torch.randn(3, 64, generator=_gen(12))])  # latent 0 is gone
    scores = per_latent_stability(a, [a, b])
    assert scores.shape == (12, 2)
    assert np.allclose(scores[:, 0], 1.0, atol=1e-6)
    assert scores[0, 1] < 0.5 and np.allclose(scores[1:, 1], 1.0, atol=1e-6)


def test_stability_set_mean_ci_and_init_baseline() -> None:
    a = torch.randn(16, 8, generator=_gen(12))
    copies = [a[torch.randperm(16, generator=_gen(s))] for s in range(3)]
    inits = [random_unit(16, 8, _gen(100 + s)) for s in range(3)]
    out = stability_set(copies, inits=inits, trials=2, n_boot=200)
    mv = out["pw_mcc"]
    assert mv.value == pytest.approx(1.0, abs=1e-6) and len(mv.extra["pairs"]) == 3
    assert mv.ci is not None and mv.ci[0] == pytest.approx(1.0, abs=1e-6)
    want_init = np.mean([pw_mcc(inits[i], inits[j]) for i, j in ((0, 1), (0, 2), (1, 2))])
    assert mv.baseline_init == pytest.approx(want_init)
    assert mv.to_dict()["baseline_init"] == pytest.approx(want_init)


def test_subspace_overlap_rotation_invariant() -> None:
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=_gen(13)))
    span = q[:8]
    mix = torch.randn(8, 8, generator=_gen(14)) @ span  # same span, other basis
    assert subspace_overlap(span, mix, r=8) == pytest.approx(1.0, abs=1e-6)
    assert subspace_overlap(span, q[8:16], r=8) == pytest.approx(0.0, abs=1e-6)


def test_encoder_pw_mcc_when_encoders_given() -> None:
    dec = torch.randn(20, 16, generator=_gen(15))
    enc = torch.randn(20, 16, generator=_gen(16))
    perm = torch.randperm(20, generator=_gen(17))
    out = stability_pair(dec, dec[perm], enc_a=enc, enc_b=enc[perm], trials=2, ranks=[])
    assert out["pw_mcc_encoder"].value == pytest.approx(1.0, abs=1e-6)
    assert out["pw_mcc_encoder"].baseline == pytest.approx(out["pw_mcc"].baseline)
    assert "pw_mcc_encoder" not in stability_pair(dec, dec, trials=2, ranks=[])


@pytest.mark.parametrize("density", [0.02, 0.9])
def test_correlation_matrix_matches_numpy_on_sparse_and_dense_codes(density) -> None:
    """The moment form (sparse product below SPARSE_DENSITY) equals numpy's corrcoef."""
    gen = _gen(11)
    mask_a = torch.rand(2000, 30, generator=gen) < density
    mask_b = torch.rand(2000, 20, generator=gen) < density
    a = torch.relu(torch.randn(2000, 30, generator=gen)) * mask_a + 0.5 * mask_a
    b = torch.relu(torch.randn(2000, 20, generator=gen)) * mask_b
    b[:, 3] = 2.0 * a[:, 7] + 0.1  # one exact linear partner
    got = correlation_matrix(a, b).numpy()
    ref = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[:30, 30:]
    assert np.allclose(got, ref, atol=1e-10)
    assert got[7, 3] == pytest.approx(1.0, abs=1e-12)


def test_correlation_matrix_treats_constant_and_near_constant_latents_as_zero() -> None:
    gen = _gen(12)
    a = torch.randn(500, 4, generator=gen).double()
    a[:, 0] = 0.0  # dead
    a[:, 1] = 1.0 + 1e-9 * torch.randn(500, generator=gen).double()  # varies by 1e-9 of its mean
    b = a.clone()
    corr = correlation_matrix(a, b)
    assert torch.all(corr[0] == 0) and torch.all(corr[1] == 0)
    assert corr[2, 2] == pytest.approx(1.0, abs=1e-12) and corr[3, 3] == pytest.approx(1.0)
    assert torch.all(corr.abs() <= 1.0)


def test_correlation_matrix_is_the_same_in_row_chunks(monkeypatch) -> None:
    import husai.metrics.similarity as similarity

    gen = _gen(13)
    a = torch.relu(torch.randn(600, 40, generator=gen) - 1.5)
    b = torch.relu(torch.randn(600, 30, generator=gen) - 1.5)
    whole = correlation_matrix(a, b)
    monkeypatch.setattr(similarity, "_PAIRS_PER_CHUNK", 50)
    assert torch.allclose(correlation_matrix(a, b), whole, atol=1e-12)


@pytest.mark.parametrize("density", [0.02, 0.9])
def test_correlation_matrix_skips_dead_latents_without_changing_the_others(density) -> None:
    """Dead (all-zero) latents are left out of the computation: their rows and columns are
    0, and the alive latents' correlations are those of the alive-only codes, bit for bit
    on the sparse path (the dense one may differ in the last bit: its GEMM shape changes)."""
    gen = _gen(14)
    a = torch.relu(torch.randn(3000, 50, generator=gen)) * (
        torch.rand(3000, 50, generator=gen) < density
    )
    b = torch.relu(torch.randn(3000, 40, generator=gen)) * (
        torch.rand(3000, 40, generator=gen) < density
    )
    dead_a, dead_b = torch.arange(0, 50, 3), torch.arange(1, 40, 4)
    a[:, dead_a], b[:, dead_b] = 0.0, 0.0
    alive_a = torch.ones(50, dtype=torch.bool).index_fill_(0, dead_a, False)
    alive_b = torch.ones(40, dtype=torch.bool).index_fill_(0, dead_b, False)
    got = correlation_matrix(a, b)
    assert torch.all(got[dead_a] == 0) and torch.all(got[:, dead_b] == 0)
    ref = np.corrcoef(a.double().numpy().T, b.double().numpy().T)[:50, 50:]
    sub = got[alive_a][:, alive_b].numpy()
    assert np.allclose(sub, ref[alive_a.numpy()][:, alive_b.numpy()], atol=1e-10)
    assert torch.all(got[alive_a][:, alive_b].abs() > 0)  # the alive ones were computed
