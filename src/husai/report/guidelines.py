"""The verdict (section 4) and practitioner guidelines (section 8), generated from the tables.

Everything here is a rule applied to ``summary.parquet`` (one row per group and
metric; the primary metric is alive-only PW-MCC, Song et al. 2025 restricted to
latents that fire) and, where present, ``results.parquet`` and the activations'
effective rank. Each sentence is emitted only when its condition holds on the data
and quotes the numbers that made it hold; there is no fixed prose that could
contradict a run. Rules:

- *beats baseline*: the CI lower bound exceeds the random baseline (if the CI is
  missing, the mean does, and the text says so);
- *reaches the target*: mean >= ``stability_threshold`` and explained variance >=
  ``ev_threshold``;
- *trend*: Spearman rank correlation of excess with sparsity (or width) over >= 3
  distinct values, stated as rising/falling only when |rho| >= 0.8;
- *Pareto frontier*: configurations that no other beats on both stability and EV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from husai.report.render import Block, Bullets, Note, Para, Table, fmt, fmt_param

PRIMARY = "pw_mcc_alive"
REQUIRED = ("group_id", "arch", "d_sae", "hook", "sparsity", "metric", "mean", "baseline")
REQUIRED = (*REQUIRED, "explained_variance_mean")


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
    for col in ("ci_lo", "ci_hi", "l0_mean", "dead_fraction_mean"):
        if col not in df:
            df[col] = np.nan
    if "checkpoint" not in df:
        df["checkpoint"] = "final"
    if "sparsity_name" not in df:
        df["sparsity_name"] = "sparsity"
    df["excess"] = df["mean"] - df["baseline"]
    has_ci = df.ci_lo.notna()
    df["beats_baseline"] = np.where(has_ci, df.ci_lo > df.baseline, df["mean"] > df.baseline)
    df["label"] = [label(r) for r in df.itertuples()]
    return df.reset_index(drop=True), None


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
    cols = ["configuration", "alive PW-MCC", "95% CI", "baseline", "excess", "EV", "L0"]
    rows = [
        [r.label, r.mean, f"[{fmt(r.ci_lo)}, {fmt(r.ci_hi)}]", r.baseline, r.excess]
        + [r.explained_variance_mean, r.l0_mean]
        for r in df.itertuples()
    ]
    return Table(cols, rows, caption)


@dataclass
class Verdict:
    passing: Any  # DataFrame of configurations reaching both thresholds
    frontier: Any  # DataFrame of the Pareto frontier
    blocks: list[Block]


def verdict(summary: Any, st: float, ev: float) -> Verdict | None:
    df, why = primary_table(summary)
    if df is None:
        return None
    ok = df[(df["mean"] >= st) & (df.explained_variance_mean >= ev)].sort_values(
        "mean", ascending=False
    )
    front = df[df.group_id.isin(pareto_ids(df))].sort_values(["hook", "explained_variance_mean"])
    blocks: list[Block] = []
    if len(ok):
        n_ci = int((ok.ci_lo >= st).sum())
        n_base = int(ok.beats_baseline.sum())
        blocks.append(
            Para(
                f"{len(ok)} of {len(df)} configurations reach alive-only PW-MCC >= {fmt(st)} "
                f"while keeping explained variance >= {fmt(ev)}. Of these, {n_ci} also have "
                f"the CI lower bound >= {fmt(st)}, and {n_base} beat their random baseline."
            )
        )
        blocks.append(config_table(ok, "Configurations reaching both thresholds"))
    else:
        best_st = df.loc[df["mean"].idxmax()]
        blocks.append(
            Para(
                f"No configuration reaches alive-only PW-MCC >= {fmt(st)} with explained "
                f"variance >= {fmt(ev)} (of {len(df)} configurations). The most stable is "
                f"{best_st.label} at {fmt(best_st['mean'])} with EV "
                f"{fmt(best_st.explained_variance_mean)}. The best trade-off frontier follows."
            )
        )
    blocks.append(
        config_table(
            front,
            "Pareto frontier per hook: no other configuration at that hook is both more stable and more faithful",
        )
    )
    return Verdict(ok, front, blocks)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of average ranks (ties share their mean rank)."""
    import pandas as pd

    if len(np.unique(x)) < 3 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def _trend(df: Any, col: str, name: str) -> str | None:
    """Direction of mean excess along ``col``, or None with fewer than 3 distinct values.

    A change smaller than the group's mean CI half-width is reported as flat.
    """
    by = df.groupby(col)["excess"].mean()
    rho = _spearman(by.index.to_numpy(dtype=float), by.to_numpy(dtype=float))
    if not np.isfinite(rho) and len(by) < 3:
        return None
    lo, hi, top = by.index.min(), by.index.max(), by.idxmax()
    ends = f"mean excess {fmt(by[lo])} at {name}={fmt_param(lo)}, {fmt(by[hi])} at {name}={fmt_param(hi)}"
    half = float(((df.ci_hi - df.ci_lo) / 2).mean())
    if np.isfinite(half) and float(by.max() - by.min()) <= half:
        return f"flat in {name}: mean excess stays within {fmt(by.min())} to {fmt(by.max())}, inside the typical CI half-width {fmt(half)}"
    if rho >= 0.8:
        return f"stability rises with {name} (Spearman rho {fmt(rho, 2)}; {ends})"
    if rho <= -0.8:
        return f"stability falls with {name} (Spearman rho {fmt(rho, 2)}; {ends})"
    peak = (
        f", peaking inside the range at {name}={fmt_param(top)} ({fmt(by[top])})"
        if lo < top < hi
        else ""
    )
    return f"no monotone trend with {name} (Spearman rho {fmt(rho, 2)}; {ends}{peak})"


