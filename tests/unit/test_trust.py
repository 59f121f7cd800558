"""Per-latent trust (husai.metrics.trust): known answers for stability, partners, the
reproducible-subspace share, the activation measures and the analytic random baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from husai.errors import UserError
from husai.metrics.baselines import random_unit
from husai.metrics.trust import (
    pair_partners,
    random_stability,
    trust_summary,
    trust_table,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _ReluSAE:
    """A minimal SAE object: codes relu(x @ W_enc + b_enc), decoder W_dec [S, D]."""

    def __init__(self, W_dec: torch.Tensor, b_enc: torch.Tensor | None = None) -> None:
        self.W_dec = W_dec
        self.W_enc = W_dec.T.clone()
        self.b_enc = torch.zeros(len(W_dec)) if b_enc is None else b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc + self.b_enc)


@pytest.mark.parametrize(("chunk", "block"), [(300, 64), (1000, 1000), (7, 3), (4096, 128)])
def test_pair_partners_equal_the_dense_argmax_both_ways(chunk: int, block: int) -> None:
    a = random_unit(1000, 24, _gen(1))
    b = random_unit(777, 24, _gen(2))
    ia, ca, ib, cb = pair_partners(a, b, chunk=chunk, block=block)
    sim = a @ b.T
    assert torch.equal(ia, sim.argmax(1)) and torch.allclose(ca, sim.max(1).values, atol=1e-6)
    assert torch.equal(ib, sim.argmax(0)) and torch.allclose(cb, sim.max(0).values, atol=1e-6)


def test_a_permuted_rescaled_copy_is_stable_with_the_right_partner() -> None:
    dec = torch.randn(300, 32, generator=_gen(3))
    perm = torch.randperm(300, generator=_gen(4))
    scale = torch.rand(300, 1, generator=_gen(5)) + 0.5  # decoder norms do not matter
    t = trust_table([dec, dec[perm] * scale], tau=1.0)
    first = t.sae == 0
    assert np.all(t.stability == 1.0)
    np.testing.assert_allclose(t.partner_cos[first, 1], 1.0, atol=1e-5)
    assert np.array_equal(t.partner[first, 1], perm.argsort().numpy())  # latent k sits at inv[k]
    assert np.array_equal(t.partner[~first, 0], perm.numpy())
    assert np.all(t.partner[first, 0] == -1) and np.all(np.isnan(t.partner_cos[first, 0]))


def test_a_sign_flipped_copy_is_not_a_partner() -> None:
    dec = torch.randn(200, 64, generator=_gen(6))
    t = trust_table([dec, -dec], tau=0.7)
    assert np.all(t.stability == 0.0)
    assert np.all(t.partner_cos[t.sae == 0, 1] < 0.7)


def test_independent_random_saes_at_high_d_have_zero_stability_like_the_baseline() -> None:
    decs = [random_unit(512, 256, _gen(10 + i)) for i in range(3)]
    t = trust_table(decs, tau=0.7)
    summary = trust_summary(t)
    assert np.all(t.stability == 0.0)
    assert summary["mean_stability"].value == 0.0
    assert summary["mean_stability"].baseline < 1e-12
    assert np.all(np.nanmax(t.partner_cos, axis=1) < 0.5)


@pytest.mark.parametrize(
    ("d", "tau", "sizes"), [(8, 0.9, [200, 200, 200, 200]), (6, 0.85, [50, 300])]
)
def test_the_analytic_random_baseline_matches_monte_carlo(
    d: int, tau: float, sizes: list[int]
) -> None:
    n = len(sizes)
    dist = random_stability(sizes, d, tau)
    assert dist.shape == (n,) and math.isclose(dist.sum(), 1.0)
    observed = np.zeros(n)
    trials = 20
    for trial in range(trials):
        decs = [random_unit(s, d, _gen(100 * trial + i)) for i, s in enumerate(sizes)]
        stab = trust_table(decs, tau=tau).stability
        observed += np.bincount(np.rint(stab * (n - 1)).astype(int), minlength=n) / len(stab)
    observed /= trials
    assert 0.05 < dist[0] < 0.95  # a case where the baseline is far from 0 and 1
    np.testing.assert_allclose(observed, dist, atol=0.02)


def test_the_analytic_baseline_in_three_dimensions() -> None:
    # In R^3 the cosine with a fixed vector is uniform on [-1, 1]: P(cos >= tau) = (1 - tau) / 2.
    dist = random_stability([1, 1], 3, 0.5)
    np.testing.assert_allclose(dist, [0.75, 0.25])


def _planted(d: int = 128, shared: int = 64, own: int = 64, n: int = 3, seed: int = 20) -> tuple:
    """n SAEs: ``shared`` directions common to all (slightly perturbed, shuffled) + ``own`` random."""
    g = _gen(seed)
    common = random_unit(shared, d, g)
    decs, truth = [], []
    for _ in range(n):
        rows = torch.cat(
            [common + 0.02 * torch.randn(shared, d, generator=g), random_unit(own, d, g)]
        )
        perm = torch.randperm(shared + own, generator=g)
        decs.append(rows[perm])
        truth.append(perm.argsort())  # truth[k] = position of original row k
    return decs, truth


def test_planted_shared_latents_are_stable_and_the_others_are_not() -> None:
    decs, truth = _planted()
    t = trust_table(decs, tau=0.7)
    for i, pos in enumerate(truth):
        rows = t.sae == i
        is_shared = np.zeros(rows.sum(), dtype=bool)
        is_shared[pos[:64].numpy()] = True
        stab = t.stability[rows]
        assert np.all(stab[is_shared] == 1.0)
        assert np.all(stab[~is_shared] == 0.0)
        for j, pos_j in enumerate(truth):
            if j != i:  # shared latent k of SAE i is paired with shared latent k of SAE j
                got = t.partner[rows, j][pos[:64].numpy()]
                assert np.array_equal(got, pos_j[:64].numpy())
    summary = trust_summary(t)
    assert summary["stable_in_all"].value == pytest.approx(0.5)
    assert summary["stable_in_all"].baseline < 1e-12


def _with_planted_subspace(d: int = 64, r: int = 8, n: int = 3, seed: int = 30) -> tuple:
    """n SAEs: 32 exactly shared random directions + 16 random unit vectors inside one r-dim
    subspace V (different in every SAE, so unstable at tau = 0.95)."""
    g = _gen(seed)
    common = random_unit(32, d, g)
    basis_RD = torch.linalg.qr(torch.randn(d, r, generator=g))[0].T
    decs = [torch.cat([common, random_unit(16, r, g) @ basis_RD]) for _ in range(n)]
    return decs, basis_RD


def test_subspace_share_is_one_inside_the_planted_subspace_and_r_over_d_outside() -> None:
    d, r = 64, 8
    decs, _ = _with_planted_subspace(d, r)
    t = trust_table(decs, tau=0.95, subspace_rank=r)
    inside = t.latent >= 32
    assert np.all(t.stability[inside] < 0.5) and np.all(t.stability[~inside] == 1.0)
    assert np.all(t.subspace_rank == r)
    np.testing.assert_allclose(t.subspace_share[inside], 1.0, atol=1e-4)
    assert abs(t.subspace_share[~inside].mean() - r / d) < 0.05  # random directions: ~ r / d
    summary = trust_summary(t)["subspace_share_unstable"]
    assert summary.value == pytest.approx(1.0, abs=1e-4) and summary.baseline == r / d


def test_default_subspace_rank_follows_the_planted_dimension() -> None:
    decs, _ = _with_planted_subspace(d=64, r=8)
    t = trust_table(decs, tau=0.95)
    assert np.all((1 <= t.subspace_rank) & (t.subspace_rank <= 8))
    inside = t.latent >= 32
    assert t.subspace_share[inside].mean() > 0.6 > 3 * t.subspace_share[~inside].mean()


def test_random_saes_default_rank_is_capped_at_a_quarter_of_d() -> None:
    decs = [random_unit(400, 64, _gen(40 + i)) for i in range(2)]
    t = trust_table(decs, tau=0.7)
    assert np.all(t.subspace_rank == 16)
    assert abs(t.subspace_share.mean() - 16 / 64) < 0.03


def test_no_unstable_latents_leaves_the_share_undefined() -> None:
    dec = torch.randn(40, 16, generator=_gen(50))
    t = trust_table([dec, dec[torch.randperm(40, generator=_gen(51))]])
    assert np.all(np.isnan(t.subspace_share)) and np.all(t.subspace_rank == 0)


def _brute_corr(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() < 1e-12 or y.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def test_activation_measures_equal_a_brute_force_loop() -> None:
    g = _gen(60)
    saes = [
        _ReluSAE(torch.randn(20, 6, generator=g), -torch.rand(20, generator=g)) for _ in range(3)
    ]
    saes[1].b_enc[3] = -1e6  # a latent that never fires: correlation 0
    acts = torch.randn(301, 6, generator=g)
    t = trust_table(saes, acts=acts, tau=0.5)
    codes = [s.encode(acts).double().numpy() for s in saes]
    for row in range(len(t.stability)):
        i, k = t.sae[row], t.latent[row]
        assert t.fire_freq[row] == pytest.approx((codes[i][:, k] > 0).mean())
        want = [
            _brute_corr(codes[i][:, k], codes[j][:, t.partner[row, j]]) for j in range(3) if j != i
        ]
        assert t.partner_corr[row] == pytest.approx(np.mean(want), abs=1e-6)
    assert t.fire_freq[(t.sae == 1) & (t.latent == 3)] == 0.0


def test_random_saes_inside_the_data_subspace_score_its_baseline_not_the_spheres() -> None:
    """SAEs of random directions inside the activations' rank-r subspace: the unit-sphere
    baseline (R^d) calls them stable; the data-subspace one (R^r) expects what they score."""
    d, r, s, n = 96, 6, 80, 5
    basis_rD = torch.linalg.qr(torch.randn(d, r, generator=_gen(80)))[0].T
    acts = torch.randn(3000, r, generator=_gen(81)) @ basis_rD
    saes = [_ReluSAE(random_unit(s, r, _gen(90 + i)) @ basis_rD) for i in range(n)]
    t = trust_table(saes, acts=acts, tau=0.7)
    mean = trust_summary(t)["mean_stability"]
    assert t.data_rank == r
    assert mean.baseline < 1e-6 < 0.2 < mean.value  # the sphere's baseline is far too easy
    want = random_stability([s] * n, r, 0.7) @ (np.arange(n) / (n - 1))
    assert mean.baseline_subspace == pytest.approx(want)
    assert abs(mean.value - mean.baseline_hardest) < 0.05 and mean.baseline_hardest == want
    assert trust_summary(trust_table(saes, tau=0.7))["mean_stability"].baseline_subspace != (
        mean.baseline_subspace
    )  # NaN without activations


@pytest.mark.parametrize(("inside", "want"), [(True, 4 / 8), (False, 0.0)])
def test_subspace_share_baseline_in_the_data_is_r_over_rank_inside_and_zero_outside(
    inside: bool, want: float
) -> None:
    """Unstable latents random in a rank-8 plane set: with the data in that same subspace a
    random data direction has expected share r / R = 4 / 8 in any 4 of its dimensions;
    with the data orthogonal to it, 0. (Exact: E[u u^T] = B^T B / R.)"""
    d, big = 48, torch.linalg.qr(torch.randn(48, 16, generator=_gen(100)))[0].T
    latents_rD, data_rD = big[:8], big[:8] if inside else big[8:]
    acts = torch.randn(2000, 8, generator=_gen(101)) @ data_rD
    saes = [_ReluSAE(random_unit(30, 8, _gen(110 + i)) @ latents_rD) for i in range(3)]
    t = trust_table(saes, acts=acts, tau=0.999, subspace_rank=4)
    assert t.d_in == d and (t.subspace_rank == 4).all()
    np.testing.assert_allclose(t.subspace_baseline_data, want, atol=1e-6)
    share = trust_summary(t)["subspace_share_unstable"]
    assert share.value == pytest.approx(t.subspace_share.mean())
    assert share.baseline == pytest.approx(4 / d) and share.baseline_subspace == pytest.approx(
        want, abs=1e-6
    )
    assert "subspace_baseline_data" in t.columns()


def test_a_permuted_copy_correlates_one_with_its_partner() -> None:
    g = _gen(70)
    sae = _ReluSAE(torch.randn(30, 8, generator=g))
    perm = torch.randperm(30, generator=g)
    copy = _ReluSAE(sae.W_dec[perm])
    t = trust_table([sae, copy], acts=torch.randn(500, 8, generator=g))
    np.testing.assert_allclose(t.partner_corr, 1.0, atol=1e-6)


def test_columns_are_one_row_per_latent_and_name_each_sae() -> None:
    decs = [random_unit(s, 16, _gen(80 + s)) for s in (10, 12, 14)]
    t = trust_table(decs, names=["a", "b", "c"])
    cols = t.columns()
    assert {len(v) for v in cols.values()} == {36}
    assert list(cols["sae"][:10]) == ["a"] * 10 and list(cols["sae"][-14:]) == ["c"] * 14
    assert list(cols["latent"][10:22]) == list(range(12))
    assert [c for c in cols if c.startswith("partner_in_")] == [
        "partner_in_0",
        "partner_in_1",
        "partner_in_2",
    ]
    assert t.sizes == [10, 12, 14]
    assert "fire_freq" not in cols


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5, float("nan")])
def test_tau_outside_zero_one_is_refused(tau: float) -> None:
    decs = [random_unit(10, 8, _gen(i)) for i in range(2)]
    with pytest.raises(UserError, match=r"tau: expected a decoder cosine in \(0, 1\]"):
        trust_table(decs, tau=tau)


def test_one_sae_or_two_widths_are_refused() -> None:
    with pytest.raises(UserError, match="at least 2 SAEs, got 1"):
        trust_table([random_unit(10, 8, _gen(0))])
    with pytest.raises(UserError, match="different input widths"):
        trust_table([random_unit(10, 8, _gen(0)), random_unit(10, 9, _gen(1))])
