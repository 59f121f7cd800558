"""The table schema: typed rows serialise to the declared columns; conform completes old tables."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd

from husai.schema import (
    DYNAMICS_COLUMNS,
    GROUP_COLUMNS,
    PAIR_COLUMNS,
    RESULT_HEAD,
    DynamicsRow,
    GroupKey,
    PairRow,
    SaeRecord,
    conform,
    group_id,
    ordered,
)

KEY = GroupKey(group_id("u1", 4.0), "topk", 16, "blocks.0.hook_resid_post", "final", "k", 4.0)


def _metric_value(value: float = 0.8) -> SimpleNamespace:
    return SimpleNamespace(
        value=value,
        baseline=0.3,
        baseline_kind="unit_sphere",
        baseline_init=0.35,
        baseline_subspace=0.5,
        baseline_acts=0.45,
        baseline_hardest=0.5,
        excess=value - 0.3,
        excess_hardest=value - 0.5,
        ratio=value / 0.3,
        n_latents=(16, 15),
        dead_included=False,
    )


def test_rows_have_the_declared_columns_in_order() -> None:
    assert KEY.group_id == "u1/4" and tuple(KEY.columns()) == GROUP_COLUMNS
    pair = PairRow.of(KEY, 0, 1, "pw_mcc", _metric_value()).row()
    assert tuple(sorted(pair)) == PAIR_COLUMNS  # unit.json sorts them
    assert (pair["n_a"], pair["n_b"], pair["excess_hardest"]) == (16, 15, 0.8 - 0.5)
    dyn = DynamicsRow(KEY, 10, "pw_mcc", 0.7, 0.3, 0.5, 0.4, 0.5).row()
    assert tuple(sorted(dyn)) == DYNAMICS_COLUMNS and dyn["step"] == 10
    sae = SaeRecord("k4-seed0", KEY, 0, 800, None, 12, {"l0": 4.0}, {}, {"cfg.json": b"{}"})
    scalar = [k for k, v in sae.as_json().items() if not isinstance(v, dict)]
    assert ("unit_id", "status", "error", *sorted(scalar)) == RESULT_HEAD
    assert "files" not in sae.as_json()


def _old_summary() -> pd.DataFrame:
    """A summary as husai wrote it before checkpoints, sparsity names and data baselines."""
    return pd.DataFrame(
        {
            "group_id": ["u1/4", "u1/8"],
            "metric": "pw_mcc",
            "arch": "topk",
            "d_sae": 16,
            "hook": "h",
            "sparsity": [4.0, 8.0],
            "mean": [0.8, 0.6],
            "baseline": [0.3, 0.35],
        }
    )


def test_conform_gives_old_tables_what_their_missing_columns_meant() -> None:
    out = conform("summary", _old_summary())
    assert list(out.checkpoint) == ["final"] * 2 and list(out.sparsity_name) == ["sparsity"] * 2
    assert out.baseline_subspace.isna().all() and out.baseline_acts.isna().all()
    assert list(out.baseline_hardest) == [0.3, 0.35]  # the only baseline there was
    assert list(out.excess_hardest.round(12)) == [0.5, 0.25]


def test_conform_takes_the_largest_baseline_present_and_leaves_new_tables_alone() -> None:
    pairs = _old_summary().rename(columns={"mean": "value"})
    pairs["baseline_subspace"] = [0.4, float("nan")]
    out = conform("pairs", pairs)
    assert list(out.baseline_hardest) == [0.4, 0.35]  # NaN is no baseline
    assert math.isclose(out.excess_hardest.iloc[0], 0.8 - 0.4)
    assert conform("pairs", out) is out  # complete: unchanged
    results = pd.DataFrame({"unit_id": ["u1"], "arch": ["topk"], "l0": [4.0]})
    res = conform("results", results)
    assert "baseline_subspace" not in res and list(res.sparsity_name) == ["sparsity"]
    assert conform("results", pd.DataFrame()).empty and conform("pairs", None) is None


def test_ordered_puts_the_declared_head_first() -> None:
    frame = pd.DataFrame({"x": [1], "metric": ["m"], "group_id": ["g"]})
    assert list(ordered(frame, ("group_id", "metric", "absent")).columns) == [
        "group_id",
        "metric",
        "x",
    ]