def _range(values: Any) -> str:
    lo, hi = float(values.min()), float(values.max())
    return fmt_param(lo) if lo == hi else f"{fmt_param(lo)} to {fmt_param(hi)}"


def _width_vs_rank(widths: Any, rank: float | None) -> str:
    if rank is None or not np.isfinite(rank) or rank <= 0:
        return ""
    lo, hi = float(widths.min()) / rank, float(widths.max()) / rank
    span = f"{lo:.1f}x" if lo == hi else f"{lo:.1f}x to {hi:.1f}x"
    return f" ({span} the activations' effective rank {fmt(rank, 2)})"


def primary_checkpoint(df: Any) -> str:
    ckpts = list(df.checkpoint.astype(str).unique())
    return "final" if "final" in ckpts else df.checkpoint.astype(str).value_counts().index[0]


def guidelines(
    summary: Any, results: Any, ranks: dict[str, float], st: float, ev: float
) -> list[Block]:
    """Practitioner text for this run: per hook, what to use and the numbers behind it."""
    df, why = primary_table(summary)
    if df is None:
        return [Note(f"No guidelines can be generated: {why}.")]
    ckpt = primary_checkpoint(df)
    blocks: list[Block] = [
        Para(
            f"Generated by fixed rules from {len(df)} configurations in summary.parquet "
            f"(alive-only PW-MCC target {fmt(st)}, explained-variance target {fmt(ev)}, "
            f"transformer checkpoint '{ckpt}'). A configuration beats its baseline when its "
            "CI lower bound exceeds the random-dictionary baseline."
        )
    ]
    for hook in sorted(df.hook.unique()):
        sub = df[(df.hook == hook) & (df.checkpoint.astype(str) == ckpt)]
        if len(sub):
            blocks.append(Para(f"Hook {hook}:"))
            blocks.append(Bullets(_hook_items(sub, summary, results, ranks.get(hook), st, ev)))
    other = df[df.checkpoint.astype(str) != ckpt]
    if len(other):
        best = other.groupby("checkpoint")["excess"].max()
        text = ", ".join(f"'{c}' {fmt(v)}" for c, v in best.items())
        main_best = df[df.checkpoint.astype(str) == ckpt].excess.max()
        blocks.append(
            Para(
                f"Other checkpoints, best excess over baseline: {text} (vs {fmt(main_best)} at '{ckpt}')."
            )
        )
    return blocks


def _hook_items(
    sub: Any, summary: Any, results: Any, rank: float | None, st: float, ev: float
) -> list[str]:
    items = [_recommendation(sub, rank, st, ev), _arch_ranking(sub, ev)]
    for arch, g in sub.groupby("arch"):
        parts = [
            t
            for t in (
                _trend(g, "sparsity", str(g.sparsity_name.iloc[0])),
                _trend(g, "d_sae", "width"),
            )
            if t
        ]
        if not g.beats_baseline.any():
            parts.append("no configuration beats its random baseline")
        if parts:
            items.append(f"{arch}: " + "; ".join(parts) + ".")
    items += [t for t in (_dead_item(sub, summary), _gt_item(sub, results, st)) if t]
    return items


