"""Per-latent rows of a unit (latents.parquet) and their per-configuration summary:
planted copies are stable everywhere, random decoders score the analytic random baseline,
dead latents are flagged, the EV contribution is the EV lost by removing the latent, and
purity names the planted plane."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from husai.experiments.latents import (
    LATENT_COLUMNS,
    cross_seed_columns,
    ev_contributions,
    latent_columns,
    latent_frame,
)
from husai.experiments.tables import latent_stability_columns
from husai.metrics.baselines import random_unit
from husai.metrics.data_baselines import data_rank
from husai.metrics.trust import random_stability
from husai.model.fourier import FourierPlanes
from husai.saes.io import LoadedSAE


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _relu_sae(W_dec: torch.Tensor, b_enc: torch.Tensor | None = None) -> LoadedSAE:
    s, d = W_dec.shape
    return LoadedSAE(
        W_enc=W_dec.T.clone(),
        W_dec=W_dec,
        b_enc=torch.zeros(s) if b_enc is None else b_enc,
        b_dec=torch.zeros(d),
        threshold=None,
        arch="standard",
        cfg={},
    )


def test_permuted_copies_are_stable_in_every_other_seed() -> None:
    base = random_unit(24, 10, _gen(0))
    decoders = [base]
    for seed in (1, 2, 3):
        perm = torch.randperm(24, generator=_gen(seed))
        scale = torch.rand(24, 1, generator=_gen(10 + seed)) + 0.5  # norms do not matter
        decoders.append(base[perm] * scale)
    cols = cross_seed_columns(decoders, tau=0.99)
    for c in cols:
        assert np.array_equal(c["stability"], np.ones(24))
        assert np.allclose(c["partner_cos_mean"], 1.0, atol=1e-5)


def test_a_latent_missing_from_one_seed_loses_exactly_that_seed() -> None:
    base = random_unit(12, 16, _gen(1))
    other = base.clone()
    other[3] = -base[3]  # anti-parallel: cosine -1, no partner at tau (signed)
    decoders = [base, base.clone(), other]
    cols = cross_seed_columns(decoders, tau=0.9)
    expect = np.ones(12)
    expect[3] = 0.5
    assert np.array_equal(cols[0]["stability"], expect)
    assert np.array_equal(cols[1]["stability"], expect)
    assert cols[2]["stability"][3] == 0.0 and (np.delete(cols[2]["stability"], 3) == 1).all()


def test_one_seed_has_no_stability() -> None:
    (only,) = cross_seed_columns([random_unit(5, 4, _gen(2))], tau=0.7)
    assert np.isnan(only["stability"]).all() and np.isnan(only["partner_cos_mean"]).all()


def test_random_decoders_match_the_analytic_random_baseline() -> None:
    n, s, d, tau = 6, 100, 12, 0.7
    decoders = [random_unit(s, d, _gen(100 + i)) for i in range(n)]
    stab = np.concatenate([c["stability"] for c in cross_seed_columns(decoders, tau)])
    levels = np.arange(n) / (n - 1)
    dist = random_stability([s] * n, d, tau)
    assert 0.2 < dist @ levels < 0.8  # the test is not trivially at 0 or 1
    observed = np.array([(np.isclose(stab, v)).mean() for v in levels])
    assert np.abs(observed - dist).max() < 0.05
    assert abs(stab.mean() - dist @ levels) < 0.03


def test_random_decoders_in_the_data_subspace_match_the_subspace_baseline() -> None:
    """Decoders uniformly random inside the activations' rank-r subspace (the fair random
    reference on low-rank data) score as the analytic baseline in R^r, far above R^d's."""
    n, s, d, r, tau = 6, 60, 64, 8, 0.7
    basis_rD = torch.linalg.qr(torch.randn(d, r, generator=_gen(7)))[0].T
    acts_ND = torch.randn(4000, r, generator=_gen(8)) @ basis_rD
    assert data_rank(acts_ND) == r
    decoders = [random_unit(s, r, _gen(200 + i)) @ basis_rD for i in range(n)]
    stab = np.concatenate([c["stability"] for c in cross_seed_columns(decoders, tau)])
    levels = np.arange(n) / (n - 1)
    dist, sphere = random_stability([s] * n, r, tau), random_stability([s] * n, d, tau)
    assert 0.2 < dist @ levels < 0.9 and sphere @ levels < 0.01
    observed = np.array([(np.isclose(stab, v)).mean() for v in levels])
    assert np.abs(observed - dist).max() < 0.06
    assert abs(stab.mean() - dist @ levels) < 0.04


def test_dead_latents_are_flagged_and_contribute_nothing() -> None:
    dec = random_unit(6, 5, _gen(3))
    b_enc = torch.zeros(6)
    b_enc[[1, 4]] = -1e3  # never fire
    sae = _relu_sae(dec, b_enc)
    acts = torch.randn(200, 5, generator=_gen(4))
    codes = sae.encode(acts)
    alive = (codes != 0).any(0)
    cols = latent_columns(sae, acts, codes, alive, planes=None)
    dead = np.array([False, True, False, False, True, False])
    assert np.array_equal(cols["alive"], ~dead)
    assert (cols["fire_freq"][dead] == 0).all() and (cols["fire_freq"][~dead] > 0).all()
    assert (cols["ev_contribution"][dead] == 0).all()
    assert np.allclose(cols["fire_freq"], (codes != 0).double().mean(0).numpy())


