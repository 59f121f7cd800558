"""Aggregate finished units into the study's tables (parquet), deterministically.

- ``results.parquet``: one row per SAE (config columns + evaluation + ground truth).
- ``pairs.parquet``: one row per seed pair and metric, with its baselines.
- ``summary.parquet``: one row per group (arch, width, hook, checkpoint, sparsity) and
  metric: mean over pairs, a bootstrap CI that resamples seeds, baselines, excess and ratio.
  ``baseline`` is the unit-sphere random baseline and ``excess``/``ratio`` refer to it (as
  before); ``baseline_subspace`` and ``baseline_acts`` are the data-aware baselines
  (:mod:`husai.metrics.data_baselines`), ``baseline_hardest`` the per-pair largest random
  baseline averaged over pairs, and ``excess_hardest = mean - baseline_hardest`` is what
  verdicts use. Tables from before the data-aware baselines get them as NaN, and
  ``baseline_hardest = baseline``.
- ``dynamics.parquet``: cross-seed stability at each training snapshot.
- ``latents.parquet``: one row per latent of every SAE, gathered from the SAE
  directories' ``latents.parquet`` (schema and definitions: :mod:`husai.experiments.latents`);
  units written before it existed have none, and are left out (logged). ``summary``
  then gains, per group, per-feature stability over the group's *alive* latents beside
  its analytic random baseline (:func:`husai.metrics.trust.random_stability`: decoders of
  ``d_sae`` independent uniformly random unit vectors in R^d_in per seed, the same
  partner pool as the measured value, which counts dead partners too):
  ``latent_stability_mean``/``_median``, ``latent_stable_half`` (share of latents stable
  in at least half of the other seeds), ``latent_stable_all`` (in all of them), each with
  ``<name>_baseline``; ``latent_stability_mean_all`` (dead latents included),
  ``latent_stability_n_alive`` and ``latent_stability_tau``.

Rows are sorted and the bootstrap is seeded, so the same units give the same bits.
Timing lives only in ``unit.json``, never in the tables.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from husai import layout
from husai.experiments.latents import LATENT_COLUMNS, LATENTS_FILE
from husai.io import atomic_write_frame
from husai.metrics.bootstrap import seed_bootstrap_ci
from husai.metrics.trust import random_stability
from husai.schema import (
    BASELINE_COLUMNS,
    DYNAMICS_COLUMNS,
    GROUP_COLUMNS,
    PAIR_COLUMNS,
    RESULT_HEAD,
    SUMMARY_HEAD,
    conform,
    ordered,
)

log = logging.getLogger(__name__)

GROUP_COLS = list(GROUP_COLUMNS[1:])
"""A group's configuration columns (its ``group_id`` aside)."""


def build_tables(
    records: list[dict[str, Any]],
    out_dir: Path,
    bootstrap: int = 1000,
    seed: int = 0,
    data_ranks: dict[tuple[str, str], int] | None = None,
) -> dict[str, Any]:
    """Write the study's tables from the units' records. ``data_ranks``: (checkpoint, hook) ->
    the rank of the activations' principal subspace (:func:`husai.metrics.data_baselines.data_rank`),
    for the per-feature stability's subspace baseline; without it that baseline is left out."""
    import pandas as pd

    results = pd.DataFrame(_result_rows(records))
    pairs = pd.DataFrame([row for r in records if r["status"] == "ok" for row in r["pairs"]])
    dynamics = pd.DataFrame([row for r in records if r["status"] == "ok" for row in r["dynamics"]])
    if not results.empty:
        results = results.sort_values(["unit_id", "sae_id"], kind="stable").reset_index(drop=True)
    if not pairs.empty:
        pairs = pairs.sort_values(
            ["group_id", "metric", "seed_a", "seed_b"], kind="stable"
        ).reset_index(drop=True)
    if not dynamics.empty:
        dynamics = dynamics.sort_values(["group_id", "metric", "step"], kind="stable").reset_index(
            drop=True
        )
    heads = {"results": RESULT_HEAD, "pairs": PAIR_COLUMNS, "dynamics": DYNAMICS_COLUMNS}
    tables = {"results": results, "pairs": pairs, "dynamics": dynamics}
    tables = {name: conform(name, ordered(df, heads[name])) for name, df in tables.items()}
    latents = gather_latents(records, out_dir)
    tables["summary"] = ordered(
        summarise(tables["pairs"], tables["results"], bootstrap, seed, latents, data_ranks),
        SUMMARY_HEAD,
    )
    tables[layout.LATENTS] = latents
    for name, df in tables.items():
        atomic_write_frame(layout.table_path(out_dir, name), df)
    return tables


