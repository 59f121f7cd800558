"""Stable features by construction: the consensus SAE of every configuration.

Read from ``consensus.parquet`` (:mod:`husai.experiments.consensus_step`), present only
when the study file asks for ``consensus``. Per configuration: the latents kept (clusters
of >= min_seeds seeds) beside the bound for random decoders, the consensus SAE's EV and
L0 beside its seeds' means, on the grokked model its GT-MCC beside theirs, and the test
of the construction: two consensus decoders built from disjoint halves of the seeds compared
by PW-MCC, beside the hardest random baseline for their latent counts and beside the
single seeds' alive-only PW-MCC of the same configuration (``summary``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from husai import layout
from husai.report import figures
from husai.report.render import Bullets, Figure, Note, Para, Section, Table, fmt
from husai.report.store import RunView
from husai.report.verdict import label

ORDER = ["hook", "checkpoint", "arch", "d_sae", "sparsity"]
TITLE = "Stable features by construction"
CAVEAT = (
    "the halves are compared on all their kept rows (no encoder, hence no alive mask), the "
    "single seeds alive-only, each against the hardest random baseline for its own counts"
)


def has_consensus(store: RunView) -> bool:
    """Whether the study built consensus SAEs (its store holds consensus.parquet)."""
    return layout.table_path(store.root, layout.CONSENSUS).is_file()


def consensus_section(store: RunView, st: float, ev: float) -> Section:
    """The section (module docstring); a note when the table cannot be read."""
    import pandas as pd

    sec = Section(f"9. {TITLE}", "consensus")
    path = layout.table_path(store.root, layout.CONSENSUS)
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # a corrupt table is reported, not raised
        return sec.add(Note(f"{path.name} could not be read ({err.__class__.__name__})."))
    if df.empty:
        return sec.add(Note(f"{path.name} has no rows (no finished unit)."))
    df = _with_single_seed(df, store.summary).sort_values(ORDER, kind="stable")
    sec.add(Para(_consensus_method(df)))
    sec.add(Para(_finding(df, st, ev)))
    sec.add(_table(df))
    errors = df.dropna(subset=["error"]) if "error" in df else df.iloc[:0]
    if len(errors):
        sec.add(Note("No consensus could be built for:"))
        sec.add(Bullets([f"{label(r)}: {r.error}" for r in errors.itertuples()]))
    split = df[np.isfinite(df["split_pw_mcc"].to_numpy(float))]
    if len(split):
        cap = (
            "Each configuration: alive-only PW-MCC of two single seeds (mean over seed pairs, "
            "x) against the PW-MCC of the two half-seed consensus decoders over all their kept "
            "rows (y); grey: the diagonal. The two differ in what they compare, and so in "
            "their baselines (the table has both): above the diagonal is higher agreement, "
            "not yet a higher excess over chance."
        )
        png = figures.paired_scatter(
            split["single_pw_mcc_alive"].to_numpy(float),
            split["split_pw_mcc"].to_numpy(float),
            split["hook"].astype(str).to_numpy(),
            "single seeds: alive PW-MCC",
            "half-seed consensus decoders: PW-MCC",
        )
        sec.add(Figure("consensus_split", png, cap))
    return sec


def _with_single_seed(df: Any, summary: Any) -> Any:
    """The single seeds' alive-only PW-MCC and its hardest baseline, by group id."""
    df = df.copy()
    df["single_pw_mcc_alive"] = np.nan
    df["single_baseline_hardest"] = np.nan
    if summary is None or summary.empty:
        return df
    alive = summary[summary["metric"] == "pw_mcc_alive"].set_index("group_id")
    ids = df["group_id"].astype(str)
    df["single_pw_mcc_alive"] = ids.map(alive["mean"]).astype(float)
    if "baseline_hardest" in alive:
        df["single_baseline_hardest"] = ids.map(alive["baseline_hardest"]).astype(float)
    return df


