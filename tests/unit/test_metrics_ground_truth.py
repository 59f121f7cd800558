"""Ground-truth metrics: planted dictionaries, in-plane rotations, purity, DFT purity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from husai.metrics import (
    activation_frequency_purity,
    frequency_allocation,
    ground_truth_report,
    ground_truth_summary,
    gt_mcc,
    latent_purity,
    plane_coverage,
    random_unit,
    truth_directions,
)
from husai.model.fourier import FourierPlanes


def _planes(d: int = 32, freqs: tuple[int, ...] = (1, 1, 5, 7), seed: int = 0) -> FourierPlanes:
    q = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))[0].T
    basis = q[: 2 * len(freqs)].reshape(len(freqs), 2, d).contiguous()
    return FourierPlanes(basis, torch.tensor(freqs), ["a", "b", "a", "a+b"][: len(freqs)])


def _rotate(planes: FourierPlanes, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    b0, b1 = planes.basis[:, 0], planes.basis[:, 1]
    return torch.stack([c * b0 + s * b1, -s * b0 + c * b1], 1).reshape(-1, planes.basis.shape[-1])


@settings(max_examples=10, deadline=None, derandomize=True)
@given(m=st.integers(2, 20), d=st.integers(4, 24), seed=st.integers(0, 999))
def test_planted_dictionary_gt_mcc_is_one(m: int, d: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    truth = torch.randn(m, d, generator=gen)
    est = truth[torch.randperm(m, generator=gen)] * (0.5 + torch.rand(m, 1, generator=gen))
    extra = torch.randn(3, d, generator=gen)  # an SAE wider than the truth
    assert gt_mcc(torch.cat([est, extra]), truth) == pytest.approx(1.0, abs=1e-5)


def test_rotation_in_plane_keeps_coverage_drops_gt_mcc() -> None:
    planes = _planes()
    rotated = _rotate(planes, math.pi / 4)
    assert gt_mcc(truth_directions(planes), truth_directions(planes)) == pytest.approx(
        1.0, abs=1e-6
    )
    assert gt_mcc(rotated, truth_directions(planes)) == pytest.approx(
        math.cos(math.pi / 4), abs=1e-5
    )
    assert np.allclose(plane_coverage(rotated, planes), 1.0, atol=1e-5)
    assert np.allclose(plane_coverage(rotated[::2], planes), 0.5, atol=1e-5)  # one latent: half


def test_purity_and_plane_assignment() -> None:
    planes = _planes()
    b = planes.basis
    dec = torch.stack(
        [b[2, 0], (b[0, 0] + b[1, 1]) / math.sqrt(2), b[0, 0] + b[2, 1], torch.zeros(32)]
    )
    pur = latent_purity(dec, planes)
    assert pur["plane"].tolist()[0] == 2 and pur["plane_purity"][0] == pytest.approx(1.0, abs=1e-6)
    # planes 0 and 1 share frequency 1: half in each plane, all of it in frequency 1
    assert pur["plane_purity"][1] == pytest.approx(0.5, abs=1e-6)
    assert pur["freq_purity"][1] == pytest.approx(1.0, abs=1e-6) and pur["freq"][1] == 1
    assert pur["freq_purity"][2] == pytest.approx(0.5, abs=1e-6)
    assert pur["plane"][3] == -1 and pur["plane_purity"][3] == 0.0  # dead latent, no NaN
    assert np.isfinite(plane_coverage(dec, planes)).all()


def test_frequency_allocation_across_seeds() -> None:
    planes = _planes()
    b = planes.basis
    seed_a = torch.stack([b[0, 0], b[1, 0], b[2, 0]])  # 2 latents on freq 1, 1 on freq 5
    seed_b = torch.stack([b[0, 0], b[3, 0], b[3, 1]])  # 1 on freq 1, 2 on freq 7
    alloc = frequency_allocation([seed_a, seed_b], planes)
    assert alloc["freqs"] == [1, 5, 7]
    assert alloc["counts"] == [[2, 1, 0], [1, 0, 2]]
    assert alloc["mean"] == [1.5, 0.5, 1.0]


def test_activation_frequency_purity_on_fourier_grid() -> None:
    p = 13
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    w = 2 * math.pi / p
    codes = torch.stack(
        [
            (1 + torch.cos(w * 3 * (a + b))).flatten(),  # pure frequency 3 in a+b
            (torch.cos(w * 5 * a) + torch.sin(w * 5 * b) + 2).flatten(),  # frequency 5 in a and b
            (torch.cos(w * 2 * a) * torch.cos(w * 4 * b)).flatten(),  # cross term: unassigned
            torch.zeros(p * p),  # dead
        ],
        1,
    )
    out = activation_frequency_purity(codes, p)
    assert out["purity"][:2] == pytest.approx([1.0, 1.0], abs=1e-9)
    assert out["freq"][:2].tolist() == [3, 5]
    assert out["purity"][2] == pytest.approx(0.0, abs=1e-9)
    assert out["purity"][3] == 0.0 and out["freq"][3] == -1


def test_activation_frequency_purity_of_a_latent_does_not_depend_on_dead_ones() -> None:
    """Dead latents are skipped (purity 0, frequency -1); the others' values are the same
    bits as when they are measured without any dead latent beside them."""
    p = 11
    gen = torch.Generator().manual_seed(5)
    alive = torch.relu(torch.randn(p * p, 6, generator=gen))
    codes = torch.zeros(p * p, 10)
    cols = torch.tensor([0, 2, 3, 6, 7, 9])
    codes[:, cols] = alive
    both, alone = activation_frequency_purity(codes, p), activation_frequency_purity(alive, p)
    assert np.array_equal(both["purity"][cols.numpy()], alone["purity"])
    assert np.array_equal(both["freq"][cols.numpy()], alone["freq"])
    dead = [1, 4, 5, 8]
    assert np.all(both["purity"][dead] == 0) and np.all(both["freq"][dead] == -1)
    assert np.all(alone["purity"] > 0)


def test_report_has_baselines_and_summary_is_flat() -> None:
    planes = _planes()
    p = 7
    codes = torch.relu(torch.randn(p * p, 8, generator=torch.Generator().manual_seed(1)))
    report = ground_truth_report(truth_directions(planes), planes, codes, p, trials=4)
    gt = report["gt_mcc"]
    assert gt.value == pytest.approx(1.0, abs=1e-6) and gt.baseline < 0.6 and gt.excess > 0.4
    assert report["plane_coverage_mean"].value == pytest.approx(1.0, abs=1e-5)
    assert report["plane_coverage_mean"].baseline == pytest.approx(0.0, abs=0.05)
    assert report["activation_purity_mean"].baseline_kind == "permuted"
    summary = ground_truth_summary(
        random_unit(8, 32, torch.Generator().manual_seed(2)), planes, trials=4
    )
    for key in (
        "gt_mcc",
        "gt_mcc_baseline",
        "plane_coverage_mean",
        "plane_coverage_baseline",
        "purity_mean",
    ):
        assert math.isfinite(summary[key])


def test_report_uses_key_planes_only() -> None:
    full = _planes()
    planes = FourierPlanes(
        full.basis, full.freq, full.variable, is_key=torch.tensor([True, True, False, False])
    )
    dec = truth_directions(full)[:4]  # exactly the two key planes
    report = ground_truth_report(dec, planes, trials=2)
    assert len(report["plane_coverage_per_plane"]) == 2
    assert report["gt_mcc"].value == pytest.approx(1.0, abs=1e-6)
    assert report["plane_coverage_mean"].value == pytest.approx(1.0, abs=1e-5)
    everything = ground_truth_report(dec, planes, trials=2, key_only=False)
    assert everything["plane_coverage_mean"].value == pytest.approx(0.5, abs=1e-5)


def _purity_by_fft2(codes_NS: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: the full 2-D DFT of each latent's n x n grid, power summed per frequency
    over the axes and diagonals (|k| on each), dominant share of the total (DC removed)."""
    grid = codes_NS.double().reshape(n, n, -1)
    grid = grid - grid.mean(dim=(0, 1), keepdim=True)
    power = torch.fft.fft2(grid, dim=(0, 1)).abs().pow(2).numpy()
    ks = np.minimum(np.arange(n), n - np.arange(n))
    purity, freq = [], []
    for s in range(power.shape[-1]):
        by_freq = np.zeros(n // 2 + 1)
        for k1 in range(n):
            for k2 in range(n):
                on_axis = (ks[k1] == 0) != (ks[k2] == 0)
                on_diag = ks[k1] == ks[k2] != 0
                if on_axis or on_diag:
                    by_freq[max(ks[k1], ks[k2])] += power[k1, k2, s]
        purity.append(by_freq.max() / power[..., s].sum())
        freq.append(by_freq.argmax())
    return np.array(purity), np.array(freq)


@pytest.mark.parametrize("n", [13, 12])
def test_dominant_share_from_marginal_sums_equals_the_full_2d_dft(n) -> None:
    """The marginal-sum form (sums over b, a, a+b, a-b and their 1-D DFTs) gives the same
    purity and frequency as the full 2-D transform, for odd n (add, sub) and even n (the
    discrete-log grid of mul has n = p - 1), where (n/2, n/2) is also (n/2, -n/2)."""
    from husai.metrics.ground_truth import _dominant_share

    gen = torch.Generator().manual_seed(n)
    a, b = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    w = 2 * math.pi / n
    planted = torch.stack(
        [
            (1 + torch.cos(w * (n // 2) * (a + b))).flatten(),  # the Nyquist diagonal for even n
            (torch.cos(w * 2 * a) + 0.3 * torch.cos(w * 3 * (a - b))).flatten(),
        ],
        1,
    )
    codes = torch.cat([torch.relu(torch.randn(n * n, 6, generator=gen)), planted], 1)
    got_purity, got_freq = _dominant_share(codes.double(), n, "add", None)
    ref_purity, ref_freq = _purity_by_fft2(codes, n)
    assert np.allclose(got_purity.numpy(), ref_purity, rtol=1e-10, atol=1e-12)
    assert np.array_equal(got_freq.numpy(), ref_freq)
    assert got_purity[-2] == pytest.approx(1.0, abs=1e-9) and got_freq[-2] == n // 2
