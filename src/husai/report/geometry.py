"""Where SAE decoder directions sit relative to the ground-truth Fourier planes.

Decoder rows are normalised to unit length, so every quantity is a share of a
latent's direction:

- ``plane_coords``: the 2-D coordinates of each latent in each plane (basis rows are
  orthonormal, so ``|coords|^2`` is the share of the latent inside that plane and the
  angle ``atan2(c1, c0)`` is its orientation there; Nanda et al. 2023 show each
  frequency's features are rotation-ambiguous inside such a plane);
- ``frequency_shares``: the share of each latent in the span of all planes of one key
  frequency (an orthonormal basis of the stacked plane bases, from an SVD), plus the
  rest. The dominant frequency's share over the key total is the latent's purity.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from husai.report.store import Planes


def unit_rows(dec_SD: Float[np.ndarray, "S d"]) -> Float[np.ndarray, "S d"]:
    return dec_SD / np.maximum(np.linalg.norm(dec_SD, axis=1, keepdims=True), 1e-12)


def plane_coords(
    dec_SD: Float[np.ndarray, "S d"], basis_P2D: Float[np.ndarray, "P 2 d"]
) -> Float[np.ndarray, "S P 2"]:
    """Coordinates of each unit decoder direction in each plane's orthonormal basis."""
    return np.einsum("sd,pkd->spk", unit_rows(dec_SD), basis_P2D)


def frequency_spans(planes: Planes) -> dict[int, Float[np.ndarray, "r d"]]:
    """Orthonormal basis of the span of every key plane of each key frequency (cached)."""
    if planes.spans is not None:
        return planes.spans
    spans = {}
    for f in sorted({int(x) for x in planes.freq_P[planes.is_key_P].tolist()}):
        stacked_RD = planes.basis_P2D[(planes.freq_P == f) & planes.is_key_P].reshape(
            -1, planes.basis_P2D.shape[-1]
        )
        _, s_R, vh_RD = np.linalg.svd(stacked_RD.astype(np.float64), full_matrices=False)
        spans[f] = vh_RD[s_R > 1e-6 * s_R.max()]
    planes.spans = spans
    return spans


def frequency_shares(
    dec_SD: Float[np.ndarray, "S d"], planes: Planes
) -> tuple[list[int], Float[np.ndarray, "S F1"]]:
    """Share of each latent's squared norm per key frequency; last column is the rest."""
    spans = frequency_spans(planes)
    u_SD = unit_rows(dec_SD)
    cols = [((u_SD @ q_RD.T) ** 2).sum(1) for q_RD in spans.values()]
    share_SF = np.stack(cols, 1) if cols else np.zeros((len(u_SD), 0))
    rest_S = np.maximum(1 - share_SF.sum(1), 0)
    return list(spans), np.concatenate([share_SF, rest_S[:, None]], 1)


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
