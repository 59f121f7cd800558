"""The suite report: several studies of one grid on different tasks, side by side.

Each member's verdict comes from its own ``summary.parquet`` by the same rule as its own
report (:mod:`husai.report.verdict`: alive-only PW-MCC >= the stability threshold, EV >= the
EV threshold, CI lower bound above the hardest random baseline, at most half the
dictionary dead). The comparison then asks whether the stable zone moves with the task:

- per task: how many configurations are stable, and the best one with its CI and baseline;
- per cell of the grid (hook, checkpoint, architecture, width, sparsity): alive-only PW-MCC
  minus the hardest baseline in each task, and which tasks call it stable;
- per pair of tasks: the stable sets' overlap (Jaccard, |A and B| / |A or B|) and the
  Spearman correlation of the cells' excess over the hardest baseline (how alike the
  landscapes are, not only their stable corners).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from husai.report import figures
from husai.report.build import write_report
from husai.report.render import Figure, Note, Para, Section, Table, fmt
from husai.report.store import RunView
from husai.report.verdict import label, primary_table, stable_mask

CELL = ["hook", "checkpoint", "arch", "d_sae", "sparsity_name", "sparsity"]


def build_comparison(root: Path, stores: list[Path], *, title: str) -> Path:
    """Write ``root/report.html`` and ``report.md`` comparing the member run stores."""
    views = [RunView.open(Path(s)) for s in stores]
    names = [v.task() or v.root.name for v in views]
    names = [
        n if names.count(n) == 1 else f"{n} [{v.root.name}]"
        for n, v in zip(names, views, strict=True)
    ]
    st, ev = _thresholds(views[0])
    tables = {}
    notes = []
    for name, view in zip(names, views, strict=True):
        df, why = primary_table(view.summary)
        if df is None:
            notes.append(Note(f"{name}: {why}; it is left out of the comparison."))
            continue
        df["stable"] = stable_mask(df, st, ev)
        tables[name] = df
    intro = [
        Para(
            f"{len(views)} studies of one grid, one per task. Verdict rule (as in each study's "
            f"own report): alive-only PW-MCC >= {fmt(st)}, explained variance >= {fmt(ev)}, CI "
            "lower bound above the hardest random baseline, at most 50% of the dictionary dead."
        ),
        Table(
            ["task", "run store", "its report"],
            [
                [n, str(v.root), str(v.root / "report.html")]
                for n, v in zip(names, views, strict=True)
            ],
        ),
        *notes,
    ]
    sections = [_verdicts(tables), _zone(tables), _pairs(tables)]
    return write_report(Path(root), f"HUSAI suite report: {title}", intro, sections)


def _thresholds(view: RunView) -> tuple[float, float]:
    """The first member's report thresholds (its provenance), else ReportConfig's defaults."""
    from husai.config import ReportConfig

    study = (view.provenance or {}).get("study")
    rep = study.get("report") if isinstance(study, dict) else None
    cfg = ReportConfig.model_validate(rep if isinstance(rep, dict) else {})
    return cfg.stability_threshold, cfg.ev_threshold


def _verdicts(tables: dict[str, Any]) -> Section:
    sec = Section("1. The verdict per task", "verdicts")
    rows = []
    for name, df in tables.items():
        best = df.loc[df["excess"].idxmax()]
        rows.append(
            [
                name,
                len(df),
                int(df.stable.sum()),
                best.label,
                f"{fmt(best['mean'])} [{fmt(best.ci_lo)}, {fmt(best.ci_hi)}]",
                fmt(best.mean_all),
                f"{fmt(best.baseline_hardest)} ({best.hardest_kind})",
                fmt(best.explained_variance_mean),
                fmt(best.dead_fraction_mean),
            ]
        )
    if not rows:
        return sec.add(Note("No member study has a summary table to compare."))
    return sec.add(
        Table(
            [
                "task",
                "configurations",
                "stable",
                "largest excess over the hardest baseline",
                "alive PW-MCC [95% CI, seeds resampled]",
                "all-latent PW-MCC",
                "hardest baseline",
                "EV",
                "dead fraction",
            ],
            rows,
            "From each member's summary.parquet (primary metric: alive-only PW-MCC).",
        )
    )


def _cells(tables: dict[str, Any]) -> Any:
    """One row per grid cell, a column of excess and of stability per task (inner join)."""
    merged = None
    for name, df in tables.items():
        part = df[[*CELL, "excess", "stable", "mean"]].rename(
            columns={"excess": f"excess:{name}", "stable": f"stable:{name}", "mean": f"mean:{name}"}
        )
        merged = part if merged is None else merged.merge(part, on=CELL, how="inner")
    return merged


def _zone(tables: dict[str, Any]) -> Section:
    sec = Section("2. Does the stable zone move?", "zone")
    cells = _cells(tables) if len(tables) >= 2 else None
    if cells is None or cells.empty:
        return sec.add(Note("Fewer than two tasks share grid cells; nothing to compare."))
    names = list(tables)
    stable_CT = cells[[f"stable:{n}" for n in names]].to_numpy(bool)
    counts = stable_CT.sum(1)
    sec.add(
        Para(
            f"{len(cells)} cells in every task. Stable in all {len(names)} tasks: "
            f"{int((counts == len(names)).sum())}; in some but not all: "
            f"{int(((counts > 0) & (counts < len(names))).sum())}; in none: "
            f"{int((counts == 0).sum())}."
        )
    )
    rows = []
    order = np.lexsort((-cells[[f"excess:{n}" for n in names]].mean(axis=1).to_numpy(), -counts))
    for i in order:
        r = cells.iloc[i]
        cell = label(r)
        per_task = [
            f"{fmt(r[f'mean:{n}'])} ({r[f'excess:{n}']:+.3f}){' stable' if r[f'stable:{n}'] else ''}"
            for n in names
        ]
        rows.append([cell, *per_task])
    sec.add(
        Table(
            ["cell", *names],
            rows,
            "Alive-only PW-MCC (its excess over the hardest baseline); 'stable' marks the verdict.",
        )
    )
    return sec.add(
        Figure(
            "suite_excess",
            _excess_figure(cells, names, order),
            "Excess of alive-only PW-MCC over the hardest random baseline per grid cell (rows, "
            "ordered as the table) and task (columns); circles mark stable cells.",
        )
    )


def _excess_figure(cells: Any, names: list[str], order: np.ndarray) -> bytes:
    x_CT = cells[[f"excess:{n}" for n in names]].to_numpy(float)[order]
    st_CT = cells[[f"stable:{n}" for n in names]].to_numpy(bool)[order]
    fig, ax = figures._figure(2.2 + 1.3 * len(names), 1.2 + 0.16 * len(cells), left=0.4)
    a = ax[0, 0]
    lim = max(float(np.nanmax(np.abs(x_CT))), 1e-6)
    im = a.imshow(x_CT, aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim)
    ys, xs = np.nonzero(st_CT)
    a.scatter(xs, ys, s=14, facecolors="none", edgecolors="black")
    a.set_xticks(range(len(names)), names, fontsize=8, rotation=15)
    a.set_yticks([])
    a.set_ylabel("grid cells")
    fig.colorbar(im, ax=a, label="excess over hardest baseline")
    return figures.to_png(fig)


def _pairs(tables: dict[str, Any]) -> Section:
    from scipy.stats import spearmanr

    sec = Section("3. How alike are the tasks?", "pairs")
    cells = _cells(tables) if len(tables) >= 2 else None
    if cells is None or cells.empty:
        return sec.add(Note("Fewer than two tasks share grid cells; nothing to compare."))
    rows = []
    for a, b in itertools.combinations(tables, 2):
        sa, sb = cells[f"stable:{a}"].to_numpy(bool), cells[f"stable:{b}"].to_numpy(bool)
        union = int((sa | sb).sum())
        jac = (sa & sb).sum() / union if union else float("nan")
        rho = spearmanr(cells[f"excess:{a}"], cells[f"excess:{b}"]).statistic
        rows.append([a, b, int((sa & sb).sum()), union, fmt(jac), fmt(rho), len(cells)])
    return sec.add(
        Table(
            [
                "task A",
                "task B",
                "stable in both",
                "stable in either",
                "Jaccard",
                "Spearman rho",
                "n",
            ],
            rows,
            "Jaccard of the stable sets (nan when neither has one); Spearman rho of the excess "
            "over the hardest baseline across the shared cells.",
        )
    )
