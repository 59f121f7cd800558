"""Recovery of known features: direction matching (GT-MCC) and plane-aware Fourier recovery.

- ``gt_mcc``: Song et al. 2025's MCC between the true directions and the decoder
  (signed cosine, Hungarian, mean over matched pairs), as in their synthetic study.
- Fourier planes (Nanda et al. 2023): each (frequency, variable) gives a 2-D plane,
  ``basis [P, 2, d]`` orthonormal rows, ``freq [P]``. Directions inside a plane are
  rotation-ambiguous (any rotation of cos/sin is equally valid), so direction matching
  alone misleads. Plane-aware measures:

  - *purity* of a latent: the largest share of its decoder norm^2 inside one plane
    (``||B_p u||^2`` for unit ``u``), and which plane; likewise per frequency, using the
    orthonormal span of all of that frequency's planes;
  - *coverage* of a plane: latents are assigned to their purest plane when that purity
    is >= ``min_purity`` (default 0.5, so a latent has at most one plane); coverage is
    ``||B_p Q^T||_F^2 / 2`` with ``Q`` an orthonormal basis of the assigned latents' span:
    the fraction of the plane spanned, in [0, 1], invariant to rotations in the plane;
  - *allocation*: latents per frequency (frequency purity >= ``min_purity``) for each
    seed, and its mean/std/CV across seeds;
  - *activation frequency purity*: a latent's codes over the p x p input grid (row-major
    (a, b)), mean removed, 2-D DFT; bin (k_a, k_b) (signed, |k| <= p/2) belongs to
    frequency |k| when it lies on an axis (k, 0), (0, k) or a diagonal (k, +-k) (the
    terms of cos/sin of a, b, a+b, a-b and their products); purity is the largest
    frequency's share of the non-DC power; other bins count as unassigned power. For
    multiplication (planes with variables a, b, ab, a/b) the (p-1)^2 grid is first put in
    discrete-log order (Chughtai et al. 2023), so the bins are frequencies of the log.

Zero-norm latents have purity 0 and plane/frequency -1. Every report number carries a
baseline: random unit decoders with the same number of latents (Monte Carlo, seeded),
or, for activation purity, the same codes shuffled across inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from husai.errors import UserError
from husai.io import load_safetensors
from husai.metrics.baselines import MetricValue, metric_value, monte_carlo, random_unit
from husai.metrics.inputs import as_decoder
from husai.metrics.matching import unit_rows
from husai.metrics.similarity import nonzero_columns, pw_mcc
from husai.metrics.subspace import row_basis
from husai.model.fourier import MUL_VARIABLES, FourierPlanes, task_group


def load_planes(acts_dir: str | Path) -> FourierPlanes:
    """Read ``planes.safetensors`` (+ ``meta.json`` plane variables) from an activation dir."""
    path = Path(acts_dir) / "planes.safetensors"
    if not path.is_file():
        raise UserError(f"{path}: no Fourier planes (expected an activation directory)")
    t = load_safetensors(path)
    if not {"basis", "freq"} <= set(t) or t["basis"].ndim != 3 or t["basis"].shape[1] != 2:
        raise UserError(f"{path}: not a planes file (needs basis [P, 2, d] and freq [P])")
    meta_path = Path(acts_dir) / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    variables = list(meta.get("plane_variables") or [])
    n = t["basis"].shape[0]
    return FourierPlanes.from_tensors(t, variables if len(variables) == n else [])


def truth_directions(planes: FourierPlanes) -> Float[Tensor, "two_P d"]:
    """The planes' basis vectors as a direction set [2P, d] (for direction GT-MCC)."""
    return torch.as_tensor(planes.basis).reshape(-1, planes.basis.shape[-1]).float()


def gt_mcc(dec: Any, truth: Any) -> float:
    """Song et al. 2025 GT-MCC: Hungarian on signed cosine between truth and decoder."""
    return pw_mcc(as_decoder(truth), as_decoder(dec))


def plane_shares(dec: Any, planes: FourierPlanes) -> Float[Tensor, "n P"]:
    """Share of each latent's decoder norm^2 inside each plane (0 for zero rows)."""
    u_ND = unit_rows(as_decoder(dec)).double()
    proj_NPT = torch.einsum("nd,ptd->npt", u_ND, torch.as_tensor(planes.basis).double())
    return proj_NPT.pow(2).sum(-1).clamp(0.0, 1.0)


