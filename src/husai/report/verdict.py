"""The verdict (section 4): which configurations are stable, judged by fixed rules.

Everything here is a rule applied to ``summary.parquet`` (one row per group and
metric; the primary metric is alive-only PW-MCC, Song et al. 2025 restricted to
latents that fire). Each sentence quotes the numbers that made it hold. Rules:

- *hardest baseline*: the largest of the random baselines a row carries: random unit
  vectors in R^d (``baseline``), random directions in the activations' 95%-variance
  principal subspace (``baseline_subspace``) and random centred activation rows
  (``baseline_acts``), each with the same (alive) latent counts
  (:mod:`husai.metrics.data_baselines`). Tables without the data-aware columns fall back
  to ``baseline`` and the text says so. ``excess`` here is the mean minus the hardest
  baseline;
- *beats baseline*: the CI lower bound exceeds the hardest baseline (if the CI is
  missing, the mean does);
- *mostly dead*: mean dead fraction > ``DEAD_MAX`` (0.5). Alive-only PW-MCC ignores dead
  latents, so such a dictionary is never called stable on it;
- *stable*: mean >= ``stability_threshold``, explained variance >= ``ev_threshold``,
  beats the hardest baseline, and not mostly dead;
- *Pareto frontier*: configurations that no other at the same (hook, checkpoint) beats
  on both stability and EV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from husai.report.render import Block, Para, Table, fmt, fmt_param

PRIMARY = "pw_mcc_alive"
ALL_LATENTS = "pw_mcc"
DEAD_MAX = 0.5
REQUIRED = ("group_id", "arch", "d_sae", "hook", "sparsity", "metric", "mean", "baseline")
REQUIRED = (*REQUIRED, "explained_variance_mean")
BASELINE_KINDS = {
    "baseline": "unit sphere",
    "baseline_subspace": "principal subspace",
    "baseline_acts": "activation rows",
}


def primary_table(summary: Any) -> tuple[Any, str | None]:
    """Rows of the primary metric with derived columns, or (None, reason)."""
    if summary is None:
        return None, "summary.parquet is not in this run"
    missing = [c for c in REQUIRED if c not in summary.columns]
    if missing:
        return None, f"summary.parquet lacks column(s) {', '.join(missing)}"
    df = summary[summary.metric == PRIMARY].copy()
    if df.empty:
        return None, f"summary.parquet has no rows for metric {PRIMARY!r}"
    for col in ("ci_lo", "ci_hi", "l0_mean", "dead_fraction_mean", *BASELINE_KINDS):
        if col not in df:
            df[col] = np.nan
    _add_hardest_kind(df)
    df["excess"] = df["mean"] - df["baseline_hardest"]
    has_ci = df.ci_lo.notna()
    hard = df.baseline_hardest
    df["beats_baseline"] = np.where(has_ci, df.ci_lo > hard, df["mean"] > hard)
    df["mostly_dead"] = df.dead_fraction_mean > DEAD_MAX
    df["mean_all"] = _all_latents(summary, df)
    df["label"] = [label(r) for r in df.itertuples()]
    return df.reset_index(drop=True), None


def _add_hardest_kind(df: Any) -> None:
    """``baseline_hardest`` (the stored one, else the max of the baselines present) and its kind."""
    cols = list(BASELINE_KINDS)
    vals = df[cols].to_numpy(dtype=float)
    stored = df["baseline_hardest"] if "baseline_hardest" in df else np.nan
    top = np.where(np.isfinite(vals), vals, -np.inf).argmax(axis=1)
    df["baseline_hardest"] = np.where(np.isfinite(stored), stored, np.nanmax(vals, axis=1))
    df["hardest_kind"] = [BASELINE_KINDS[cols[i]] for i in top]


def _all_latents(summary: Any, df: Any) -> Any:
    """All-latent PW-MCC (Song et al.) of each group, NaN where the table has none."""
    allm = summary[summary.metric == ALL_LATENTS].set_index("group_id")["mean"]
    return df.group_id.map(allm).astype(float)


def data_aware(df: Any) -> bool:
    """Whether the table carries the data-aware baselines (not only the unit sphere)."""
    return bool(df.baseline_subspace.notna().any() or df.baseline_acts.notna().any())


def stable_mask(df: Any, st: float, ev: float) -> Any:
    """The verdict's rule (module docstring): thresholds, hardest baseline, not mostly dead."""
    return (
        (df["mean"] >= st)
        & (df.explained_variance_mean >= ev)
        & df.beats_baseline.astype(bool)
        & ~df.mostly_dead.astype(bool)
    )


