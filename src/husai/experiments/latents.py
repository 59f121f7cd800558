"""Per-latent measures of a study's SAEs: each SAE directory's ``latents.parquet``.

One row per latent (schema :data:`LATENT_COLUMNS`), written by the unit into each SAE
directory and gathered by :mod:`husai.experiments.tables` into the store's
``latents.parquet``. Its measures (u: the latent's unit decoder row):

- ``stability``: the fraction of the *other* seeds' SAEs of the same configuration (same
  arch, width, sparsity, hook, checkpoint) holding a latent, dead or alive, at signed
  decoder cosine >= ``metrics.shared_tau`` (Kurochkin et al. 2026; computed by
  :mod:`husai.metrics.trust`, whose analytic random baseline goes with it);
  ``partner_cos_mean``: the best partner's signed cosine, mean over the other seeds;
- ``alive`` (fires on at least one activation row, as in ``eval.json``) and ``fire_freq``
  (share of the unit's activation rows on which its code is non-zero);
- ``ev_contribution``: the drop in explained variance when the latent's term ``c_s W_dec[s]``
  is removed from every reconstruction, the other codes unchanged (no re-encoding):
  ``sum_r (||e_r + c_rs d_s||^2 - ||e_r||^2) / sum_r ||x_r - mean(x)||^2`` with
  ``e_r = x_r - xhat_r``. Exactly 0 for a dead latent; negative when the term overshoots;
  the contributions do not sum to the EV (cross terms);
- ``plane_purity``/``plane`` and ``freq_purity``/``freq``
  (:func:`husai.metrics.ground_truth.latent_purity` over the key-frequency planes; ``plane``
  indexes them, ``plane_freq`` and ``plane_variable`` name it): null without planes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from husai.metrics.ground_truth import latent_purity
from husai.metrics.matching import unit_rows
from husai.metrics.trust import best_partners, stability

LATENTS_FILE = "latents.parquet"
"""Each SAE directory's per-latent table; the store root's gathers them all."""

LATENT_COLUMNS = {
    "unit_id": "string",
    "group_id": "string",
    "sae_id": "string",
    "arch": "string",
    "d_sae": "int64",
    "d_in": "int64",
    "hook": "string",
    "checkpoint": "string",
    "sparsity_name": "string",
    "sparsity": "float64",
    "seed": "int64",
    "latent": "int64",
    "alive": "bool",
    "stability": "float64",
    "n_others": "int64",
    "tau": "float64",
    "partner_cos_mean": "float64",
    "fire_freq": "float64",
    "ev_contribution": "float64",
    "plane_purity": "Float64",
    "plane": "Int64",
    "plane_freq": "Int64",
    "plane_variable": "string",
    "freq_purity": "Float64",
    "freq": "Int64",
}
"""The schema of latents.parquet (column -> pandas dtype; nullable dtypes hold nulls)."""


def latent_columns(
    sae: Any,
    acts_RD: Float[Tensor, "R D"],
    codes_RS: Float[Tensor, "R S"],
    alive_S: Tensor,
    planes: Any | None,
    sst: float | None = None,
) -> dict[str, np.ndarray]:
    """One SAE's own per-latent columns (module docstring): alive, firing frequency, EV
    contribution and, with ``planes``, purity over the key-frequency planes (else NaN / -1)."""
    n = codes_RS.shape[1]
    out: dict[str, np.ndarray] = {
        "alive": alive_S.bool().numpy(),
        "fire_freq": (codes_RS != 0).sum(0).numpy() / codes_RS.shape[0],
        "ev_contribution": ev_contributions(sae, acts_RD, codes_RS, sst=sst),
        "plane_purity": np.full(n, np.nan),
        "plane": np.full(n, -1),
        "plane_freq": np.full(n, -1),
        "plane_variable": np.full(n, None, dtype=object),
        "freq_purity": np.full(n, np.nan),
        "freq": np.full(n, -1),
    }
    if planes is None:
        return out
    key = planes.key_only()
    pur = latent_purity(sae.W_dec, key)
    plane = pur["plane"]
    has, safe = plane >= 0, np.maximum(plane, 0)
    out |= {k: pur[k] for k in ("plane_purity", "plane", "freq_purity", "freq")}
    out["plane_freq"] = np.where(has, torch.as_tensor(key.freq).long().numpy()[safe], -1)
    out["plane_variable"] = np.where(has, np.asarray(key.variable, dtype=object)[safe], None)
    return out


@torch.no_grad()
def ev_contributions(
    sae: Any,
    acts_RD: Float[Tensor, "R D"],
    codes_RS: Float[Tensor, "R S"],
    batch: int = 4096,
    sst: float | None = None,
) -> np.ndarray:
    """Per latent: the drop in explained variance when its term is removed from every
    reconstruction, other codes unchanged (module docstring). ``sae.decode`` must be
    ``codes @ W_dec + b_dec`` on a ``[B, S]`` batch (a saved SAE, ``LoadedSAE``); ``sst``:
    :func:`total_sum_of_squares` of ``acts_RD``, computed here when not given."""
    x_RD = acts_RD.detach().float()
    dec_SD = sae.W_dec.detach().float()
    norm2_S = dec_SD.pow(2).sum(1).double()
    sst = total_sum_of_squares(x_RD) if sst is None else sst
    dsse_S = torch.zeros(dec_SD.shape[0], dtype=torch.float64)
    for i in range(0, len(x_RD), batch):
        c_BS = codes_RS[i : i + batch].float()
        err_BD = x_RD[i : i + batch] - sae.decode(c_BS)
        c64_BS = c_BS.double()
        dsse_S += 2.0 * (c64_BS * (err_BD @ dec_SD.T).double()).sum(0)
        dsse_S += c64_BS.pow(2).sum(0) * norm2_S
    return (dsse_S / sst).numpy()


def total_sum_of_squares(acts_RD: Float[Tensor, "R D"]) -> float:
    """``sum_r ||x_r - mean(x)||^2`` in float64: the denominator of explained variance."""
    x64_RD = acts_RD.detach().double()
    return float((x64_RD - x64_RD.mean(0)).pow(2).sum())


def cross_seed_columns(
    decoders: list[Float[Tensor, "S D"]], tau: float
) -> list[dict[str, np.ndarray]]:
    """Per SAE of one configuration (one decoder per seed): each latent's ``stability`` and
    ``partner_cos_mean`` over the other seeds (:mod:`husai.metrics.trust`); NaN for one seed."""
    units = [unit_rows(d) for d in decoders]
    if len(units) < 2:
        nan = [np.full(len(u), np.nan) for u in units]
        return [{"stability": x, "partner_cos_mean": x.copy()} for x in nan]
    _, cos = best_partners(units)
    return [
        {
            "stability": stability(c_SN, tau),
            "partner_cos_mean": np.nanmean(c_SN.double().numpy(), axis=1),
        }
        for c_SN in cos
    ]


def latent_frame(head: dict[str, Any], cols: dict[str, np.ndarray]) -> Any:
    """latents.parquet rows of one SAE: the constant ``head`` columns, then ``cols``; -1 plane
    or frequency indices and NaN purities become nulls."""
    import pandas as pd

    n = len(cols["alive"])
    data = {}
    for name, dtype in LATENT_COLUMNS.items():
        v = head[name] if name in head else np.arange(n) if name == "latent" else cols[name]
        v = np.full(n, v, dtype=object if isinstance(v, str) else None) if np.ndim(v) == 0 else v
        if name in ("plane", "plane_freq", "freq"):
            v = np.where(v >= 0, v, None)
        data[name] = pd.array(v, dtype=dtype)
    return pd.DataFrame(data)