def frequency_bases(planes: FourierPlanes) -> tuple[list[int], list[Tensor]]:
    """For each distinct frequency, an orthonormal basis of the span of its planes."""
    freq = torch.as_tensor(planes.freq).long()
    freqs = sorted({int(f) for f in freq.tolist()})
    basis = torch.as_tensor(planes.basis)
    bases = [row_basis(basis[freq == f].reshape(-1, basis.shape[-1])) for f in freqs]
    return freqs, bases


def latent_purity(dec: Any, planes: FourierPlanes) -> dict[str, np.ndarray]:
    """Per latent: plane purity and plane index, frequency purity and frequency (-1 if none)."""
    dec_ND = as_decoder(dec)
    shares_NP = plane_shares(dec_ND, planes)
    alive_N = (dec_ND.norm(dim=1) > 0).numpy()
    p_val, p_idx = shares_NP.max(dim=1) if shares_NP.shape[1] else (torch.zeros(len(alive_N)), None)
    freqs, bases = frequency_bases(planes)
    u_ND = unit_rows(dec_ND).double()
    fshare_NF = (
        torch.stack([(u_ND @ q.T).pow(2).sum(1) for q in bases], 1).clamp(0.0, 1.0)
        if bases
        else None
    )
    out = {"plane_purity": p_val.numpy(), "plane": _or_minus(p_idx, alive_N)}
    if fshare_NF is None:
        out.update(freq_purity=np.zeros(len(alive_N)), freq=np.full(len(alive_N), -1))
        return out
    f_val, f_idx = fshare_NF.max(dim=1)
    freq = np.where(alive_N, np.asarray(freqs)[f_idx.numpy()], -1)
    out.update(freq_purity=f_val.numpy(), freq=freq)
    return out


def _or_minus(idx: Tensor | None, alive_N: np.ndarray) -> np.ndarray:
    if idx is None:
        return np.full(len(alive_N), -1)
    return np.where(alive_N, idx.numpy(), -1)


def plane_coverage(dec: Any, planes: FourierPlanes, min_purity: float = 0.5) -> np.ndarray:
    """[P] fraction of each plane spanned by the latents assigned to it (module docstring)."""
    dec_ND = as_decoder(dec)
    pur = latent_purity(dec_ND, planes)
    basis = torch.as_tensor(planes.basis).double()
    cov = np.zeros(basis.shape[0])
    for p in range(basis.shape[0]):
        sel = (pur["plane"] == p) & (pur["plane_purity"] >= min_purity)
        if sel.any():
            q = row_basis(dec_ND[torch.from_numpy(sel)])
            cov[p] = min(1.0, float((basis[p] @ q.T).pow(2).sum() / 2.0))
    return cov


def frequency_allocation(
    decs: list[Any], planes: FourierPlanes, min_purity: float = 0.5
) -> dict[str, Any]:
    """Latents allocated to each frequency by each seed, and the spread across seeds."""
    freqs, _ = frequency_bases(planes)
    counts = np.zeros((len(decs), len(freqs)), dtype=np.int64)
    for s, dec in enumerate(decs):
        pur = latent_purity(dec, planes)
        for f_i, f in enumerate(freqs):
            counts[s, f_i] = int(((pur["freq"] == f) & (pur["freq_purity"] >= min_purity)).sum())
    mean = counts.mean(axis=0)
    std = counts.std(axis=0, ddof=1) if len(decs) > 1 else np.zeros(len(freqs))
    cv = np.where(mean > 0, std / np.where(mean > 0, mean, 1.0), 0.0)
    return {
        "freqs": freqs,
        "counts": counts.tolist(),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "cv": cv.tolist(),
    }


