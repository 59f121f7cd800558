"""The levels section on a real tiny run store (the pipeline run end to end) and on damaged ones.

The tiny study (``study_fixtures.TINY``: p = 17, width 16, 3 seeds) takes seconds. Its
direction-level numbers must equal the study's own tables, since both come from the same
SAEs and alive masks.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_fixtures import write_study  # noqa: E402

from husai.experiments import run_study  # noqa: E402
from husai.metrics.levels import LEVELS, TERMS  # noqa: E402
from husai.report.render import Figure, Table, render_markdown  # noqa: E402
from husai.report.sections_levels import levels_section, levels_table  # noqa: E402
from husai.report.store import RunView  # noqa: E402
from report_fixtures import make_run_store  # noqa: E402

KEYS = ["arch", "d_sae", "hook", "checkpoint", "sparsity"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("levels")
    return Path(run_study(write_study(tmp / "tiny.yaml"), out=tmp / "store", report=False))


def test_table_matches_the_study_tables(tiny):
    df = levels_table(RunView.open(tiny), trials=1, n_boot=50)
    assert len(df) == 4 and df.attrs["skipped"] == []
    s = pd.read_parquet(tiny / "summary.parquet")
    for metric, col in (("pw_mcc", "direction_all"), ("pw_mcc_alive", "direction_alive")):
        ref = s[s.metric == metric][[*KEYS, "mean"]]
        both = df.merge(ref, on=KEYS, validate="one_to_one")
        assert len(both) == 4
        np.testing.assert_allclose(both[col], both["mean"], atol=1e-6)
    res = pd.read_parquet(tiny / "results.parquet")
    alive = res.groupby(KEYS)["n_alive"].mean().rename("n_alive_ref").reset_index()
    both = df.merge(alive, on=KEYS)
    np.testing.assert_allclose(both["n_alive_mean"], both["n_alive_ref"])
    terms = df[[f"gap_{t}" for t in TERMS]].sum(axis=1)
    np.testing.assert_allclose(terms, 1 - df["direction_all"], atol=1e-9)
    for name in LEVELS:
        assert df[name].between(0, 1 + 1e-9).all()
        assert np.isfinite(df[f"{name}_baseline_subspace"]).all()


def test_section_renders_numbers_of_the_table(tiny):
    store = RunView.open(tiny)
    sec = levels_section(store)
    tables = [b for b in sec.blocks if isinstance(b, Table)]
    figs = [b for b in sec.blocks if isinstance(b, Figure)]
    assert len(tables) == 2 and len(figs) == 1
    assert figs[0].png.startswith(b"\x89PNG")
    md = render_markdown("t", [], [sec], "f")
    df = levels_table(store)
    row = df.iloc[0]
    assert f"{row['direction_all']:.3f} ({row['direction_all_baseline_subspace']:.3f})" in md
    assert f"{row['gap']:.3f}" in md and "rotation in planes" in md


def test_missing_activations_and_weights_are_reported(tiny, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(tiny, root)
    for acts in root.rglob("acts.safetensors"):
        acts.unlink()
    df = levels_table(RunView.open(root))
    assert df.empty and all("activations could not be read" in s for s in df.attrs["skipped"])
    md = render_markdown("t", [], [levels_section(RunView.open(root))], "f")
    assert "No configuration could be measured" in md
    fabricated = make_run_store(tmp_path / "fab", hooks=("blocks.0.hook_resid_post",))
    md = render_markdown("t", [], [levels_section(RunView.open(fabricated))], "f")
    assert "No configuration could be measured" in md and "<img" not in md