def _result_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        unit = rec["unit"]
        if rec["status"] != "ok":
            rows.append(
                {
                    "unit_id": rec["unit_id"],
                    "sae_id": "",
                    "status": rec["status"],
                    "error": rec["error"],
                    "arch": unit["arch"],
                    "d_sae": unit["d_sae"],
                    "hook": unit["hook"],
                    "checkpoint": unit["checkpoint"],
                }
            )
            continue
        for sae in rec["saes"]:
            row = {"unit_id": rec["unit_id"], "status": "ok", "error": None}
            row.update({k: v for k, v in sae.items() if not isinstance(v, (dict, list))})
            row.update(
                {k: v for k, v in sae.get("eval", {}).items() if not isinstance(v, (dict, list))}
            )
            row.update(
                {k: v for k, v in sae.get("gt", {}).items() if not isinstance(v, (dict, list))}
            )
            rows.append(row)
    return rows


def gather_latents(records: list[dict[str, Any]], root: Path) -> Any:
    """Every finished SAE's latents.parquet under ``root``, sorted by unit, SAE and latent."""
    import pandas as pd

    frames, lacking = [], 0
    for rec in records:
        if rec["status"] != "ok":
            continue
        for sae in rec["saes"]:
            path = layout.sae_dir(root, rec["unit_id"], sae["sae_id"]) / LATENTS_FILE
            if path.is_file():
                frames.append(pd.read_parquet(path))
            else:
                lacking += 1
    if lacking:
        log.warning("%d SAE(s) have no %s (written by an older husai)", lacking, LATENTS_FILE)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in LATENT_COLUMNS.items()})
    out = pd.concat(frames, ignore_index=True).astype(LATENT_COLUMNS)
    return out.sort_values(["unit_id", "sae_id", "latent"], kind="stable").reset_index(drop=True)


def latent_stability_columns(
    latents: Any, data_ranks: dict[tuple[str, str], int] | None = None
) -> dict[str, dict[str, float]]:
    """Per group_id: per-feature stability of its alive latents beside two analytic random
    baselines (:func:`husai.metrics.trust.random_stability`): decoders of independent uniformly
    random unit vectors in R^d_in (``<stat>_baseline``) and in the activations' principal
    subspace of rank r (``<stat>_baseline_subspace``, cosines distributed as in R^r; the
    harder of the two, since r <= d_in; present when ``data_ranks`` gives r)."""
    out: dict[str, dict[str, float]] = {}
    if latents is None or latents.empty:
        return out
    for gid, df in latents.groupby("group_id", sort=True):
        first = df.iloc[0]
        n_others = int(first["n_others"])
        stab = df.loc[df["alive"].to_numpy(bool), "stability"].to_numpy(np.float64)
        cols = {
            "latent_stability_mean_all": float(df["stability"].mean()),
            "latent_stability_n_alive": len(stab),
            "latent_stability_tau": float(first["tau"]),
        }
        if n_others < 1 or not len(stab):
            out[str(gid)] = cols
            continue
        sizes, tau = [int(first["d_sae"])] * (n_others + 1), float(first["tau"])
        sphere = _stability_baselines(random_stability(sizes, int(first["d_in"]), tau), "")
        for name, value in (
            ("latent_stability_mean", stab.mean()),
            ("latent_stability_median", np.median(stab)),
            ("latent_stable_half", (stab >= 0.5).mean()),
            ("latent_stable_all", (stab >= 1.0).mean()),
        ):
            cols |= {name: float(value), f"{name}_baseline": sphere[f"{name}_baseline"]}
        rank = (data_ranks or {}).get((str(first["checkpoint"]), str(first["hook"])))
        if rank:
            cols |= _stability_baselines(random_stability(sizes, rank, tau), "_subspace")
            cols["latent_stability_data_rank"] = int(rank)
        out[str(gid)] = cols
    return out