def activation_frequency_purity(
    codes_NS: Tensor, modulus: int, op: str = "add"
) -> dict[str, np.ndarray]:
    """Per latent: dominant-frequency share of the 2-D DFT power of its activation grid.

    The grid is p x p for add/sub; for 'mul' the (p-1)^2 rows (nonzero a, b, row-major) are
    put in discrete-log order first, so frequencies are those of the log (n = p - 1).
    """
    codes_NS = torch.as_tensor(codes_NS).detach().double()
    group = task_group(op, int(modulus))
    p = group.order
    if codes_NS.shape[0] != p * p:
        raise UserError(
            f"codes: expected {p * p} rows (all inputs of op {op!r}, row-major), got {codes_NS.shape[0]}"
        )
    # A latent that never fires has no power (purity 0, frequency -1): only the others are
    # transformed, each on its own, so their values do not depend on the dead ones.
    used = nonzero_columns(codes_NS)
    purity_S = torch.zeros(codes_NS.shape[1], dtype=torch.float64)
    freq_S = torch.full((codes_NS.shape[1],), -1, dtype=torch.int64)
    if len(used):
        purity_U, freq_U = _dominant_share(codes_NS[:, used], p, op, group)
        purity_S[used], freq_S[used] = purity_U, freq_U
    return {"purity": purity_S.numpy(), "freq": freq_S.numpy()}


