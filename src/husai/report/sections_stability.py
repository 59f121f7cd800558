"""Sections 3 (stability), 4 (the verdict) and 6 (dynamics), from the parquet tables.

Stability plots come from ``summary.parquet`` (means over seed pairs with bootstrap
CIs) and, for the random-baseline band, ``pairs.parquet``. The Goldilocks map and the
Pareto plot use the primary metric, alive-only PW-MCC, and every excess is over the
hardest random baseline (:mod:`husai.report.verdict`). Dynamics come from
``dynamics.parquet``; the crystallisation step of a group is the first snapshot at
which its excess over the hardest baseline reaches 90% of its final excess.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from husai.report import figures, verdict
from husai.report.render import Figure, Note, Para, Section, Table, fmt, fmt_param
from husai.report.store import RunView


def stability_section(store: RunView, st: float, ev: float) -> Section:
    sec = Section("3. Stability", "stability")
    s = store.summary
    if s is None or s.empty:
        return sec.add(Note(store.missing.get("summary.parquet", "summary.parquet is empty")))
    need = {"group_id", "arch", "d_sae", "hook", "sparsity", "metric", "mean", "baseline"}
    if not need <= set(s.columns):
        return sec.add(
            Note(f"summary.parquet lacks column(s) {', '.join(sorted(need - set(s.columns)))}")
        )
    s = s.copy()
    sec.subsections += [_per_arch(store, s), _by_l0(s), _goldilocks(s, ev), _pareto(s, st, ev)]
    return sec


def _per_arch(store: RunView, s: Any) -> Section:
    sub = Section("Per architecture: stability against sparsity and width", "stability-arch")
    present = [m for m in figures.STABILITY_METRICS if (s.metric == m).any()]
    absent = [m for m in figures.STABILITY_METRICS if m not in present]
    if absent:
        sub.add(Note(f"summary.parquet has no rows for metric(s) {', '.join(absent)}."))
    if not present:
        return sub
    sub.add(
        Para(
            "Points: mean over seed pairs, bars: 95% bootstrap CI resampling seeds; shaded band: range of the per-pair unit-sphere random baselines (same widths, same alive counts); dotted: their mean; dashed: the hardest random baseline (the largest of the unit-sphere, principal-subspace and activation-row baselines), where the run has it; dash-dot: the same metric between untrained (initial) SAEs."
        )
    )
    data = s[s.metric.isin(present)]
    for (arch, hook, ckpt), grp in data.groupby(["arch", "hook", "checkpoint"], sort=True):
        name = f"stability_{arch}_{hook}_{ckpt}".replace(".", "_").replace("/", "_")
        title = f"{arch} @ {hook} [{ckpt}]"
        sub.add(
            Figure(name, figures.stability_grid(grp, store.pairs, title), f"Stability of {title}.")
        )
    extra = [m for m in EXTRA_METRICS if (s.metric == m).any()]
    sub.add(_metric_table(s[s.metric.isin(present + extra)], present + extra))
    return sub


EXTRA_METRICS = ("mmcs", "subspace_overlap")


def _metric_table(data: Any, metrics: list[str]) -> Table:
    idx = data.set_index(["group_id", "metric"])
    mean, base = idx["mean"].to_dict(), idx["baseline"].to_dict()
    hard = idx["baseline_hardest"].to_dict() if "baseline_hardest" in idx else {}
    meta = data.drop_duplicates("group_id").set_index("group_id")
    rows = []
    for gid, r in meta.sort_values(["hook", "checkpoint", "arch", "d_sae", "sparsity"]).iterrows():
        cells = [
            f"{fmt(mean.get((gid, m)))} ({fmt(base.get((gid, m)))} / {fmt(hard.get((gid, m)))})"
            for m in metrics
        ]
        ev, l0 = r.get("explained_variance_mean"), r.get("l0_mean")
        rows.append([verdict.label(SimpleNamespace(**r.to_dict())), *cells, ev, l0])
    cols = ["configuration", *(f"{m} (unit / hardest)" for m in metrics), "EV", "L0"]
    cap = (
        "Mean over seed pairs; in brackets the unit-sphere random baseline and the hardest "
        "random baseline (largest of unit sphere, principal subspace, activation rows; n/a "
        "where the metric or the run has none) (summary.parquet)."
    )
    return Table(cols, rows, cap)


def _by_l0(s: Any) -> Section:
    sub = Section("All architectures against measured L0", "stability-l0")
    df, why = verdict.primary_table(s)
    if df is None or df.l0_mean.isna().all():
        return sub.add(Note(f"No L0 comparison: {why or 'summary.parquet has no l0_mean'}."))
    for (hook, ckpt), g in df.groupby(["hook", "checkpoint"], sort=True):
        name = f"l0_{hook}_{ckpt}".replace(".", "_").replace("/", "_")
        cap = f"Alive-only PW-MCC against the measured mean L0, every architecture, {hook} [{ckpt}]; bars: 95% CI, crosses: hardest random baselines."
        sub.add(Figure(name, figures.stability_vs_l0(g), cap))
    return sub


def _goldilocks(s: Any, ev: float) -> Section:
    sub = Section("The Goldilocks map", "goldilocks")
    df, why = verdict.primary_table(s)
    if df is None:
        return sub.add(Note(f"No Goldilocks map: {why}."))
    for (hook, ckpt), grp in df.groupby(["hook", "checkpoint"], sort=True):
        panels = []
        for arch, g in grp.groupby("arch", sort=True):
            widths, sps = sorted(g.d_sae.unique()), sorted(g.sparsity.unique())
            exc = np.full((len(widths), len(sps)), np.nan)
            evs = np.full_like(exc, np.nan)
            for r in g.itertuples():
                i, j = widths.index(r.d_sae), sps.index(r.sparsity)
                exc[i, j], evs[i, j] = r.excess, r.explained_variance_mean
            panels.append((f"{arch} ({g.sparsity_name.iloc[0]})", widths, sps, exc, evs))
        name = f"goldilocks_{hook}_{ckpt}".replace(".", "_").replace("/", "_")
        cap = f"{hook} [{ckpt}]: alive-only PW-MCC minus its hardest random baseline per (width, sparsity); each cell also gives explained variance, contours show EV (bold: EV = {fmt(ev)})."
        sub.add(Figure(name, figures.goldilocks(panels, "alive PW-MCC", ev), cap))
    return sub


def _pareto(s: Any, st: float, ev: float) -> Section:
    sub = Section("Pareto: stability against explained variance", "pareto")
    df, why = verdict.primary_table(s)
    if df is None:
        return sub.add(Note(f"No Pareto plot: {why}."))
    ids = verdict.pareto_ids(df)
    cap = f"Each point is one configuration (mean over seeds); colour: architecture, marker: (hook, checkpoint); ringed and joined: the Pareto frontier of each (hook, checkpoint), one line style each (legend); green lines: thresholds PW-MCC {fmt(st)}, EV {fmt(ev)}."
    return sub.add(Figure("pareto", figures.pareto(df, ids, st, ev), cap))


def verdict_section(store: RunView, st: float, ev: float) -> tuple[Section, Any]:
    sec = Section("4. The verdict", "verdict")
    v = verdict.verdict(store.summary, st, ev)
    if v is None:
        _, why = verdict.primary_table(store.summary)
        return sec.add(Note(f"No verdict: {why}.")), None
    return sec.add(*v.blocks), v


def dynamics_section(store: RunView) -> Section:
    sec = Section("6. Dynamics", "dynamics")
    d = store.dynamics
    if d is None or d.empty:
        why = store.missing.get("dynamics.parquet", "dynamics.parquet has no rows")
        return sec.add(Note(f"No dynamics snapshots in this run: {why}."))
    need = {"arch", "d_sae", "hook", "sparsity", "step", "metric", "value"}
    if not need <= set(d.columns):
        return sec.add(
            Note(f"dynamics.parquet lacks column(s) {', '.join(sorted(need - set(d.columns)))}.")
        )
    metric = "pw_mcc_alive" if (d.metric == "pw_mcc_alive").any() else str(d.metric.iloc[0])
    d = d[d.metric == metric]
    hardest = "baseline_hardest" in d and "baseline" in d
    if hardest:  # judge against the hardest random baseline, as the verdict does
        d = d.assign(baseline=d.baseline_hardest.fillna(d.baseline))
    label = figures.METRIC_LABEL.get(metric, metric)
    sec.add(
        Para(
            f"Cross-seed {label} at each decoder snapshot during SAE training; dotted lines are the hardest random baselines (unit-sphere where the run has no data-aware ones)."
        )
    )
    for (hook, ckpt), grp in d.groupby(["hook", "checkpoint"], sort=True):
        panels = [(f"{arch} @ {hook} [{ckpt}]", g) for arch, g in grp.groupby("arch", sort=True)]
        name = f"dynamics_{hook}_{ckpt}".replace(".", "_").replace("/", "_")
        cap = f"{label} against SAE training step, {hook} [{ckpt}]."
        sec.add(Figure(name, figures.dynamics(panels, label), cap))
    if "baseline" in d:
        sec.add(_crystallisation_table(d, "hardest" if hardest else "unit-sphere"))
    else:
        sec.add(
            Note(
                "dynamics.parquet has no 'baseline' column, so crystallisation steps are not computed."
            )
        )
    return sec


def _crystallisation_table(d: Any, base: str) -> Table:
    keys = ["hook", "checkpoint", "arch", "d_sae", "sparsity"]
    rows = []
    for (hook, ckpt, arch, width, sp), g in d.groupby(keys, sort=True):
        g = g.groupby("step")[["value", "baseline"]].mean().sort_index()
        exc = (g.value - g.baseline).to_numpy()
        final = exc[-1]
        step = "never above baseline"
        if final > 0:
            step = int(g.index[np.argmax(exc >= 0.9 * final)])
        rows.append(
            [
                hook,
                ckpt,
                arch,
                int(width),
                fmt_param(sp),
                g.value.iloc[-1],
                final,
                step,
                int(g.index[-1]),
            ]
        )
    cols = [
        "hook",
        "checkpoint",
        "arch",
        "width",
        "sparsity",
        "final value",
        "final excess",
        "step reaching 90% of final excess",
        "last step",
    ]
    cap = f"When features crystallise, per configuration (dynamics.parquet; excess over the {base} random baseline)."
    return Table(cols, rows, cap)