def rule_text(st: float, ev: float, df: Any) -> str:
    """The verdict's rule in words, naming the baselines this table has."""
    kinds = (
        "the largest of three random baselines with the same alive counts: random unit vectors "
        "in R^d, random directions in the principal subspace holding 95% of the activations' "
        "variance, and random centred activation rows"
        if data_aware(df)
        else "the random unit-vector baseline (this table has no data-aware baselines, so "
        "the bar is too easy on low-rank activations)"
    )
    return (
        f"A configuration is called stable when its alive-only PW-MCC is >= {fmt(st)}, its "
        f"explained variance is >= {fmt(ev)}, its CI lower bound exceeds the hardest random "
        f"baseline ({kinds}), and at most {DEAD_MAX:.0%} of its dictionary is dead: alive-only "
        "PW-MCC ignores dead latents, so a mostly dead dictionary is never called stable on it."
    )


def label(r: Any) -> str:
    return f"{r.arch} w={int(r.d_sae)} {r.sparsity_name}={fmt_param(r.sparsity)} @ {r.hook} [{r.checkpoint}]"


def pareto_ids(df: Any) -> set:
    """Group ids not dominated on (mean stability, explained variance) within their
    (hook, checkpoint): different hooks are different settings, not competitors."""
    ids = set()
    for _, g in df.groupby(["hook", "checkpoint"], sort=True):
        pts = g[["mean", "explained_variance_mean"]].to_numpy(dtype=float)
        for i, p in enumerate(pts):
            if not np.isfinite(p).all():
                continue
            dominated = ((pts >= p).all(axis=1) & (pts > p).any(axis=1)).any()
            if not dominated:
                ids.add(g.group_id.iloc[i])
    return ids


def config_table(df: Any, caption: str) -> Table:
    """Alive-only and all-latent PW-MCC, the hardest baseline and the dead fraction side by side."""
    cols = ["configuration", "alive PW-MCC", "95% CI", "hardest baseline", "excess"]
    cols += ["all-latent PW-MCC", "dead fraction", "EV", "L0"]
    rows = [
        [r.label, r.mean, f"[{fmt(r.ci_lo)}, {fmt(r.ci_hi)}]"]
        + [f"{fmt(r.baseline_hardest)} ({r.hardest_kind})", r.excess, r.mean_all]
        + [r.dead_fraction_mean, r.explained_variance_mean, r.l0_mean]
        for r in df.itertuples()
    ]
    return Table(cols, rows, caption)


@dataclass
class Verdict:
    passing: Any  # DataFrame of the configurations called stable
    frontier: Any  # DataFrame of the Pareto frontier
    blocks: list[Block]


def verdict(summary: Any, st: float, ev: float) -> Verdict | None:
    df, _ = primary_table(summary)
    if df is None:
        return None
    ok = df[stable_mask(df, st, ev)].sort_values("mean", ascending=False)
    front = df[df.group_id.isin(pareto_ids(df))].sort_values(
        ["hook", "checkpoint", "explained_variance_mean"]
    )
    blocks: list[Block] = [Para(rule_text(st, ev, df))]
    reach = df[(df["mean"] >= st) & (df.explained_variance_mean >= ev)]
    if len(ok):
        n_ci = int((ok.ci_lo >= st).sum())
        blocks.append(
            Para(
                f"{len(ok)} of {len(df)} configurations are stable by this rule"
                f"{_excluded(reach)}. Of these, {n_ci} also have the CI lower bound >= {fmt(st)}."
            )
        )
        blocks.append(config_table(ok, "Configurations called stable"))
    else:
        best = df.loc[df["mean"].idxmax()]
        blocks.append(
            Para(
                f"No configuration is stable by this rule (of {len(df)} configurations"
                f"{_excluded(reach)}). The most stable is {best.label} at {fmt(best['mean'])} "
                f"(hardest baseline {fmt(best.baseline_hardest)}, {best.hardest_kind}; dead "
                f"fraction {fmt(best.dead_fraction_mean)}) with EV "
                f"{fmt(best.explained_variance_mean)}. The best trade-off frontier follows."
            )
        )
    cap = (
        "Pareto frontier per (hook, checkpoint): no other configuration at that hook and "
        "checkpoint is both more stable (alive-only PW-MCC) and more faithful (EV)"
    )
    blocks.append(config_table(front, cap))
    return Verdict(ok, front, blocks)


def _excluded(reach: Any) -> str:
    """Why configurations that reach both thresholds are not called stable, if any are not."""
    if reach.empty:
        return "; none reaches both thresholds"
    beats = reach.beats_baseline.astype(bool)
    no_base = int((~beats).sum())
    dead = int((beats & reach.mostly_dead.astype(bool)).sum())
    why = []
    if no_base:
        why.append(f"{no_base} do not beat the hardest baseline")
    if dead:
        why.append(f"{dead} beat it but are mostly dead (dead fraction > {DEAD_MAX:g})")
    text = f"; {len(reach)} reach both thresholds"
    return text + (f", of which {' and '.join(why)}" if why else "")
