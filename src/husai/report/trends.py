"""Trends of stability along sparsity or width, stated per slice of the other axis.

A trend averaged over widths can look perfect (Spearman rho = -1 over 4 sparsity values)
while no single width shows it, so each statement here is made per slice: the trend
along sparsity is computed separately at every width, and the trend along width at
every sparsity value, each from its own points. A trend is stated as holding only when
every slice with at least 3 distinct values agrees; otherwise the slices are listed.

Per slice (``excess`` = mean minus the hardest random baseline):

- *flat*: the slice's excess moves by no more than its mean CI half-width;
- *rises* / *falls*: Spearman's rho (Pearson correlation of average ranks) >= 0.8 /
  <= -0.8;
- otherwise *no monotone trend*, with the peak when it lies inside the range.

Every rho is quoted with its number of points: with n points even rho = +-1 happens by
chance with probability 2/n! (1/12 at n = 4) when the order is random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from husai.report.render import fmt, fmt_param

RHO = 0.8
MIN_POINTS = 3


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of average ranks (ties share their mean rank)."""
    import pandas as pd

    if len(np.unique(x)) < MIN_POINTS or np.ptp(y) == 0:
        return float("nan")
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


@dataclass(frozen=True)
class SliceTrend:
    """The trend of one slice: kind in {rises, falls, flat, none, few}."""

    at: str  # e.g. "width 64"
    kind: str
    rho: float
    n: int
    detail: str

    def text(self) -> str:
        if self.kind == "few":
            return f"{self.at}: only {self.n} value(s), no trend"
        rho = f"rho {fmt(self.rho, 2)}, {self.n} points" if math.isfinite(self.rho) else ""
        words = {"rises": "rises", "falls": "falls", "flat": "flat", "none": "no monotone trend"}
        inner = "; ".join(t for t in (rho, self.detail) if t)
        return f"{self.at}: {words[self.kind]}" + (f" ({inner})" if inner else "")


def slice_trend(s: Any, col: str, name: str, at: str) -> SliceTrend:
    """The trend of ``excess`` along ``col`` in one slice (rows of one value of the other axis)."""
    by = s.groupby(col)["excess"].mean().sort_index()
    n = len(by)
    if n < MIN_POINTS:
        return SliceTrend(at, "few", float("nan"), n, "")
    rho = spearman(by.index.to_numpy(dtype=float), by.to_numpy(dtype=float))
    lo, hi, top = by.index.min(), by.index.max(), by.idxmax()
    ends = (
        f"excess {fmt(by[lo])} at {name}={fmt_param(lo)}, {fmt(by[hi])} at {name}={fmt_param(hi)}"
    )
    half = float(((s.ci_hi - s.ci_lo) / 2).mean()) if {"ci_lo", "ci_hi"} <= set(s) else math.nan
    if math.isfinite(half) and float(by.max() - by.min()) <= half:
        detail = f"excess within {fmt(by.min())} to {fmt(by.max())}, inside the CI half-width {fmt(half)}"
        return SliceTrend(at, "flat", rho, n, detail)
    if math.isfinite(rho) and rho >= RHO:
        return SliceTrend(at, "rises", rho, n, ends)
    if math.isfinite(rho) and rho <= -RHO:
        return SliceTrend(at, "falls", rho, n, ends)
    peak = f", peaking inside the range at {name}={fmt_param(top)} ({fmt(by[top])})"
    return SliceTrend(at, "none", rho, n, ends + (peak if lo < top < hi else ""))


def trend(g: Any, col: str, name: str, other: str, other_name: str) -> str | None:
    """One sentence on the trend along ``col``, judged separately in every ``other`` slice.

    None when ``col`` never takes more than one value.
    """
    if g[col].nunique() < 2:
        return None
    slices = [
        slice_trend(s, col, name, f"{other_name} {fmt_param(v)}")
        for v, s in g.groupby(other, sort=True)
    ]
    judged = [t for t in slices if t.kind != "few"]
    listing = "; ".join(t.text() for t in slices)
    if not judged:
        counts = sorted({t.n for t in slices})
        return (
            f"no trend in {name} can be stated: at most {max(counts)} {name} value(s) per "
            f"{other_name} (fewer than {MIN_POINTS})"
        )
    kinds = {t.kind for t in judged}
    where = (
        f"at every {other_name} with {MIN_POINTS}+ values"
        if len(judged) > 1
        else f"at the only {other_name} with {MIN_POINTS}+ values"
    )
    if len(kinds) == 1 and kinds <= {"rises", "falls", "flat"}:
        verb = {"rises": "rises with", "falls": "falls with", "flat": "is flat in"}[kinds.pop()]
        return f"stability {verb} {name} {where} ({listing})"
    return f"no trend in {name} holds {where} ({listing})"