def _recommendation(sub: Any, rank: float | None, st: float, ev: float) -> str:
    passing = sub[(sub["mean"] >= st) & (sub.explained_variance_mean >= ev)]
    good = sub[sub.beats_baseline & (sub.explained_variance_mean >= ev)]
    if len(passing):
        counts = passing.groupby("arch").agg(n=("mean", "size"), best=("mean", "max"))
        arch = counts.sort_values(["n", "best"], ascending=False).index[0]
        rec = passing[passing.arch == arch]
        b = rec.loc[rec["mean"].idxmax()]
        return (
            f"Recommended: {arch}, {b.sparsity_name} {_range(rec.sparsity)}, width "
            f"{_range(rec.d_sae)}{_width_vs_rank(rec.d_sae, rank)}: {len(rec)} of its "
            f"{int((sub.arch == arch).sum())} configurations here reach both targets. "
            f"Best: {b.label}, {_numbers(b)}."
        )
    if len(good):
        b = good.loc[good.excess.idxmax()]
        archs = ", ".join(sorted(good.arch.unique()))
        rec = good[good.arch == b.arch]
        return (
            f"No configuration reaches both targets. Stability above the random baseline with "
            f"EV >= {fmt(ev)} is found for {archs}; the largest excess, {fmt(b.excess)}, is "
            f"{b.label}, {_numbers(b)}. "
            f"For {b.arch} such configurations span {b.sparsity_name} {_range(rec.sparsity)} and "
            f"width {_range(rec.d_sae)}{_width_vs_rank(rec.d_sae, rank)}."
        )
    beats = sub[sub.beats_baseline]
    if len(beats):
        b = beats.loc[beats.excess.idxmax()]
        return (
            f"No configuration keeps EV >= {fmt(ev)} while beating its random baseline; only "
            f"lower-fidelity ones do, the best being {b.label}, {_numbers(b)}."
        )
    b = sub.loc[sub.excess.idxmax()]
    return (
        f"Nothing beats its random baseline here: the largest excess is {fmt(b.excess)} "
        f"({b.label}, {_numbers(b)}). These results support no stable configuration at this "
        "hook; latents from one seed should not be expected to reappear with another."
    )


def _numbers(r: Any) -> str:
    ci = f"CI [{fmt(r.ci_lo)}, {fmt(r.ci_hi)}]" if np.isfinite(r.ci_lo) else "no CI"
    return (
        f"alive PW-MCC {fmt(r['mean'])} ({ci}; random "
        f"baseline {fmt(r.baseline)}), EV {fmt(r.explained_variance_mean)}, L0 {fmt(r.l0_mean)}"
    )


def _arch_ranking(sub: Any, ev: float) -> str:
    faithful = sub[sub.explained_variance_mean >= ev]
    pool, cond = (
        (faithful, f"among configurations with EV >= {fmt(ev)}")
        if len(faithful)
        else (sub, "(no configuration reaches the EV target)")
    )
    best = pool.groupby("arch").excess.max().sort_values(ascending=False)
    text = ", ".join(f"{a} {fmt(v)}" for a, v in best.items())
    return f"Best excess over baseline per architecture {cond}: {text}."


def _dead_item(sub: Any, summary: Any) -> str | None:
    allm = summary[(summary.metric == "pw_mcc") & summary.group_id.isin(sub.group_id)]
    if allm.empty:
        return None
    merged = sub.merge(allm[["group_id", "mean"]], on="group_id", suffixes=("", "_all"))
    diff = float((merged["mean_all"] - merged["mean"]).mean())
    return (
        f"Counting dead latents (Song et al.'s PW-MCC) changes stability by {diff:+.3f} on "
        f"average over {len(merged)} configurations; alive-only numbers are used above."
    )


def _gt_item(sub: Any, results: Any, st: float) -> str | None:
    need = {"arch", "d_sae", "hook", "sparsity", "gt_mcc", "plane_coverage_mean"}
    if results is None or not need <= set(results.columns):
        return None
    res = results[results.status == "ok"] if "status" in results else results
    keys = ["arch", "d_sae", "hook", "sparsity"]
    below = sub[sub["mean"] < st][keys].drop_duplicates()
    rows = res.merge(below, on=keys)
    if rows.empty:
        return None
    cov, gt = float(rows.plane_coverage_mean.mean()), float(rows.gt_mcc.mean())
    cov_b = (
        float(rows.plane_coverage_baseline.mean())
        if "plane_coverage_baseline" in rows
        else float("nan")
    )
    gt_b = float(rows.gt_mcc_baseline.mean()) if "gt_mcc_baseline" in rows else float("nan")
    text = (
        f"In the {len(below)} configurations below the stability target, plane coverage averages "
        f"{fmt(cov)} (baseline {fmt(cov_b)}) and GT-MCC {fmt(gt)} (baseline {fmt(gt_b)})"
    )
    if np.isfinite(cov_b) and cov - cov_b >= 0.2:
        return (
            text
            + ": their latents do cover the true Fourier planes, so much of the seed-to-seed disagreement is consistent with rotation inside those planes (see the angle panels in section 5)."
        )
    return text + "."
