"""Print the numbers README's findings quote, from a study's summary.parquet.

    python scripts/findings.py results/goldilocks_cpu/summary.parquet
    python scripts/findings.py runs/default/summary.parquet --checkpoint final

Reads only the summary table (a committed results folder is enough) and applies the
report's own verdict rule (``husai.report.verdict``: alive-only PW-MCC and EV thresholds,
CI lower bound above the hardest random baseline, at most half the dictionary dead), so
README's numbers are generated from the committed results rather than typed by hand.
Prints markdown: the verdict count, every configuration's row, the width axis of each
(architecture, hook, sparsity) that spans several widths, and per-feature stability
against its data-subspace baseline.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from husai.report.verdict import primary_table, stable_mask


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary", type=Path, help="a study's summary.parquet")
    ap.add_argument("--stability", type=float, default=0.7, help="PW-MCC threshold (0.7)")
    ap.add_argument("--ev", type=float, default=0.9, help="explained-variance threshold (0.9)")
    args = ap.parse_args(argv)
    if not args.summary.is_file():
        print(f"error: {args.summary} is not a file", file=sys.stderr)
        return 2
    summary = pd.read_parquet(args.summary)
    df, why = primary_table(summary)
    if df is None:
        print(f"error: {args.summary}: {why}", file=sys.stderr)
        return 2
    df["stable"] = stable_mask(df, args.stability, args.ev)
    _verdict(df)
    _rows(df)
    _widths(df)
    _per_feature(summary, df)
    return 0


def _verdict(df: pd.DataFrame) -> None:
    for ckpt, part in df.groupby("checkpoint"):
        names = "; ".join(part[part.stable].sort_values("mean", ascending=False).label)
        print(f"- [{ckpt}] {int(part.stable.sum())} of {len(part)} configurations stable: {names}")
    print()


def _rows(df: pd.DataFrame) -> None:
    print(
        "| configuration | alive PW-MCC [95% CI] | hardest baseline | all-latent | dead | EV | L0 | stable |"
    )
    print("|---|---|---|---|---|---|---|---|")
    order = df.sort_values(["checkpoint", "hook", "arch", "d_sae", "sparsity"])
    for r in order.itertuples():
        print(
            f"| {r.label} | {r.mean:.3f} [{r.ci_lo:.3f}, {r.ci_hi:.3f}] | "
            f"{r.baseline_hardest:.3f} ({r.hardest_kind}) | {r.mean_all:.3f} | "
            f"{r.dead_fraction_mean:.2f} | {r.explained_variance_mean:.3f} | {r.l0_mean:.1f} | "
            f"{'yes' if r.stable else 'no'} |"
        )
    print()


def _widths(df: pd.DataFrame) -> None:
    keys = ["checkpoint", "hook", "arch", "sparsity_name", "sparsity"]
    for key, part in df.groupby(keys):
        if part.d_sae.nunique() < 3:
            continue
        part = part.sort_values("d_sae")
        cells = ", ".join(
            f"{int(r.d_sae)}: {r.mean:.3f} vs {r.baseline_hardest:.3f}, dead {r.dead_fraction_mean:.2f}"
            for r in part.itertuples()
        )
        ckpt, hook, arch, name, value = key
        print(f"- width axis, {arch} {name}={value:g} @ {hook} [{ckpt}]: {cells}")
    print()


def _per_feature(summary: pd.DataFrame, df: pd.DataFrame) -> None:
    col, base = "latent_stability_mean", "latent_stability_mean_baseline_subspace"
    if col not in df or base not in df or df[base].isna().all():
        return
    ok = df[df[base].notna()]
    above = ok[ok[col] > ok[base]]
    below = ok[ok[col] <= ok[base]]
    print(
        f"- per-feature stability above its data-subspace baseline in {len(above)} of "
        f"{len(ok)} configurations; below: " + ("; ".join(below.label) or "none")
    )


if __name__ == "__main__":
    raise SystemExit(main())
