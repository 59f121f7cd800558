"""Decoder directions vs Fourier planes: angles, shares and purity on known cases."""

from __future__ import annotations

import math

import numpy as np
import torch

from husai.model.fourier import FourierPlanes
from husai.report import geometry


def _planes(d: int = 10) -> FourierPlanes:
    q_DD, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(d, d)))
    basis_P2D = q_DD.T[:6].reshape(3, 2, d)  # planes: freq 1 (a), freq 1 (b), freq 2 (a)
    return FourierPlanes(
        torch.from_numpy(basis_P2D),
        torch.tensor([1, 1, 2]),
        ["a", "b", "a"],
        torch.tensor([0.3, 0.2, 0.1]),
        torch.tensor([True, True, True]),
    )


def test_plane_coords_recover_angle_and_norm():
    p = _planes()
    theta = 1.1
    v_D = math.cos(theta) * p.basis.numpy()[2, 0] + math.sin(theta) * p.basis.numpy()[2, 1]
    xy = geometry.plane_coords(3.0 * v_D[None], p.basis.numpy())[0]  # scale must not matter
    assert np.isclose(math.atan2(xy[2, 1], xy[2, 0]), theta)
    assert np.isclose(np.linalg.norm(xy[2]), 1.0)
    assert np.allclose(xy[:2], 0, atol=1e-12)  # orthogonal to the other planes


def test_frequency_shares_and_purity():
    p = _planes()
    in_f1 = (p.basis.numpy()[0, 0] + p.basis.numpy()[1, 1]) / math.sqrt(
        2
    )  # spans both freq-1 planes
    mixed = (p.basis.numpy()[0, 0] + p.basis.numpy()[2, 0]) / math.sqrt(
        2
    )  # half freq 1, half freq 2
    q_DD, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(10, 10)))
    outside = q_DD.T[8]  # orthogonal to all planes
    freqs, share = geometry.frequency_shares(np.stack([in_f1, mixed, outside]), p)
    assert freqs == [1, 2]
    assert np.allclose(share, [[1, 0, 0], [0.5, 0.5, 0], [0, 0, 1]], atol=1e-9)
    stats = geometry.purity_stats(share)
    assert np.isclose(stats["in_key_fraction"], 2 / 3)
    assert np.isclose(stats["pure_fraction"], 0.5)  # in_f1 is pure, mixed is not


def test_dominant_order_groups_by_frequency():
    share = np.array([[0.1, 0.9, 0], [0.8, 0.2, 0], [0.95, 0.05, 0], [0.2, 0.6, 0.2]])
    assert geometry.dominant_order(share).tolist() == [2, 1, 0, 3]


def test_overlapping_planes_split_shares_additively():
    e = np.eye(3)
    planes = FourierPlanes(torch.from_numpy(np.stack([e[[0, 1]], e[[1, 2]]])), torch.tensor([1, 2]))
    _, share = geometry.frequency_shares(np.stack([e[0], e[1], e[0] + e[1]]), planes)
    assert np.allclose(share.sum(1), 1.0)
    assert np.allclose(share[0], [1, 0, 0], atol=1e-9)  # only in frequency 1's plane
    assert np.allclose(share[1], [0.5, 0.5, 0], atol=1e-9)  # the shared direction splits evenly
    assert share[2, 0] > share[2, 1]  # mostly frequency 1


def test_rotation_explains_a_rotated_copy_but_not_a_different_tiling():
    a = np.array([0.1, 1.3, 2.0, 4.0])
    gap, phi = geometry.rotated_gap(a, a - 0.7)
    assert geometry.angle_gap(a, a - 0.7) > 0.3
    assert gap < np.radians(0.15) and abs(phi - 0.7) < np.radians(0.15)
    other = np.array([0.0, np.pi])  # two latents cannot match four at any rotation
    assert geometry.rotated_gap(a, other)[0] > 0.2
    assert np.isnan(geometry.angle_gap(a, np.array([])))
