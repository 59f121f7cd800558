"""Where SAE decoder directions sit relative to the ground-truth Fourier planes.

Decoder rows are normalised to unit length, so every quantity is a share of a
latent's direction:

- ``plane_coords``: the 2-D coordinates of each latent in each plane (basis rows are
  orthonormal, so ``|coords|^2`` is the share of the latent inside that plane and the
  angle ``atan2(c1, c0)`` is its orientation there; Nanda et al. 2023 show each
  frequency's features are rotation-ambiguous inside such a plane);
- ``frequency_shares``: the share of each latent inside the key planes, split between
  key frequencies additively (see its docstring), plus the rest. The dominant
  frequency's share over the key total is the latent's purity. (husai.metrics' own
  frequency purity uses each frequency's span separately; the two agree when the
  frequencies' planes are orthogonal.)
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float

from husai.metrics.matching import unit_rows as unit_rows_t
from husai.model.fourier import FourierPlanes


def unit_rows(dec_SD: Float[np.ndarray, "S d"]) -> Float[np.ndarray, "S d"]:
    """``husai.metrics.matching.unit_rows`` in float64, on and to numpy."""
    return unit_rows_t(torch.from_numpy(np.asarray(dec_SD)), torch.float64).numpy()


def plane_coords(
    dec_SD: Float[np.ndarray, "S d"], basis_P2D: Float[np.ndarray, "P 2 d"]
) -> Float[np.ndarray, "S P 2"]:
    """Coordinates of each unit decoder direction in each plane's orthonormal basis."""
    return np.einsum("sd,pkd->spk", unit_rows(dec_SD), basis_P2D)


def _key_decomposition(planes: FourierPlanes) -> tuple:
    """Stacked key-plane rows B [R, d], their frequencies [R], joint basis Q, pinv(B^T) [R, d]."""
    key = planes.is_key.numpy()
    basis_P2D = planes.basis.double().numpy()
    b_RD = basis_P2D[key].reshape(-1, basis_P2D.shape[-1])
    freq_R = np.repeat(planes.freq.numpy()[key], 2)
    freqs = sorted({int(f) for f in freq_R})
    if not len(b_RD):
        return (freqs, b_RD, freq_R, b_RD, b_RD)
    _, s_R, vh_RD = np.linalg.svd(b_RD, full_matrices=False)
    q_KD = vh_RD[s_R > 1e-6 * s_R.max()]
    return (freqs, b_RD, freq_R, q_KD, np.linalg.pinv(b_RD.T))


def frequency_shares(
    dec_SD: Float[np.ndarray, "S d"], planes: FourierPlanes
) -> tuple[list[int], Float[np.ndarray, "S F1"]]:
    """Share of each latent's squared norm per key frequency; the last column is the rest.

    The share inside the joint span of all key planes, ``|Q u|^2``, is split between
    frequencies by the minimum-norm least-squares decomposition ``u_key = sum_f B_f^T c_f``
    in proportion to ``|B_f^T c_f|^2``, so a row always sums to 1 even where planes of
    different frequencies or variables are not orthogonal.
    """
    freqs, b_RD, freq_R, q_KD, pinv_RD = _key_decomposition(planes)
    u_SD = unit_rows(dec_SD)
    if not freqs:
        return [], np.ones((len(u_SD), 1))
    inside_S = ((u_SD @ q_KD.T) ** 2).sum(1)
    c_SR = u_SD @ pinv_RD.T  # minimum-norm least squares: B^T c = u
    parts_SF = np.stack(
        [((c_SR[:, freq_R == f] @ b_RD[freq_R == f]) ** 2).sum(1) for f in freqs], 1
    )
    share_SF = parts_SF / np.maximum(parts_SF.sum(1, keepdims=True), 1e-12) * inside_S[:, None]
    return freqs, np.concatenate([share_SF, np.maximum(1 - inside_S, 0)[:, None]], 1)


def purity_stats(
    share_SF1: Float[np.ndarray, "S F1"], min_key: float = 0.5, pure: float = 0.8
) -> dict[str, float]:
    """Fraction of latents with >= ``min_key`` of their norm^2 in key planes, and of those
    the fraction whose dominant frequency holds >= ``pure`` of their key-plane share."""
    key_S = share_SF1[:, :-1].sum(1)
    in_key = key_S >= min_key
    if share_SF1.shape[1] <= 1 or not in_key.any():
        return {
            "in_key_fraction": float(in_key.mean()) if len(key_S) else float("nan"),
            "pure_fraction": float("nan"),
        }
    purity_S = share_SF1[in_key, :-1].max(1) / key_S[in_key]
    return {
        "in_key_fraction": float(in_key.mean()),
        "pure_fraction": float((purity_S >= pure).mean()),
    }


def dominant_order(share_SF1: Float[np.ndarray, "S F1"]) -> np.ndarray:
    """Row order grouping latents by dominant column, strongest first within a group."""
    dom_S = share_SF1.argmax(1)
    return np.lexsort((-share_SF1.max(1), dom_S))


def _gaps(d_GAB: np.ndarray) -> np.ndarray:
    """Symmetrised mean nearest-neighbour distance for each slice of wrapped differences."""
    d_GAB = np.abs((d_GAB + np.pi) % (2 * np.pi) - np.pi)
    return 0.5 * (d_GAB.min(2).mean(1) + d_GAB.min(1).mean(1))


def angle_gap(a_rad: np.ndarray, b_rad: np.ndarray) -> float:
    """Symmetrised mean nearest-neighbour angular distance (radians) between two angle sets."""
    if not len(a_rad) or not len(b_rad):
        return float("nan")
    return float(_gaps((a_rad[:, None] - b_rad[None, :])[None])[0])


def rotated_gap(a_rad: np.ndarray, b_rad: np.ndarray) -> tuple[float, float]:
    """The smallest ``angle_gap`` over a common rotation of ``b``, and that rotation.

    Grid search, coarse (5 degrees) then fine (0.25 degrees) around the three best
    coarse angles. If two seeds' latents tile a plane identically up to rotation (the
    ambiguity of a Fourier plane), the gap drops to ~0 after rotating; if they differ
    in number or spacing, it stays large.
    """
    if not len(a_rad) or not len(b_rad):
        return float("nan"), float("nan")
    d_AB = a_rad[:, None] - b_rad[None, :]
    coarse_G = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    gaps_G = _rotated(d_AB, coarse_G)
    step = coarse_G[1]
    fine = [c + np.linspace(-step, step, 41) for c in coarse_G[np.argsort(gaps_G)[:3]]]
    fine_G = np.concatenate(fine)
    gaps_F = _rotated(d_AB, fine_G)
    i = int(np.argmin(gaps_F))
    return float(gaps_F[i]), float(fine_G[i] % (2 * np.pi))


def _rotated(d_AB: np.ndarray, phis_G: np.ndarray) -> np.ndarray:
    chunk = max(1, 2_000_000 // d_AB.size)
    parts = [
        _gaps(d_AB[None] - phis_G[i : i + chunk, None, None]) for i in range(0, len(phis_G), chunk)
    ]
    return np.concatenate(parts)