def _stability_baselines(dist: np.ndarray, suffix: str) -> dict[str, float]:
    """The four per-feature statistics of a stability distribution over k / n_others."""
    levels = np.arange(len(dist)) / (len(dist) - 1)
    median = levels[int(np.argmax(np.cumsum(dist) >= 0.5 - 1e-12))]
    return {
        f"latent_stability_mean_baseline{suffix}": float(dist @ levels),
        f"latent_stability_median_baseline{suffix}": float(median),
        f"latent_stable_half_baseline{suffix}": float(dist[levels >= 0.5].sum()),
        f"latent_stable_all_baseline{suffix}": float(dist[-1]),
    }


def summarise(
    pairs: Any,
    results: Any,
    bootstrap: int,
    seed: int,
    latents: Any = None,
    data_ranks: dict[tuple[str, str], int] | None = None,
) -> Any:
    import pandas as pd

    if pairs.empty:
        return pd.DataFrame()
    per_feature = latent_stability_columns(latents, data_ranks)
    rows = []
    for (gid, metric), df in pairs.groupby(["group_id", "metric"], sort=True):
        vals = df["value"].to_numpy(dtype=np.float64)
        lo, hi = seed_bootstrap_ci(vals, df["seed_a"], df["seed_b"], bootstrap, seed)
        first = df.iloc[0]
        base = float(df["baseline"].mean())
        row = {
            "group_id": gid,
            "metric": metric,
            **{c: first[c] for c in GROUP_COLS},
            "mean": float(vals.mean()),
            "ci_lo": lo,
            "ci_hi": hi,
            "baseline": base,
            "baseline_init": _col_mean(df, "baseline_init"),
            "excess": float(vals.mean()) - base,
            "ratio": float(vals.mean()) / base if base else float("nan"),
            "n_pairs": len(vals),
            "dead_included": bool(first.get("dead_included", False)),
        }
        row.update(_hardest_cols(df, float(vals.mean())))
        row.update(_group_eval(results, first))
        row.update(per_feature.get(str(gid), {}))
        rows.append(row)
    return pd.DataFrame(rows)


def _col_mean(df: Any, col: str) -> float:
    return float(df[col].mean()) if col in df else float("nan")


def _hardest_cols(df: Any, mean: float) -> dict[str, float]:
    """Data-aware baselines and the hardest one, means over the group's pairs."""
    per_pair = np.fmax.reduce(
        [df[c].to_numpy(dtype=np.float64) for c in BASELINE_COLUMNS if c in df]
    )
    hard = float(np.mean(per_pair))
    return {
        "baseline_subspace": _col_mean(df, "baseline_subspace"),
        "baseline_acts": _col_mean(df, "baseline_acts"),
        "baseline_hardest": hard,
        "excess_hardest": mean - hard,
    }


def _group_eval(results: Any, key: Any) -> dict[str, float]:
    if results.empty or "sparsity" not in results:
        return {}
    sel = results[
        (results["status"] == "ok")
        & np.logical_and.reduce([results[c] == key[c] for c in GROUP_COLS])
    ]
    out = {}
    for col in (
        "explained_variance",
        "l0",
        "dead_fraction",
        "loss_recovered",
        "gt_mcc",
        "plane_coverage_mean",
        "plane_coverage_weighted",
    ):
        if col in sel:
            out[f"{col}_mean"] = float(sel[col].mean()) if len(sel) else float("nan")
    return out
