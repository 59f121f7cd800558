"""Fourier maths on planted cases whose answers are known."""

import math

import pytest
import torch

from husai.model.fourier import (
    design_matrix,
    fit_planes,
    fourier_basis,
    frequency_norms,
    gini,
    key_frequencies,
    restricted_and_excluded,
    top_share,
)
from husai.tasks import make_pairs


@pytest.mark.parametrize("p", [7, 8, 113])
def test_basis_is_orthonormal(p):
    basis, labels = fourier_basis(p)
    assert basis.shape == (p, p) and len(labels) == p
    assert torch.allclose(basis @ basis.T, torch.eye(p, dtype=torch.float64), atol=1e-10)


def _planted_embedding(p, d, freqs, noise=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.arange(p, dtype=torch.float64)
    w = noise * torch.randn(p, d, generator=gen, dtype=torch.float64)
    for i, k in enumerate(freqs):
        u, v = torch.randn(2, d, generator=gen, dtype=torch.float64)
        w += (i + 1) * (
            torch.cos(2 * math.pi * k * x / p)[:, None] * u
            + torch.sin(2 * math.pi * k * x / p)[:, None] * v
        )
    return w


def test_planted_embedding_frequencies_are_found():
    p, freqs = 31, [3, 7, 12]
    norms = frequency_norms(_planted_embedding(p, 16, freqs, noise=0.01))
    assert norms.shape == (p // 2 + 1,)
    assert sorted(norms[1:].argsort(descending=True)[:3].add(1).tolist()) == freqs
    assert key_frequencies(norms, 0.9) == [7, 12]  # energy shares 1/14, 4/14, 9/14
    assert key_frequencies(norms, 0.999) == freqs
    assert top_share(norms, 3) > 0.99
    assert top_share(norms, 1) < 0.7  # the largest planted frequency carries ~9/14 of the energy


def test_norms_of_a_single_frequency_match_parseval():
    p, d = 13, 4
    w = _planted_embedding(p, d, [5])
    norms = frequency_norms(w)
    assert norms[5] ** 2 == pytest.approx((w - w.mean(0)).pow(2).sum().item(), rel=1e-9)
    assert norms[torch.arange(len(norms)) != 5].abs().max() < 1e-9


def test_gini_known_values():
    assert gini(torch.ones(10)) == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(10)
    one_hot[3] = 5.0
    assert gini(one_hot) == pytest.approx(1 - 1 / 10)


def test_restricted_and_excluded_split_planted_logits():
    p, keys = 17, [2, 5]
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None, None] + a[None, :, None] - a[None, None, :]) * 2 * math.pi / p
    signal = sum(torch.cos(k * s) for k in keys)
    other = 0.3 * torch.cos(7 * (a[:, None, None] - a[None, :, None]) * 2 * math.pi / p).expand(
        p, p, p
    )
    restricted, excluded = restricted_and_excluded(signal + other + 1.5, keys)
    assert torch.allclose(
        restricted, signal + 1.5 + other.mean(dim=(0, 1), keepdim=True), atol=1e-9
    )
    assert torch.allclose(excluded, other + 1.5, atol=1e-9)


def _principal_angles(a_rd, b_rd):
    qa, qb = torch.linalg.qr(a_rd.double().T)[0], torch.linalg.qr(b_rd.double().T)[0]
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)
    return torch.arccos(cos)


def test_planted_planes_plus_noise_are_recovered():
    p, d = 23, 40
    gen = torch.Generator().manual_seed(1)
    pairs = make_pairs(p)
    planted = [(3, "a"), (3, "b"), (3, "a+b"), (3, "a-b"), (8, "a+b"), (8, "a")]
    phi, planes = design_matrix(pairs, p, [3, 8])
    dirs = torch.linalg.qr(torch.randn(d, 2 * len(planted), generator=gen, dtype=torch.float64))[
        0
    ].T
    acts = torch.zeros(len(pairs), d, dtype=torch.float64)
    truth = {}
    for i, plane in enumerate(planted):
        j = planes.index(plane)
        uv = dirs[2 * i : 2 * i + 2] * (1 + i)
        acts += phi[:, 2 * j : 2 * j + 2] @ uv
        truth[plane] = uv
    acts += 0.01 * torch.randn(acts.shape, generator=gen, dtype=torch.float64)
    fit = fit_planes(acts.float(), pairs, p, key_freqs=[3, 8])
    for plane, uv in truth.items():
        j = next(
            i
            for i, fv in enumerate(zip(fit.freq.tolist(), fit.variable, strict=True))
            if fv == plane
        )
        assert _principal_angles(fit.basis[j], uv).max() < 1e-2, plane
        assert fit.is_key[j]
    assert fit.key_r2_total == pytest.approx(1.0, abs=1e-3)
    assert fit.r2.sum() == pytest.approx(1.0, abs=1e-3)
    assert fit.key_freqs == [3, 8]
    assert fit.r2_by_variable()["a-b"] == pytest.approx(
        fit.r2[(fit.freq == 3) & torch.tensor([v == "a-b" for v in fit.variable])].item()
    )
    assert torch.allclose(
        fit.basis @ fit.basis.transpose(1, 2), torch.eye(2).expand(len(fit.freq), 2, 2), atol=1e-5
    )
    span3 = fit.frequency_basis(3)
    assert span3.shape == (8, d)
    assert fit.frequency_basis(8).shape == (4, d)
    assert (
        _principal_angles(
            fit.frequency_basis(8), torch.cat([truth[(8, "a+b")], truth[(8, "a")]])
        ).max()
        < 1e-2
    )
    with pytest.raises(ValueError, match="not a key frequency"):
        fit.frequency_basis(5)


def test_plane_r2_is_the_variance_share():
    p = 19
    pairs = make_pairs(p)
    phi, planes = design_matrix(pairs, p, [4])
    acts = torch.cat(
        [
            phi[:, 0:2] @ torch.tensor([[3.0, 0.0], [0.0, 3.0]], dtype=torch.float64),
            phi[:, 4:6] @ torch.eye(2, dtype=torch.float64),
        ],
        dim=1,
    )
    fit = fit_planes(acts.float(), pairs, p, key_freqs=[4])
    r2 = dict(zip(zip(fit.freq.tolist(), fit.variable, strict=True), fit.r2.tolist(), strict=True))
    assert r2[(4, "a")] == pytest.approx(0.9, abs=1e-5)
    assert r2[(4, "a+b")] == pytest.approx(0.1, abs=1e-5)
    assert r2[(4, "b")] == pytest.approx(0.0, abs=1e-6)


def test_fit_planes_gives_the_same_bits_on_every_call():
    # the default grid (p = 113, 448 regressors) at d = 256: LAPACK's pivoted-QR least
    # squares (gelsy) returned different last bits between calls on identical inputs here
    p, d = 113, 256
    pairs = make_pairs(p)
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(3, p, d, generator=gen)
    a, b = pairs[:, 0], pairs[:, 1]
    acts = torch.relu(emb[0][a] + emb[1][b] + emb[2][(a + b) % p])
    fits = [fit_planes(acts.clone(), pairs.clone(), p, key_freqs=[3, 7]) for _ in range(3)]
    for fit in fits[1:]:
        assert torch.equal(fit.basis, fits[0].basis) and torch.equal(fit.r2, fits[0].r2)
