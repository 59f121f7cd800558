"""The answer in one paragraph, at the top of the report: stable at which level, where, why not.

Every clause is a rule applied to the study's tables, quoting the numbers that made it hold:

- *direction level*: the verdict's rule (:mod:`husai.report.verdict`: alive-only PW-MCC >= the
  threshold, EV >= its threshold, CI lower bound above the hardest random baseline, at most
  half the dictionary dead): how many configurations pass, which (grouped by hook and
  architecture), the best one with its CI and baseline, and for the others the first rule
  each fails, in the order above;
- *other levels* (:mod:`husai.report.sections_levels`, final checkpoint): per level (plane,
  frequency, allocation, subspace) how many configurations have a CI lower bound above that
  level's random baseline (random directions in the principal subspace), and the mean;
- *why*: the two largest mean terms of the decomposition of 1 - PW-MCC;
- whether any configuration reaches 0.9 at any level while beating that level's baseline
  (the bar for "seeds learn the same features").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from husai.report import verdict
from husai.report.render import Para, fmt
from husai.report.store import RunView

HIGH = 0.9
"""The bar for "seeds learn the same features" at a level."""
LEVEL_NAMES = {
    "plane": "plane (rotation inside a plane ignored)",
    "frequency": "frequency",
    "allocation": "allocation (latents per plane)",
    "subspace": "subspace",
}
TERM_NAMES = {
    "dead": "dead latents",
    "rotation": "rotation inside the true planes",
    "outside_planes": "directions outside the planes",
    "allocation": "different numbers of latents per plane",
    "mixing_planes": "latents mixing planes",
    "mixing_frequencies": "latents mixing frequencies",
    "remainder": "no common structure",
}


def answer(store: RunView, st: float, ev: float, levels: Any | None) -> Para | None:
    """The paragraph, or None without a summary table; ``levels``: ``levels_table`` or None."""
    df, _ = verdict.primary_table(store.summary)
    if df is None:
        return None
    parts = ["Answer: " + _direction(df, st, ev)]
    if levels is not None and not levels.empty:
        parts += [_levels(levels), _why(levels)]
    parts.append(_high(df, levels))
    return Para(" ".join(p for p in parts if p))


def _direction(df: Any, st: float, ev: float) -> str:
    ok = verdict.stable_mask(df, st, ev)
    n, total = int(ok.sum()), len(df)
    text = f"at the direction level, {n} of {total} configurations are stable"
    if n:
        where = df[ok].groupby(["hook", "arch"]).size().sort_values(ascending=False)
        text += " (" + ", ".join(f"{a} at {h}: {c}" for (h, a), c in where.items()) + ")"
        best = df[ok].loc[df[ok]["excess"].idxmax()]
    else:
        best = df.loc[df["excess"].idxmax()]
    text += (
        f". {'Best' if n else 'Closest'}: {best.label}, alive-only PW-MCC {fmt(best['mean'])} "
        f"[{fmt(best.ci_lo)}, {fmt(best.ci_hi)}] against a hardest baseline of "
        f"{fmt(best.baseline_hardest)} ({best.hardest_kind}), all-latent {fmt(best.mean_all)}, "
        f"{fmt(best.dead_fraction_mean)} dead, EV {fmt(best.explained_variance_mean)}."
    )
    return text + _failures(df[~ok], st, ev, others=n > 0)


def _failures(rest: Any, st: float, ev: float, others: bool) -> str:
    """How many of the unstable configurations fail each rule first (in the rule's order)."""
    if rest.empty:
        return ""
    low = rest["mean"] < st
    unfaithful = ~low & (rest.explained_variance_mean < ev)
    no_base = ~low & ~unfaithful & ~rest.beats_baseline.astype(bool)
    dead = ~low & ~unfaithful & ~no_base & rest.mostly_dead.astype(bool)
    counts = [
        (int(low.sum()), f"PW-MCC below {fmt(st)}"),
        (int(unfaithful.sum()), f"EV below {fmt(ev)}"),
        (int(no_base.sum()), "a CI that does not clear the hardest baseline"),
        (int(dead.sum()), f"more than {verdict.DEAD_MAX:.0%} dead"),
    ]
    why = ", ".join(f"{c} {w}" for c, w in counts if c)
    return f" {'The other' if others else 'All'} {len(rest)} fail first on: {why}."


def _levels(levels: Any) -> str:
    out = []
    for name, label in LEVEL_NAMES.items():
        if name not in levels:
            continue
        base = _baseline(levels, name)
        beats = int((levels[f"{name}_ci_lo"] > base).sum())
        out.append(
            f"{label} {fmt(levels[name].mean())} vs {fmt(base.mean())} "
            f"random, {beats} of {len(levels)} above it"
        )
    if not out:
        return ""
    return (
        "With the ground-truth planes (mean over configurations, CI lower bound against random "
        "directions in the principal subspace): " + "; ".join(out) + "."
    )


def _baseline(levels: Any, name: str) -> Any:
    """A level's principal-subspace baseline, else its stored (unit-sphere) one."""
    sub = levels.get(f"{name}_baseline_subspace")
    return sub if sub is not None and sub.notna().any() else levels[f"{name}_baseline"]


def _why(levels: Any) -> str:
    gap = levels["direction_all"].map(lambda v: 1.0 - v)
    terms = {t: levels[f"gap_{t}"].mean() for t in TERM_NAMES if f"gap_{t}" in levels}
    if not terms or not np.isfinite(gap.mean()) or gap.mean() <= 0:
        return ""
    top = sorted(terms.items(), key=lambda kv: -kv[1])[:2]
    shares = [f"{TERM_NAMES[t]} ({v / gap.mean():.0%})" for t, v in top]
    return f"Of the gap 1 - PW-MCC (mean {fmt(gap.mean())}), most is {shares[0]}, then {shares[1]}."


def _high(df: Any, levels: Any | None) -> str:
    """Levels where a configuration reaches HIGH with its CI lower bound above its baseline."""
    beats = df.beats_baseline.astype(bool)
    top = {"direction (alive-only PW-MCC)": (float(df["mean"].max()), df["mean"][beats])}
    if levels is not None and not levels.empty:
        for n in (n for n in LEVEL_NAMES if n in levels):
            over = levels[f"{n}_ci_lo"] > _baseline(levels, n)
            top[LEVEL_NAMES[n]] = (float(levels[n].max()), levels[n][over])
    reach = [n for n, (_, fair) in top.items() if (fair >= HIGH).any()]
    if reach:
        return (
            f"Levels where some configuration reaches {HIGH:g} and beats its random baseline: "
            + ", ".join(reach)
            + "."
        )
    best = max(top.items(), key=lambda kv: kv[1][0])
    return (
        f"No configuration reaches {HIGH:g} at any level while beating that level's random "
        f"baseline (highest value: {best[0]}, {fmt(best[1][0])})."
    )
