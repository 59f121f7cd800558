"""The verdict and guidelines: rules checked on small hand-made summary tables."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from husai.report import guidelines as g
from husai.report.render import Bullets, Para, Table, fmt


def _row(arch, width, sp, mean, base, ev, hook="h", half=0.01, metric="pw_mcc_alive"):
    return {
        "group_id": f"{arch}/{width}/{sp}/{hook}",
        "arch": arch,
        "d_sae": width,
        "hook": hook,
        "checkpoint": "final",
        "sparsity_name": "k" if arch != "relu" else "l1_coefficient",
        "sparsity": float(sp),
        "metric": metric,
        "mean": mean,
        "ci_lo": mean - half,
        "ci_hi": mean + half,
        "baseline": base,
        "explained_variance_mean": ev,
        "l0_mean": float(sp),
    }


def _text(blocks) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out += b.items
        elif isinstance(b, Table):
            out += [" ".join(c if isinstance(c, str) else fmt(c) for c in r) for r in b.rows]
    return "\n".join(out)


def _stable_topk() -> pd.DataFrame:
    rows = [
        _row("topk", 64, k, m, 0.30, ev)
        for k, m, ev in [(4, 0.62, 0.88), (8, 0.83, 0.93), (16, 0.74, 0.96), (32, 0.55, 0.98)]
    ]
    rows += [_row("relu", 64, c, 0.33, 0.30, 0.95) for c in (1e-4, 1e-3, 1e-2)]
    return pd.DataFrame(rows)


def _nothing() -> pd.DataFrame:
    rows = [_row("topk", 64, k, 0.301, 0.30, 0.95, half=0.02) for k in (4, 8, 16)]
    rows += [_row("relu", 64, c, 0.295, 0.30, 0.95, half=0.02) for c in (1e-4, 1e-3, 1e-2)]
    return pd.DataFrame(rows)


def test_verdict_finds_exactly_the_configs_meeting_both_thresholds():
    v = g.verdict(_stable_topk(), 0.7, 0.9)
    assert sorted(v.passing.sparsity) == [8.0, 16.0]  # k=4 fails EV, k=32 fails stability
    text = _text(v.blocks)
    assert "2 of 7 configurations" in text
    assert "0.830" in text and "0.740" in text


def test_verdict_thresholds_are_configurable():
    assert len(g.verdict(_stable_topk(), 0.8, 0.9).passing) == 1
    assert len(g.verdict(_stable_topk(), 0.7, 0.97).passing) == 0


def test_verdict_without_passing_config_gives_frontier_with_numbers():
    v = g.verdict(_nothing(), 0.7, 0.9)
    assert v.passing.empty
    text = _text(v.blocks)
    assert "No configuration reaches" in text
    assert "0.301" in text  # the most stable config's mean is quoted


def test_pareto_frontier_known_case():
    df, _ = g.primary_table(_stable_topk())
    ids = g.pareto_ids(df)
    # topk k=8 (0.83, .93), k=16 (.74, .96), k=32 (.55, .98) are non-dominated;
    # k=4 (.62, .88) is dominated by k=8; relu (.33, .95) by k=16.
    assert ids == {"topk/64/8/h", "topk/64/16/h", "topk/64/32/h"}


def test_pareto_frontier_is_per_hook():
    df = pd.concat(
        [_stable_topk(), _nothing().assign(hook="other", group_id=lambda d: d.group_id + "o")]
    )
    ptab, _ = g.primary_table(df)
    ids = g.pareto_ids(ptab)
    assert any(i.endswith("o") for i in ids)  # the weaker hook keeps its own frontier


def test_guidelines_differ_between_tables_and_quote_numbers():
    good = _text(g.guidelines(_stable_topk(), None, {"h": 16.0}, 0.7, 0.9))
    bad = _text(g.guidelines(_nothing(), None, {"h": 16.0}, 0.7, 0.9))
    assert good != bad
    assert "Recommended: topk" in good and "Recommended" not in bad
    assert (
        "k 8 to 16" in good
        and "0.830" in good
        and "4.0x the activations' effective rank 16.00" in good
    )
    assert "Nothing beats its random baseline" in bad and "Nothing beats" not in good
    assert "0.001" in bad  # the largest excess (0.301 - 0.300) is quoted


def test_no_recommendation_claim_when_only_low_fidelity_configs_beat_baseline():
    df = pd.DataFrame([_row("topk", 64, k, 0.8, 0.3, 0.5) for k in (4, 8, 16)])
    text = _text(g.guidelines(df, None, {}, 0.7, 0.9))
    assert "Recommended" not in text
    assert "only lower-fidelity ones do" in text


MARKERS = ("rises with k", "falls with k", "peaking inside the range at k=8", "flat in k")


@pytest.mark.parametrize(
    ("means", "expect"),
    [
        ([0.40, 0.50, 0.60, 0.70], "rises with k"),
        ([0.70, 0.60, 0.50, 0.40], "falls with k"),
        ([0.40, 0.70, 0.50, 0.45], "peaking inside the range at k=8"),
        ([0.500, 0.501, 0.502, 0.503], "flat in k"),
    ],
)
def test_trend_rule(means, expect):
    rows = [_row("topk", 64, k, m, 0.3, 0.95) for k, m in zip((4, 8, 16, 32), means, strict=True)]
    text = _text(g.guidelines(pd.DataFrame(rows), None, {}, 0.99, 0.9))
    assert [m for m in MARKERS if m in text] == [expect]


def test_rotation_claim_only_when_coverage_beats_baseline():
    summary = _nothing()
    res = pd.DataFrame(
        {
            "status": "ok",
            "arch": r.arch,
            "d_sae": r.d_sae,
            "hook": r.hook,
            "sparsity": r.sparsity,
            "gt_mcc": 0.4,
            "gt_mcc_baseline": 0.3,
            "plane_coverage_baseline": 0.2,
            "plane_coverage_mean": cov,
        }
        for r in summary.itertuples()
        for cov in [0.9]
    )
    with_cov = _text(g.guidelines(summary, res, {}, 0.7, 0.9))
    no_cov = _text(g.guidelines(summary, res.assign(plane_coverage_mean=0.25), {}, 0.7, 0.9))
    assert "rotation inside those planes" in with_cov
    assert "rotation" not in no_cov and "0.250" in no_cov


def test_missing_columns_give_a_note_not_a_crash():
    blocks = g.guidelines(
        _stable_topk().drop(columns=["explained_variance_mean"]), None, {}, 0.7, 0.9
    )
    assert "explained_variance_mean" in blocks[0].text
    assert g.verdict(None, 0.7, 0.9) is None


def test_every_number_in_the_recommendation_comes_from_the_table():
    df = _stable_topk()
    text = _text(g.guidelines(df, None, {}, 0.7, 0.9))
    rec = next(line for line in text.splitlines() if line.startswith("Recommended"))
    allowed = {
        f"{v:.3f}"
        for col in ("mean", "ci_lo", "ci_hi", "baseline", "explained_variance_mean", "l0_mean")
        for v in df[col]
    }
    for num in re.findall(r"\d+\.\d{3}", rec):
        assert num in allowed, num


def test_without_confidence_intervals_the_text_says_so():
    df = _stable_topk().assign(ci_lo=float("nan"), ci_hi=float("nan"))
    text = _text(g.guidelines(df, None, {}, 0.7, 0.9))
    assert "Recommended: topk" in text and "no CI" in text
    assert "CI [" not in text.split("Recommended")[1].split("\n")[0]
