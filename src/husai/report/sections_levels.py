"""Section: stability at every level, and where the gap 1 - PW-MCC comes from, per configuration.

For every configuration at the final checkpoint whose hook has ground-truth planes, the SAE
weights of its seeds (``units/*/saes/*``) and the hook's activations
(``activations/<checkpoint>/<hook>/``) give :func:`husai.metrics.levels.level_set`: the
level scores (direction, plane, frequency, allocation, subspace), each beside the same
score of random dictionaries drawn in the activations' 95%-variance principal subspace with
the same widths and alive counts, and the decomposition of Song et al.'s gap 1 - PW-MCC into
dead latents, rotation within planes, directions outside the planes, allocation, mixing of
planes and of frequencies, and a remainder (definitions in that module's docstring).

Alive latents are those that fire on the hook's activations, found by encoding them with
each SAE (a code > 0 on at least one input, as :func:`husai.saes.evaluate` counts them). :func:`levels_table` returns one
row per configuration, for the verdict; :func:`levels_section` renders it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from husai import layout
from husai.activations import load_activations
from husai.metrics.data_baselines import data_reference
from husai.metrics.inputs import alive_from_codes
from husai.metrics.levels import LEVELS, TERMS, level_set
from husai.report import figures, verdict
from husai.report.render import Figure, Note, Para, Section, Table, fmt
from husai.report.sections_gt import ok_results
from husai.report.store import RunView
from husai.saes import load_sae
from husai.schema import GROUP_COLUMNS

log = logging.getLogger(__name__)
FINAL = "final"
GROUP = list(GROUP_COLUMNS[1:])
TERM_LABEL = {
    "dead": "dead latents",
    "rotation": "rotation in planes",
    "outside_planes": "outside the planes",
    "allocation": "allocation",
    "mixing_planes": "mixing planes",
    "mixing_frequencies": "mixing frequencies",
    "remainder": "remainder",
}
_CACHE: dict[tuple, pd.DataFrame] = {}


def levels_table(
    store: RunView, *, trials: int = 2, seed: int = 0, n_boot: int = 500
) -> pd.DataFrame:
    """One row per final-checkpoint configuration with planes: :meth:`LevelReport.row` columns
    plus the configuration, ``label``, ``n_seeds``, ``n_alive_mean`` and ``dead_fraction``.

    ``trials`` random draws per baseline. Configurations left out, and why, are listed in
    ``df.attrs["skipped"]``. Cached per run store and settings within the process.
    """
    key = (str(store.root.resolve()), _stamp(store), trials, seed, n_boot)
    if key not in _CACHE:
        _CACHE[key] = _compute(store, trials, seed, n_boot)
    return _CACHE[key].copy()


def _stamp(store: RunView) -> float:
    path = layout.table_path(store.root, "results")
    return path.stat().st_mtime if path.is_file() else 0.0


def _compute(store: RunView, trials: int, seed: int, n_boot: int) -> pd.DataFrame:
    res = ok_results(store)
    skipped: list[str] = []
    rows: list[dict[str, Any]] = []
    if res is None or not {"unit_id", "sae_id"} <= set(res.columns):
        skipped.append("results.parquet has no successful rows with unit and SAE ids")
    else:
        final = res[res.checkpoint.astype(str) == FINAL]
        if final.empty:
            skipped.append(f"results.parquet has no rows at checkpoint {FINAL!r}")
        acts: dict[str, Any] = {}
        for cfg, g in final.groupby(GROUP, sort=True):
            cfg = dict(zip(GROUP, cfg, strict=True))
            row, why = _config_row(store, cfg, g, acts, trials, seed, n_boot)
            if row is None:
                skipped.append(f"{verdict.label(pd.Series(cfg))}: {why}")
            else:
                rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["skipped"] = skipped
    return df


def _config_row(
    store: RunView, cfg: dict, g: Any, acts: dict, trials: int, seed: int, n_boot: int
) -> tuple[dict[str, Any] | None, str]:
    planes = store.planes(cfg["hook"], FINAL)
    if planes is None or not bool(planes.is_key.any()):
        return None, "no ground-truth planes for this hook"
    if cfg["hook"] not in acts:
        acts[cfg["hook"]] = _activations(store, cfg["hook"])
    acts_RD = acts[cfg["hook"]]
    if acts_RD is None:
        return None, "its activations could not be read"
    decs, alive = [], []
    for r in g.sort_values("seed" if "seed" in g else "sae_id").itertuples():
        try:
            sae = load_sae(store.sae_dir(r.unit_id, r.sae_id))
        except Exception as err:  # an unreadable SAE is reported, not raised
            log.warning("report: levels: %s/%s unreadable (%s)", r.unit_id, r.sae_id, err)
            continue
        decs.append(sae.W_dec.detach())
        alive.append(alive_from_codes(sae.encode(acts_RD)))
    if len(decs) < 2:
        return None, f"{len(decs)} readable seed(s); levels need two"
    rep = level_set(
        decs, alive, planes, data=data_reference(acts_RD), trials=trials, seed=seed, n_boot=n_boot
    )
    n_alive = [int(a.sum()) for a in alive]
    row = cfg | {"label": verdict.label(pd.Series(cfg)), "n_seeds": len(decs)}
    row |= {"n_alive_mean": float(np.mean(n_alive))}
    row |= {"dead_fraction": 1.0 - float(np.mean(n_alive)) / decs[0].shape[0]}
    spread = rep.allocation_spread()
    used = np.asarray(spread["mean"]) > 0
    row |= {"allocation_cv": float(np.mean(np.asarray(spread["cv"])[used])) if used.any() else 0.0}
    row |= {"n_planes": int(rep.planes.basis.shape[0]), "planes": ", ".join(rep.labels[:-1])}
    return row | rep.row(), ""


def _activations(store: RunView, hook: str) -> Any:
    act = store.act_dir(hook, FINAL)
    if act is None:
        return None
    try:
        return load_activations(act.path).acts
    except Exception as err:  # missing or damaged activations: the section says so
        log.warning("report: levels: activations of %s unreadable (%s)", hook, err)
        return None


def levels_section(store: RunView, *, trials: int = 2) -> Section:
    """The levels table, the decomposition table and one stacked-bar figure per hook.

    ``trials``: random draws per baseline (each costs about as much as the measurement).
    """
    sec = Section("Stability at every level", "levels")
    df = levels_table(store, trials=trials)
    skipped = df.attrs.get("skipped", [])
    if df.empty:
        why = "; ".join(skipped[:5]) or "no configuration to measure"
        return sec.add(Note(f"No configuration could be measured at every level: {why}."))
    sec.add(Para(_INTRO), _level_table(df), Para(_decomposition_text(df)), _term_table(df))
    for hook, g in df.groupby("hook", sort=True):
        sec.add(Para(f"Planes used at {hook} (strongest first): {g['planes'].iloc[0]}."))
        name = f"levels_{hook}".replace(".", "_")
        cap = (
            f"Where 1 - PW-MCC goes, per configuration at {hook}: stacked terms (they add up "
            "to the gap); black tick: the gap of random dictionaries in the principal subspace."
        )
        sec.add(Figure(name, decomposition_bars(g, f"Decomposition of 1 - PW-MCC, {hook}"), cap))
    if skipped:
        sec.add(Note(f"{len(skipped)} configuration(s) left out: " + "; ".join(skipped) + "."))
    return sec


_INTRO = (
    "Seeds can agree on a plane or a frequency while their latents point differently inside "
    "it. Levels (alive latents unless said): direction = PW-MCC (Song et al. 2025), all "
    "latents and alive only; plane = latents matched (Hungarian) on how their decoder norm "
    "splits over the ground-truth key planes and the rest (Bhattacharyya coefficient of "
    "these profiles), blind to rotations inside a plane; frequency = the same with each "
    "frequency's planes pooled; allocation = agreement of the number of latents on each "
    "plane (histogram intersection of dominant-plane counts); subspace = mean cos^2 of the "
    "principal angles between the seeds' 95%-energy decoder subspaces. Fitted planes can "
    "overlap (at the default model the a and b planes of a frequency coincide), so they are "
    "first made orthogonal, strongest first (the planes used are listed below). Each level is shown as value (baseline): the same level "
    "for random directions in the activations' 95%-variance principal subspace with the "
    "same widths and alive counts. Random directions spread their norm over every plane, so "
    "they agree highly at the plane and frequency levels; a dictionary of pure latents can "
    "fall below that baseline there."
)


def _cell(r: Any, name: str) -> str:
    return f"{fmt(r[name])} ({fmt(r[f'{name}_baseline_subspace'])})"


def _level_table(df: pd.DataFrame) -> Table:
    cols = ["configuration", "seeds", "dead fraction", *LEVELS, "allocation CV"]
    rows = [
        [r["label"], int(r["n_seeds"]), r["dead_fraction"]]
        + [_cell(r, name) for name in LEVELS]
        + [r["allocation_cv"]]
        for _, r in df.iterrows()
    ]
    cap = (
        "Mean over seed pairs (random principal-subspace baseline in brackets); allocation CV: "
        "std / mean across seeds of the latents per plane, averaged over occupied planes."
    )
    return Table(cols, rows, cap)


def _term_table(df: pd.DataFrame) -> Table:
    cols = ["configuration", "gap (1 - PW-MCC)", *(TERM_LABEL[t] for t in TERMS)]
    cols.append("random gap")
    rows = [
        [r["label"], r["gap"]]
        + [f"{fmt(_clean(r[f'gap_{t}']))} ({_share(r[f'gap_{t}'], r['gap'])})" for t in TERMS]
        + [r["gap_baseline_subspace"]]
        for _, r in df.iterrows()
    ]
    cap = (
        "Each term in PW-MCC units (its share of the gap in brackets); the terms add up to the "
        "gap. Random gap: 1 - PW-MCC of random principal-subspace dictionaries."
    )
    return Table(cols, rows, cap)


def _share(term: float, gap: float) -> str:
    return f"{100 * _clean(term) / gap:.0f}%" if gap > 1e-9 else "n/a"


def _clean(x: float) -> float:
    """0 for the float residue (~1e-17) that a difference of equal chain scores leaves."""
    return 0.0 if abs(x) < 1e-12 else float(x)


def _decomposition_text(df: pd.DataFrame) -> str:
    gap = float(df["gap"].mean())
    parts = ", ".join(
        f"{TERM_LABEL[t]} {fmt(_clean(df[f'gap_{t}'].mean()))} ({_share(df[f'gap_{t}'].mean(), gap)})"
        for t in TERMS
    )
    top = df.loc[df["gap"].idxmax()]
    big = max(TERMS, key=lambda t: top[f"gap_{t}"])
    return (
        f"Over the {len(df)} configurations measured, the gap 1 - PW-MCC averages {fmt(gap)} "
        f"(random dictionaries: {fmt(df['gap_baseline_subspace'].mean())}); it splits into "
        f"{parts}. The largest gap, {fmt(top['gap'])} ({top['label']}), has its largest term in "
        f"{TERM_LABEL[big]} ({fmt(top[f'gap_{big}'])}). The terms depend on the order in which "
        "the chain removes each source of disagreement (husai.metrics.levels)."
    )


def decomposition_bars(df: pd.DataFrame, title: str) -> bytes:
    """Horizontal stacked bars, one per configuration: the terms of 1 - PW-MCC.

    Positive terms stack rightwards from 0, negative ones (a ``dead`` term can be) leftwards;
    a black tick marks the random dictionaries' gap.
    """
    fig, ax = figures._figure(9, 1.7 + 0.3 * len(df), left=2.4, bottom=1.1)
    a = ax[0, 0]
    y = np.arange(len(df))
    right, left = np.zeros(len(df)), np.zeros(len(df))
    for term, color in zip(TERMS, figures._colors(len(TERMS)), strict=True):
        v = df[f"gap_{term}"].to_numpy(dtype=float)
        pos, neg = np.clip(v, 0, None), np.clip(v, None, 0)
        a.barh(y, pos, left=right, color=color, label=TERM_LABEL[term], height=0.7)
        a.barh(y, neg, left=left, color=color, height=0.7)
        right, left = right + pos, left + neg
    a.scatter(df["gap_baseline_subspace"], y, marker="|", color="k", s=120, zorder=3)
    a.axvline(0, color="k", lw=0.6)
    a.set_yticks(y, [label.split(" @ ")[0] for label in df["label"]], fontsize=7)
    a.set(title=title, xlabel="share of PW-MCC lost (1 - PW-MCC)")
    top = max(float(right.max()), float(np.nanmax(df["gap_baseline_subspace"].to_numpy(float))))
    a.set_xlim(min(-0.02, float(left.min()) - 0.02), 1.05 * top + 0.02)
    a.margins(y=0.01)
    a.invert_yaxis()
    fig.legend(fontsize=7, ncol=4, loc="lower center", frameon=False)
    return figures.to_png(fig)