def _consensus_method(df: Any) -> str:
    """What was built and compared, with the settings of this table's rows."""

    def one(col: str) -> str:
        vals = sorted({_int(v) for v in df[col] if _int(v) != "-"})
        return " or ".join(vals) if vals else "-"

    return (
        f"A consensus SAE per configuration (Kurochkin et al. 2026 pool cross-seed features "
        f"this way): the latents of its {one('n_seeds')} seeds are clustered by decoder cosine "
        f">= {fmt(float(df['tau'].iloc[0]), 2)}, the clusters holding latents of >= "
        f"{one('min_seeds')} seeds are kept, their mean unit directions form the decoder, and a "
        f"TopK encoder is fitted to it at the seeds' mean L0, rounded (k). 'Chance' bounds the "
        f"clusters random decoders of the same sizes would keep. To test whether such features "
        f"are stable by construction, the seeds are also split into two disjoint halves (the "
        f"first half, rounded down, and the rest); each half keeps its clusters in >= "
        f"{one('split_min_seeds')} of its seeds as a consensus decoder (no encoder: every kept "
        f"row is a direction several seeds learned), and the two decoders are compared by "
        f"PW-MCC. Note that {CAVEAT}. The split is one pair, so it has no confidence interval; "
        f"the single seeds' value is the mean over their seed pairs (the stability section)."
    )


def _finding(df: Any, st: float, ev: float) -> str:
    n = len(df)
    kept = df[df["n_kept"] > 0]
    split = df[np.isfinite(df["split_pw_mcc"].to_numpy(float))]
    parts = [f"{len(kept)} of {n} configurations keep at least one cluster"]
    if len(kept):
        drop = (kept["seed_explained_variance"] - kept["explained_variance"]).to_numpy(float)
        ev_ok = int((kept["explained_variance"] >= ev).sum())
        parts.append(
            f"their consensus SAEs keep {fmt(float(np.median(kept['n_kept'] / kept['d_sae'])), 2)} "
            f"of the width (median) and lose a median {fmt(float(np.median(drop)))} of "
            f"explained variance against their seeds ({ev_ok} keep EV >= {fmt(ev)})"
        )
    if not len(split):
        return "; ".join(parts) + ". No configuration had a split (it needs >= 4 seeds)."
    both = split[np.isfinite(split["single_pw_mcc_alive"].to_numpy(float))]
    gain = (both["split_pw_mcc"] - both["single_pw_mcc_alive"]).to_numpy(float)
    excess_split = both["split_pw_mcc"] - both["split_baseline_hardest"]
    excess_single = both["single_pw_mcc_alive"] - both["single_baseline_hardest"]
    above = split["split_pw_mcc"] > split["split_baseline_hardest"]
    reach = above & (split["split_pw_mcc"] >= st) & (split["explained_variance"] >= ev)
    parts.append(
        f"the two half-seed consensus decoders agree more than single seeds do in "
        f"{int((gain > 0).sum())} of {len(both)} configurations (median change "
        f"{_signed(float(np.median(gain)) if len(gain) else math.nan)}) and exceed their "
        f"hardest baseline by more than single seeds exceed theirs in "
        f"{int((excess_split > excess_single).sum())} of {len(both)} ({CAVEAT}); they are "
        f"above their hardest baseline in {int(above.sum())} of {len(split)}, and at PW-MCC "
        f">= {fmt(st)} with the full consensus at EV >= {fmt(ev)} in {int(reach.sum())}"
    )
    return "; ".join(parts) + "."


def _signed(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:+.3f}"


def _table(df: Any) -> Table:
    gt = bool(np.isfinite(df["gt_mcc"].to_numpy(float)).any())
    cols = ["configuration", "seeds' alive latents", "kept (chance)", "k"]
    cols += ["EV (seeds)", "L0 (seeds)"] + (["GT-MCC (seeds)"] if gt else [])
    cols += ["half-seed consensus: kept a/b", "PW-MCC, all kept rows (hardest baseline)"]
    cols += ["single seeds: alive PW-MCC (hardest baseline)"]
    rows = []
    for r in df.itertuples():
        row = [label(r), r.seed_alive_mean, f"{int(r.n_kept)} ({fmt(r.chance_kept, 2)})"]
        row += [_int(r.k), _with_reference(r.explained_variance, r.seed_explained_variance)]
        row += [_with_reference(r.l0, r.seed_l0, 2)] + (
            [_with_reference(r.gt_mcc, r.seed_gt_mcc)] if gt else []
        )
        row += [f"{_int(r.split_kept_a)}/{_int(r.split_kept_b)}"]
        row += [_with_reference(r.split_pw_mcc, r.split_baseline_hardest)]
        row += [_with_reference(r.single_pw_mcc_alive, r.single_baseline_hardest)]
        rows.append(row)
    cap = "Consensus SAE per configuration; in brackets the seeds' mean or the baseline."
    return Table(cols, rows, cap)


def _with_reference(x: Any, y: Any, digits: int = 3) -> str:
    return f"{fmt(x, digits)} ({fmt(y, digits)})"


def _int(x: Any) -> str:
    try:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else str(int(x))
    except (TypeError, ValueError):  # pandas' NA
        return "-"
