"""The synthetic known-truth task (Song et al. 2025): shape, sparsity, seeding."""

from __future__ import annotations

import pytest
import torch

from husai.metrics import gt_mcc
from husai.tasks.synthetic import make_synthetic


def test_song_setup_exactly_k_active_unit_truth() -> None:
    data = make_synthetic(n_samples=2000, seed=3)
    assert data.x.shape == (2000, 16) and data.truth.shape == (32, 16)
    assert data.codes.shape == (2000, 32)
    assert torch.equal((data.codes > 0).sum(1), torch.full((2000,), 3))
    assert (data.codes >= 0).all()
    assert torch.allclose(data.truth.norm(dim=1), torch.ones(32), atol=1e-6)
    assert torch.allclose(data.x, data.codes @ data.truth, atol=1e-6)
    assert (data.codes > 0).float().mean(0).min() > 0.05  # every feature is used


def test_seeded_bits_and_truth_scores_one() -> None:
    one, two = make_synthetic(n_samples=500, seed=1), make_synthetic(n_samples=500, seed=1)
    other = make_synthetic(n_samples=500, seed=2)
    assert torch.equal(one.x, two.x) and not torch.equal(one.x, other.x)
    assert gt_mcc(one.truth, one.truth) == pytest.approx(1.0, abs=1e-6)
    assert gt_mcc(other.truth, one.truth) < 0.9


def test_bad_k_is_rejected() -> None:
    with pytest.raises(ValueError, match="k"):
        make_synthetic(n_features=4, k=5)
