"""The verdict and guidelines: rules checked on small hand-made summary tables."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from husai.report import guidelines as g
from husai.report import verdict as v_
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
    v = v_.verdict(_stable_topk(), 0.7, 0.9)
    assert sorted(v.passing.sparsity) == [8.0, 16.0]  # k=4 fails EV, k=32 fails stability
    text = _text(v.blocks)
    assert "2 of 7 configurations" in text
    assert "0.830" in text and "0.740" in text


def test_verdict_thresholds_are_configurable():
    assert len(v_.verdict(_stable_topk(), 0.8, 0.9).passing) == 1
    assert len(v_.verdict(_stable_topk(), 0.7, 0.97).passing) == 0


def test_verdict_without_passing_config_gives_frontier_with_numbers():
    v = v_.verdict(_nothing(), 0.7, 0.9)
    assert v.passing.empty
    text = _text(v.blocks)
    assert "No configuration is stable by this rule" in text
    assert "0.301" in text  # the most stable config's mean is quoted


def test_pareto_frontier_known_case():
    df, _ = v_.primary_table(_stable_topk())
    ids = v_.pareto_ids(df)
    # topk k=8 (0.83, .93), k=16 (.74, .96), k=32 (.55, .98) are non-dominated;
    # k=4 (.62, .88) is dominated by k=8; relu (.33, .95) by k=16.
    assert ids == {"topk/64/8/h", "topk/64/16/h", "topk/64/32/h"}


def test_pareto_frontier_is_per_hook():
    df = pd.concat(
        [_stable_topk(), _nothing().assign(hook="other", group_id=lambda d: d.group_id + "o")]
    )
    ptab, _ = v_.primary_table(df)
    ids = v_.pareto_ids(ptab)
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
    assert "Nothing beats its hardest random baseline" in bad and "Nothing beats" not in good
    assert "0.001" in bad  # the largest excess (0.301 - 0.300) is quoted


def test_no_recommendation_claim_when_only_low_fidelity_configs_beat_baseline():
    df = pd.DataFrame([_row("topk", 64, k, 0.8, 0.3, 0.5) for k in (4, 8, 16)])
    text = _text(g.guidelines(df, None, {}, 0.7, 0.9))
    assert "Recommended" not in text
    assert "only lower-fidelity or mostly dead ones do" in text


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
            "checkpoint": r.checkpoint,
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
    assert v_.verdict(None, 0.7, 0.9) is None


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


def _one(mean=0.8, half=0.02, sub=float("nan"), acts=float("nan"), dead=0.1, ev=0.95):
    r = _row("topk", 64, 8, mean, 0.2, ev, half=half)
    return r | {"baseline_subspace": sub, "baseline_acts": acts, "dead_fraction_mean": dead}


def test_verdict_judges_against_the_hardest_baseline():
    easy = pd.DataFrame([_one(sub=0.5, acts=0.6)])
    hard = pd.DataFrame([_one(sub=0.5, acts=0.79)])  # CI lower bound 0.78 < 0.79
    assert len(v_.verdict(easy, 0.7, 0.9).passing) == 1
    v = v_.verdict(hard, 0.7, 0.9)
    assert v.passing.empty
    text = _text(v.blocks)
    assert "1 reach both thresholds, of which 1 do not beat the hardest baseline" in text
    assert "0.790 (activation rows)" in text  # the frontier table names the hardest kind
    df, _ = v_.primary_table(hard)
    assert df.excess.iloc[0] == pytest.approx(0.8 - 0.79)
    assert "principal subspace" in v_.rule_text(0.7, 0.9, df)


def test_without_data_aware_baselines_the_rule_says_so():
    df, _ = v_.primary_table(_stable_topk())
    assert (df.baseline_hardest == df.baseline).all()
    assert "no data-aware baselines" in v_.rule_text(0.7, 0.9, df)


def test_mostly_dead_dictionary_is_never_called_stable():
    alive = v_.verdict(pd.DataFrame([_one(dead=0.5)]), 0.7, 0.9)
    dead = v_.verdict(pd.DataFrame([_one(dead=0.6)]), 0.7, 0.9)
    assert len(alive.passing) == 1 and dead.passing.empty
    assert "of which 1 beat it but are mostly dead (dead fraction > 0.5)" in _text(dead.blocks)
    assert "at most 50% of its dictionary is dead" in _text(dead.blocks)
    guide = _text(g.guidelines(pd.DataFrame([_one(dead=0.6)]), None, {}, 0.7, 0.9))
    assert "Recommended" not in guide and "more than 50% dead" in guide


def test_verdict_table_shows_alive_all_latent_and_dead_side_by_side():
    rows = [_one(dead=0.3), _one(dead=0.3) | {"metric": "pw_mcc", "mean": 0.55}]
    table = v_.verdict(pd.DataFrame(rows), 0.7, 0.9).blocks[2]
    assert {"alive PW-MCC", "all-latent PW-MCC", "dead fraction"} <= set(table.columns)
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert (row["alive PW-MCC"], row["all-latent PW-MCC"], row["dead fraction"]) == (
        0.8,
        0.55,
        0.3,
    )


def _gt_results(summary, ckpt, cov, gt):
    return [
        {"status": "ok", "arch": r.arch, "d_sae": r.d_sae, "hook": r.hook, "checkpoint": ckpt}
        | {"sparsity": r.sparsity, "gt_mcc": gt, "gt_mcc_baseline": 0.1}
        | {"plane_coverage_mean": cov, "plane_coverage_baseline": 0.05}
        for r in summary.itertuples()
        for _seed in range(5)
    ]


def test_ground_truth_item_ignores_other_checkpoints():
    """step_75 SAEs share every key but the checkpoint; they must not enter 'final'."""
    summary = _nothing()
    res = pd.DataFrame(
        _gt_results(summary, "final", 0.9, 0.4) + _gt_results(summary, "step_75", 0.0, 0.0)
    )
    text = _text(g.guidelines(summary, res, {}, 0.7, 0.9))
    assert f"({5 * len(summary)} SAEs)" in text
    assert "plane coverage averages 0.900" in text and "GT-MCC 0.400" in text


def test_weighted_coverage_is_quoted_and_drives_the_rotation_claim():
    summary = _nothing()
    res = pd.DataFrame(_gt_results(summary, "final", 0.9, 0.4)).assign(
        plane_coverage_weighted=0.3,
        plane_coverage_weighted_baseline=0.05,
        plane_coverage_weighted_baseline_subspace=0.25,
    )
    text = _text(g.guidelines(summary, res, {}, 0.7, 0.9))
    assert "weighted by each plane's share of the variance, coverage is 0.300" in text
    assert "(hardest baseline 0.250)" in text and "rotation" not in text


def _grid(excess_by_width: dict[int, list[float]], half: float = 0.001) -> pd.DataFrame:
    return pd.DataFrame(
        [
            _row("topk", w, k, 0.3 + e, 0.3, 0.95, half=half)
            for w, exc in excess_by_width.items()
            for k, e in zip((4, 8, 16, 32), exc, strict=True)
        ]
    )


def test_trend_must_hold_at_every_width_not_only_on_average():
    # averaged over widths the excess falls monotonically (0.55, 0.46, 0.37, 0.28), but
    # at width 64 it rises: no trend holds at every width
    df = _grid({16: [0.8, 0.6, 0.4, 0.2], 64: [0.30, 0.32, 0.34, 0.36]})
    text = _text(g.guidelines(df, None, {}, 0.99, 0.9))
    assert "no trend in k holds at every width" in text
    assert "width 16: falls (rho -1.00, 4 points" in text
    assert "width 64: rises (rho 1.00, 4 points" in text
    assert "falls with k" not in text
    both = _text(
        g.guidelines(
            _grid({16: [0.8, 0.6, 0.4, 0.2], 64: [0.5, 0.4, 0.35, 0.3]}), None, {}, 0.99, 0.9
        )
    )
    assert "stability falls with k at every width with 3+ values" in both


def test_two_widths_give_no_width_trend_and_say_why():
    df = _grid({16: [0.8, 0.6, 0.4, 0.2], 64: [0.5, 0.4, 0.35, 0.3]})
    text = _text(g.guidelines(df, None, {}, 0.99, 0.9))
    assert "no trend in width can be stated: at most 2 width value(s) per k" in text


def test_pareto_caption_and_plot_are_per_hook_and_checkpoint(monkeypatch):
    from husai.report import figures

    df = pd.concat([_stable_topk(), _stable_topk().assign(checkpoint="step_75")])
    df["group_id"] = df.group_id + df.checkpoint
    ptab, _ = v_.primary_table(df)
    v = v_.verdict(df, 0.7, 0.9)
    assert "per (hook, checkpoint)" in v.blocks[-1].caption
    assert set(v.frontier.checkpoint) == {"final", "step_75"}
    seen = {}
    monkeypatch.setattr(figures, "to_png", lambda fig: seen.setdefault("fig", fig) and b"")
    figures.pareto(ptab, v_.pareto_ids(ptab), 0.7, 0.9)
    ax = seen["fig"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Pareto frontier, h [final]" in labels and "Pareto frontier, h [step_75]" in labels
    styles = {
        ln.get_label(): ln.get_linestyle() for ln in ax.get_lines() if "frontier" in ln.get_label()
    }
    assert len(set(styles.values())) == 2
    markers = {
        c.get_label(): c.get_paths()[0].vertices.shape
        for c in ax.collections
        if "/" in c.get_label()
    }
    assert markers["topk / h [final]"] != markers["topk / h [step_75]"]
