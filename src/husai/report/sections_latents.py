"""Per-feature stability of every latent (Kurochkin et al. 2026), from latents.parquet.

A latent's stability is the share of the other seeds' SAEs of its configuration that
hold a latent at decoder cosine >= tau (definitions: :mod:`husai.experiments.latents`). The
section shows, per configuration, its distribution over the alive latents beside the
harder analytic random baseline, random directions in the activations' principal subspace
(``summary.parquet``'s ``latent_stability_*_baseline_subspace`` columns, built by
:mod:`husai.experiments.tables`; the unit-sphere one for tables without them), then how it relates to the latent's firing frequency,
explained-variance contribution and plane purity: Spearman rho over the alive latents of
each configuration, and pooled two ways, each with its n.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np

from husai import layout
from husai.report import figures, verdict
from husai.report.render import Figure, Note, Para, Section, Table, fmt
from husai.report.store import RunView

COVARIATES = (
    ("fire_freq", "firing frequency"),
    ("ev_contribution", "EV contribution"),
    ("plane_purity", "plane purity"),
)
KEYS = ["hook", "checkpoint", "arch", "d_sae", "sparsity"]
STATS = (
    ("latent_stability_mean", "mean"),
    ("latent_stability_median", "median"),
    ("latent_stable_half", "stable in >= half"),
    ("latent_stable_all", "stable in all"),
)


def latents_section(store: RunView) -> Section:
    """Distribution of per-feature stability per configuration, and what it goes with."""
    sec = Section("Per-feature stability", "latents")
    lat, why = _read(store)
    if lat is None:
        return sec.add(Note(why))
    alive = lat[lat["alive"].to_numpy(bool)]
    tau = float(lat["tau"].iloc[0])
    seeds = int(lat["n_others"].max()) + 1
    sec.add(
        Para(
            f"Per-feature stability (Kurochkin et al. 2026) of every latent: the share of the "
            f"other seeds' SAEs of the same configuration that hold a latent at decoder cosine "
            f">= {fmt(tau, 2)} (signed; partners may be dead), here over {len(alive):,} alive "
            f"latents of {len(lat):,} ({seeds} seeds per configuration). {_random_words(store.summary)}"
        )
    )
    sec.add(_distribution_table(store.summary, lat))
    for (hook, ckpt), grp in alive.groupby(["hook", "checkpoint"], sort=True):
        name = f"latent_stability_{hook}_{ckpt}".replace(".", "_").replace("/", "_")
        cap = (
            f"{hook} [{ckpt}]: share of each configuration's alive latents at each stability "
            f"level (colours, stacked; x labels: arch, width, sparsity value); dots: mean "
            f"stability; grey crosses: its random baseline (both read on the same 0-1 axis)."
        )
        sec.add(Figure(name, _distribution_figure(grp, store.summary), cap))
    sec.add(*_relations(alive))
    return sec


def _read(store: RunView) -> tuple[Any, str]:
    import pandas as pd

    path = layout.table_path(store.root, layout.LATENTS)
    if not path.is_file():
        return (
            None,
            f"{path.name} is not in this run (tables built before per-latent stability existed).",
        )
    try:
        lat = pd.read_parquet(path)
    except Exception as err:  # a corrupt table is reported, not raised
        return None, f"{path.name} could not be read ({err.__class__.__name__})."
    need = {"group_id", "alive", "stability", "n_others", "tau", *KEYS}
    if not need <= set(lat.columns):
        return None, f"{path.name} lacks column(s) {', '.join(sorted(need - set(lat.columns)))}."
    if lat.empty:
        return None, f"{path.name} has no rows (no finished unit wrote one)."
    return lat, ""


SUBSPACE = "_subspace"


def _suffix(summary: Any) -> str:
    """``_subspace`` when the summary has the subspace baseline, else "" (unit sphere)."""
    col = f"latent_stability_mean_baseline{SUBSPACE}"
    has = summary is not None and col in summary and bool(summary[col].notna().any())
    return SUBSPACE if has else ""


def _random_words(summary: Any) -> str:
    if _suffix(summary):
        return (
            "'Random' is the analytic value for decoders of independent uniformly random unit "
            "vectors inside the activations' principal subspace (the rank r holding 95% of their "
            "variance, cosines distributed as in R^r): the harder of two analytic baselines; the "
            "unit-sphere one (R^d_in) is in summary.parquet."
        )
    return (
        "'Random' is the analytic value for decoders of independent uniformly random unit "
        "vectors with the same width and input dimension (a weak, unit-sphere baseline: these "
        "tables were built without the subspace one)."
    )


def _dict_label(r: dict[str, Any]) -> str:
    return verdict.label(SimpleNamespace(**r))


def _group_meta(lat: Any) -> Any:
    """One row per group: its configuration, latent count and alive count."""
    g = lat.groupby("group_id", sort=True)
    meta = g[[*KEYS, "sparsity_name"]].first()
    meta["latents"] = g.size()
    meta["alive_n"] = g["alive"].sum()
    meta["seeds"] = g["seed"].nunique()
    return meta.sort_values(KEYS, kind="stable")


def _distribution_table(summary: Any, lat: Any) -> Table | Note:
    if summary is None or "latent_stability_mean" not in getattr(summary, "columns", []):
        return Note(
            "summary.parquet has no per-feature stability columns (tables built before them)."
        )
    per = summary.drop_duplicates("group_id").set_index("group_id")
    rows, suffix = [], _suffix(summary)
    for gid, r in _group_meta(lat).iterrows():
        s = per.loc[gid] if gid in per.index else {}
        cells = [f"{fmt(s.get(c))} ({fmt(s.get(f'{c}_baseline{suffix}'))})" for c, _ in STATS]
        rows.append(
            [
                _dict_label(r.to_dict()),
                int(r.seeds),
                f"{int(r.alive_n)} / {int(r.latents)}",
                *cells,
                s.get("latent_stability_mean_all"),
            ]
        )
    cols = [
        "configuration",
        "seeds",
        "alive / latents",
        *(f"{label} (random)" for _, label in STATS),
        "mean, dead included",
    ]
    cap = (
        "Per-feature stability over each configuration's alive latents: mean, median, share "
        "stable in at least half of the other seeds and in all of them; in brackets the "
        f"analytic random baseline ({'principal subspace' if suffix else 'unit sphere'}; "
        "summary.parquet, from latents.parquet)."
    )
    return Table(cols, rows, cap)


def _distribution_figure(alive: Any, summary: Any) -> bytes:
    """Stacked bars: per configuration, the share of alive latents at each stability level."""
    meta = _group_meta(alive)
    levels = np.unique(np.round(alive["stability"].to_numpy(np.float64), 9))
    shares = np.zeros((len(meta), len(levels)))
    for i, gid in enumerate(meta.index):
        stab = np.round(alive.loc[alive.group_id == gid, "stability"].to_numpy(np.float64), 9)
        shares[i] = [(stab == v).mean() for v in levels]
    means = alive.groupby("group_id")["stability"].mean().reindex(meta.index).to_numpy()
    base = np.full(len(meta), np.nan)
    col = f"latent_stability_mean_baseline{_suffix(summary)}"
    if summary is not None and col in summary:
        per = summary.drop_duplicates("group_id").set_index("group_id")
        base = per[col].reindex(meta.index).to_numpy(np.float64)
    from matplotlib import colormaps
    from matplotlib.figure import Figure as MplFigure

    n = len(meta)
    w, h = min(16.0, 4.0 + 0.3 * n), 4.6
    fig = MplFigure(figsize=(w, h), dpi=figures.DPI)
    a, x = fig.subplots(), np.arange(n)
    fig.subplots_adjust(left=0.8 / w, right=1 - 0.2 / w, bottom=1.7 / h, top=1 - 0.7 / h)
    bottom = np.zeros(n)
    cmap = colormaps["RdYlGn"]
    for j, v in enumerate(levels):
        a.bar(x, shares[:, j], 0.8, bottom=bottom, color=cmap(float(v)), label=f"{v:.2g}")
        bottom += shares[:, j]
    a.scatter(x, means, s=22, color="black", edgecolors="white", zorder=3, label="mean")
    a.scatter(x, base, s=30, marker="x", color="0.45", zorder=3, label="random mean")
    labels = [f"{r.arch} w={int(r.d_sae)} {r.sparsity:g}" for r in meta.itertuples()]
    a.set_xticks(x, labels, rotation=90, fontsize=7)
    a.set(ylabel="share of alive latents", ylim=(0, 1.02), xlim=(-0.6, n - 0.4))
    a.legend(
        title="stability level",
        fontsize=7,
        title_fontsize=7,
        ncol=len(levels) + 2,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.01),
        frameon=False,
    )
    return figures.to_png(fig)


def _relations(alive: Any) -> list:
    """Spearman rho of stability with each covariate: per configuration and pooled."""
    present = [(c, label) for c, label in COVARIATES if c in alive and alive[c].notna().any()]
    if not present:
        return [Note("latents.parquet has no firing frequency, EV contribution or purity.")]
    meta = _group_meta(alive)
    rows = []
    for gid, r in meta.iterrows():
        g = alive[alive.group_id == gid]
        rows.append(
            [_dict_label(r.to_dict()), *(_rho_cell(g["stability"], g[c]) for c, _ in present)]
        )
    pooled = [_rho_cell(alive["stability"], alive[c]) for c, _ in present]
    within = [_within_cell(alive, c) for c, _ in present]
    rows += [["pooled, configurations mixed", *pooled], ["pooled, ranks within each", *within]]
    cols = ["configuration", *(f"rho with {label} (n)" for _, label in present)]
    cap = (
        "Spearman rho between a latent's per-feature stability and each measure, over alive "
        "latents (n in brackets; n/a where either is constant or n < 3). 'Ranks within each': "
        "both ranked inside each configuration, then correlated over all latents, so "
        "differences between configurations do not count. Plane purity is null without "
        "ground-truth planes."
    )
    counts = []
    for c, label in present:
        rhos = [_rho(g["stability"], g[c])[0] for _, g in alive.groupby("group_id")]
        ok = [x for x in rhos if not math.isnan(x)]
        counts.append(f"{label}: rho > 0 in {sum(x > 0 for x in ok)} of {len(ok)} configurations")
    return [Table(cols, rows, cap), Para("; ".join(counts) + ".")]


def _rho(x: Any, y: Any) -> tuple[float, int]:
    from scipy.stats import spearmanr

    xy = np.column_stack([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    xy = xy[np.isfinite(xy).all(axis=1)]
    n = len(xy)
    if n < 3 or np.ptp(xy[:, 0]) == 0 or np.ptp(xy[:, 1]) == 0:
        return math.nan, n
    return float(spearmanr(xy[:, 0], xy[:, 1]).statistic), n


def _rho_cell(x: Any, y: Any) -> str:
    rho, n = _rho(x, y)
    return f"{fmt(rho)} ({n:,})"


def _within_cell(alive: Any, col: str) -> str:
    """Pearson correlation of stability and ``col`` after each is turned into percentile
    ranks (average ties) inside its configuration: a Spearman rho free of between-group
    differences."""
    ok = alive[alive[col].notna()]
    by = ok.groupby("group_id")
    x = by["stability"].rank(pct=True).to_numpy(np.float64)
    y = by[col].rank(pct=True).to_numpy(np.float64)
    if len(x) < 3:
        return f"n/a ({len(x):,})"
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return f"{fmt(float((x * y).sum()) / den if den > 0 else math.nan)} ({len(x):,})"