def _dominant_share(codes_NU: Tensor, n: int, op: str, group: Any) -> tuple[Tensor, Tensor]:
    """Dominant frequency's share of each latent's 2-D DFT power (DC removed), without the 2-D
    transform: the bins that carry a frequency are the axes (k, 0), (0, k) and diagonals
    (k, k), (k, -k), and the power there is that of the 1-D DFT of the grid's sums over b,
    over a, over a + b and over a - b (mod n); the total is n^2 times the sum of squares
    (Parseval). Equal to the full ``fft2`` over the n x n grid to rounding, ~5x faster."""
    grid_NNU = codes_NU.reshape(n, n, -1)
    if op == "mul":  # residue rows 1..p-1 -> element order g^0, g^1, ...
        order_N = group.elements - 1
        grid_NNU = grid_NNU[order_N][:, order_N]
    grid_NNU = grid_NNU - grid_NNU.mean(dim=(0, 1), keepdim=True)
    flat_QU = grid_NNU.reshape(n * n, -1)
    s_N1, a_1N = torch.arange(n)[:, None], torch.arange(n)[None, :]
    by_plus = (a_1N * n + (s_N1 - a_1N).remainder(n)).flatten()  # row s: (a, s - a) for every a
    by_minus = (a_1N * n + (a_1N - s_N1).remainder(n)).flatten()  # row s: (a, a - s)
    sums = [
        grid_NNU.sum(dim=1),
        grid_NNU.sum(dim=0),
        flat_QU.index_select(0, by_plus).reshape(n, n, -1).sum(dim=1),
        flat_QU.index_select(0, by_minus).reshape(n, n, -1).sum(dim=1),
    ]
    power_4NU = torch.fft.fft(torch.stack(sums), dim=1).abs().pow(2)
    k_N = torch.arange(n)
    power_4NU[3, 2 * k_N == n] = 0.0  # (n/2, -n/2) is (n/2, n/2): counted once, as a diagonal
    label_N = torch.minimum(k_N, n - k_N)
    by_freq_FU = torch.zeros(n // 2 + 1, flat_QU.shape[1], dtype=torch.float64)
    by_freq_FU.index_add_(0, label_N[1:], power_4NU[:, 1:].sum(dim=0))
    total_U = float(n * n) * flat_QU.pow(2).sum(dim=0)
    best_val, best_f = by_freq_FU.max(dim=0)
    ok = total_U > 1e-12 * max(1.0, float(total_U.max()))
    purity = torch.where(ok, best_val / torch.where(ok, total_U, 1.0), torch.zeros_like(total_U))
    return purity, torch.where(ok, best_f, -1)


def ground_truth_report(
    dec: Any,
    planes: FourierPlanes,
    codes: Tensor | None = None,
    modulus: int | None = None,
    *,
    truth: Tensor | None = None,
    min_purity: float = 0.5,
    trials: int = 8,
    seed: int = 0,
    key_only: bool = True,
) -> dict[str, Any]:
    """GT-MCC, plane coverage, purity and (with codes) activation purity, with baselines.

    Scalar results are MetricValues whose baseline is the same number for random unit
    decoders with as many latents (``trials`` seeded draws); per-plane and per-latent
    arrays are plain lists. ``truth`` defaults to the planes' basis vectors. With
    ``key_only`` (default) only key-frequency planes count, when the planes mark them.
    """
    planes = planes.key_only() if key_only else planes
    dec_ND = as_decoder(dec)
    truth_TD = truth_directions(planes) if truth is None else as_decoder(truth)
    n, d = dec_ND.shape
    stats = _gt_scalars(dec_ND, planes, truth_TD, min_purity)

    def rand(gen: torch.Generator) -> np.ndarray:
        return np.array(
            list(_gt_scalars(random_unit(n, d, gen), planes, truth_TD, min_purity).values())
        )

    draws = np.stack(
        [rand(torch.Generator().manual_seed(seed * 100003 + t)) for t in range(trials)]
    )
    report: dict[str, Any] = {}
    for i, name in enumerate(stats):
        report[name] = metric_value(
            name,
            stats[name],
            float(draws[:, i].mean()),
            baseline_std=float(draws[:, i].std(ddof=1)) if trials > 1 else 0.0,
            n_latents=(n, truth_TD.shape[0] if name == "gt_mcc" else n),
            note=f"baseline: {trials} random unit decoders of {n} latents",
        )
    pur = latent_purity(dec_ND, planes)
    report["plane_coverage_per_plane"] = plane_coverage(dec_ND, planes, min_purity).tolist()
    report["per_latent"] = {k: v.tolist() for k, v in pur.items()}
    report["allocation"] = frequency_allocation([dec_ND], planes, min_purity)
    report["plane_freq"] = torch.as_tensor(planes.freq).tolist()
    report["plane_variable"] = list(getattr(planes, "variable", []) or [])
    if codes is not None and modulus is not None:
        op = "mul" if MUL_VARIABLES[2] in report["plane_variable"] else "add"
        report.update(_activation_purity(codes, modulus, trials, seed, op))
    return report


def _gt_scalars(
    dec_ND: Tensor, planes: FourierPlanes, truth_TD: Tensor, min_purity: float
) -> dict[str, float]:
    pur = latent_purity(dec_ND, planes)
    return {
        "gt_mcc": gt_mcc(dec_ND, truth_TD),
        "plane_coverage_mean": float(plane_coverage(dec_ND, planes, min_purity).mean()),
        "purity_mean": float(pur["plane_purity"].mean()),
        "freq_purity_mean": float(pur["freq_purity"].mean()),
    }


def _activation_purity(
    codes: Tensor, modulus: int, trials: int, seed: int, op: str = "add"
) -> dict[str, Any]:
    codes = torch.as_tensor(codes).detach()
    act = activation_frequency_purity(codes, modulus, op)
    alive = (codes > 0).any(dim=0).numpy()
    value = float(act["purity"][alive].mean()) if alive.any() else 0.0

    def one(gen: torch.Generator) -> float:
        shuffled = codes[torch.randperm(codes.shape[0], generator=gen)]
        pur = activation_frequency_purity(shuffled, modulus, op)["purity"]
        return float(pur[alive].mean()) if alive.any() else 0.0

    base, std = monte_carlo(one, max(2, min(trials, 4)), seed)
    mv = metric_value(
        "activation_purity_mean",
        value,
        base,
        baseline_std=std,
        baseline_kind="permuted",
        n_latents=(int(alive.sum()), int(alive.sum())),
        dead_included=False,
        note="alive latents; baseline: codes shuffled across inputs",
    )
    return {
        "activation_purity_mean": mv,
        "activation_purity": {k: v.tolist() for k, v in act.items()},
    }


def ground_truth_summary(
    dec: Any,
    planes: FourierPlanes,
    codes: Tensor | None = None,
    modulus: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """A flat dict for results tables: each scalar and ``<name>_baseline``, plus per-plane lists."""
    report = ground_truth_report(dec, planes, codes, modulus, **kwargs)
    out: dict[str, Any] = {}
    for name, val in report.items():
        if isinstance(val, MetricValue):
            out[name] = val.value
            out[f"{name}_baseline"] = val.baseline
    out["plane_coverage_baseline"] = report["plane_coverage_mean"].baseline  # results.parquet name
    out["plane_coverage_per_plane"] = report["plane_coverage_per_plane"]
    out["allocation_counts"] = report["allocation"]["counts"][0]
    out["allocation_freqs"] = report["allocation"]["freqs"]
    return out


def report_to_json(report: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of a report (MetricValues become dicts)."""
    return {k: v.to_dict() if isinstance(v, MetricValue) else v for k, v in report.items()}