def _ev(acts: torch.Tensor, recon: torch.Tensor) -> float:
    x = acts.double()
    return 1.0 - float((x - recon.double()).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_ev_contribution_is_the_ev_lost_when_the_latent_is_removed() -> None:
    sae = _relu_sae(torch.randn(7, 6, generator=_gen(5)) * 0.7)
    sae.b_dec = torch.randn(6, generator=_gen(6))
    acts = torch.randn(300, 6, generator=_gen(7)) + 0.3
    codes = sae.encode(acts)
    got = ev_contributions(sae, acts, codes, batch=64)  # several batches
    full = _ev(acts, sae.decode(codes))
    for s in range(7):
        ablated = codes.clone()
        ablated[:, s] = 0
        assert got[s] == pytest.approx(full - _ev(acts, sae.decode(ablated)), abs=1e-5)
    assert (np.abs(got) > 1e-4).sum() >= 5  # the check is not vacuous


def _planes() -> FourierPlanes:
    eye = torch.eye(6)
    basis = torch.stack([eye[[0, 1]], eye[[2, 3]], eye[[4, 5]]])
    return FourierPlanes(
        basis, torch.tensor([3, 5, 7]), ["a", "a+b", "b"], None, torch.tensor([True, True, False])
    )


def test_purity_names_the_planted_key_plane() -> None:
    eye = torch.eye(6)
    dec = torch.stack([eye[0], (eye[2] + eye[3]) / 2**0.5, eye[4], (eye[0] + eye[2]) / 2**0.5])
    sae = _relu_sae(dec)
    acts = torch.randn(50, 6, generator=_gen(8))
    codes = sae.encode(acts)
    cols = latent_columns(sae, acts, codes, (codes != 0).any(0), _planes())
    assert np.allclose(cols["plane_purity"], [1.0, 1.0, 0.0, 0.5], atol=1e-6)
    assert cols["plane"][:2].tolist() == [0, 1]  # index among the key planes
    assert cols["plane_freq"][:2].tolist() == [3, 5] and cols["freq"][:2].tolist() == [3, 5]
    assert list(cols["plane_variable"][:2]) == ["a", "a+b"]
    # latent 2 lies in the non-key plane (frequency 7): no key plane holds any of it
    assert cols["freq_purity"][2] == pytest.approx(0.0, abs=1e-9) and cols["freq"][2] != 7


def _head(**changes: object) -> dict:
    head = {
        "unit_id": "u",
        "group_id": "u/2",
        "sae_id": "k2-seed0",
        "arch": "topk",
        "d_sae": 4,
        "d_in": 6,
        "hook": "h",
        "checkpoint": "final",
        "sparsity_name": "k",
        "sparsity": 2.0,
        "seed": 0,
        "n_others": 2,
        "tau": 0.7,
    }
    return head | changes


def test_latent_frame_has_the_schema_and_nulls_without_planes() -> None:
    sae = _relu_sae(random_unit(4, 6, _gen(9)))
    acts = torch.randn(40, 6, generator=_gen(10))
    codes = sae.encode(acts)
    cols = latent_columns(sae, acts, codes, (codes != 0).any(0), planes=None)
    cols |= cross_seed_columns([sae.W_dec, sae.W_dec.clone()], 0.7)[0]
    frame = latent_frame(_head(), cols)
    assert list(frame.columns) == list(LATENT_COLUMNS) and len(frame) == 4
    assert {c: str(t) for c, t in frame.dtypes.items()} == LATENT_COLUMNS
    for col in ("plane_purity", "plane", "plane_freq", "plane_variable", "freq_purity", "freq"):
        assert frame[col].isna().all(), col
    assert frame["latent"].tolist() == [0, 1, 2, 3] and (frame["sae_id"] == "k2-seed0").all()
    with_planes = latent_frame(
        _head(), cols | latent_columns(sae, acts, codes, (codes != 0).any(0), _planes())
    )
    assert with_planes["plane_purity"].notna().all()


def test_summary_columns_use_alive_latents_and_the_random_baseline() -> None:
    stab = [1.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    alive = [True, True, True, True, True, True, False, False, True]
    frame = pd.DataFrame(
        {**_head(d_sae=3), "seed": np.repeat([0, 1, 2], 3), "stability": stab, "alive": alive}
    )
    cols = latent_stability_columns(frame)["u/2"]
    kept = np.array([1.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.0])
    assert cols["latent_stability_n_alive"] == 7
    assert cols["latent_stability_mean"] == pytest.approx(kept.mean())
    assert cols["latent_stability_median"] == 0.5
    assert cols["latent_stable_half"] == pytest.approx(5 / 7)
    assert cols["latent_stable_all"] == pytest.approx(3 / 7)
    assert cols["latent_stability_mean_all"] == pytest.approx(np.mean(stab))
    dist = random_stability([3, 3, 3], 6, 0.7)
    assert cols["latent_stability_mean_baseline"] == pytest.approx(dist @ [0, 0.5, 1])
    assert cols["latent_stable_half_baseline"] == pytest.approx(dist[1] + dist[2])
    assert cols["latent_stable_all_baseline"] == pytest.approx(dist[2])
    assert cols["latent_stability_median_baseline"] == 0.0  # dist[0] > 1/2 for random
    assert "latent_stable_all_baseline_subspace" not in cols  # no rank given
    sub = latent_stability_columns(frame, {("final", "h"): 2})["u/2"]
    low = random_stability([3, 3, 3], 2, 0.7)
    assert sub["latent_stability_mean_baseline_subspace"] == pytest.approx(low @ [0, 0.5, 1])
    assert sub["latent_stable_all_baseline_subspace"] == pytest.approx(low[2])
    assert sub["latent_stable_all_baseline_subspace"] > cols["latent_stable_all_baseline"]
    assert sub["latent_stability_data_rank"] == 2
    assert latent_stability_columns(frame, {("step_75", "h"): 2})["u/2"] == cols  # other acts
