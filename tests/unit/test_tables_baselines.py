"""summary.parquet keeps the unit-sphere baseline and adds the hardest one, per pair."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from husai.experiments.tables import summarise


def _pairs(with_data: bool) -> pd.DataFrame:
    rows = []
    # pair 1: the subspace baseline is hardest; pair 2: the activation-row one is
    per_pair = [(0.10, 0.40, 0.30), (0.12, 0.35, 0.50), (0.11, np.nan, 0.20)]
    for (sa, sb), (unit, sub, acts), value in zip(
        [(0, 1), (0, 2), (1, 2)], per_pair, [0.6, 0.7, 0.8], strict=True
    ):
        row = {"group_id": "g", "metric": "pw_mcc_alive", "arch": "topk", "d_sae": 16}
        row |= {"hook": "h", "checkpoint": "final", "sparsity_name": "k", "sparsity": 4.0}
        row |= {"seed_a": sa, "seed_b": sb, "value": value, "baseline": unit}
        row |= {"baseline_init": 0.05, "dead_included": False}
        if with_data:
            row |= {"baseline_subspace": sub, "baseline_acts": acts}
        rows.append(row)
    return pd.DataFrame(rows)


def test_summary_hardest_is_the_mean_of_per_pair_maxima() -> None:
    s = summarise(_pairs(True), pd.DataFrame(), bootstrap=50, seed=0).iloc[0]
    assert s["mean"] == pytest.approx(0.7)
    assert s["baseline"] == pytest.approx(0.11)  # unchanged meaning: unit sphere
    assert s["excess"] == pytest.approx(0.7 - 0.11)
    assert s["baseline_hardest"] == pytest.approx((0.40 + 0.50 + 0.20) / 3)
    assert s["excess_hardest"] == pytest.approx(0.7 - (0.40 + 0.50 + 0.20) / 3)
    assert s["baseline_subspace"] == pytest.approx((0.40 + 0.35) / 2)  # NaN pair left out
    assert s["baseline_acts"] == pytest.approx((0.30 + 0.50 + 0.20) / 3)


def test_summary_without_data_baselines_falls_back_to_unit_sphere() -> None:
    s = summarise(_pairs(False), pd.DataFrame(), bootstrap=50, seed=0).iloc[0]
    assert s["baseline_hardest"] == pytest.approx(s["baseline"])
    assert math.isnan(s["baseline_subspace"]) and math.isnan(s["baseline_acts"])
