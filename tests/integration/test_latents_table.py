"""latents.parquet on the tiny study: one per SAE directory (checksummed in unit.json), one
at the store root with a row per latent, per-feature stability columns in the summary, and
the report section built from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from study_fixtures import write_study

from husai.experiments import run_study
from husai.experiments.store import RunStore
from husai.experiments.tables import build_tables
from husai.io import sha256_file
from husai.report.render import Figure, Table
from husai.report.sections_latents import latents_section
from husai.report.store import RunView
from husai.saes import load_sae


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("latents")
    return Path(run_study(write_study(tmp / "tiny.yaml"), out=tmp / "store", report=False))


def test_every_sae_dir_holds_a_checksummed_latents_table(root: Path) -> None:
    units = [p for p in (root / "units").iterdir() if not p.name.startswith(".")]
    assert len(units) == 2
    for unit in units:
        record = json.loads((unit / "unit.json").read_text())
        for sae in record["saes"]:
            rel = f"saes/{sae['sae_id']}/latents.parquet"
            assert rel in record["files"], rel
            assert record["files"][rel]["sha256"] == sha256_file(unit / rel)
            frame = pd.read_parquet(unit / rel)
            assert len(frame) == sae["d_sae"] and (frame["sae_id"] == sae["sae_id"]).all()
            assert int(frame["alive"].sum()) == sae["n_alive"]
            assert ((frame["fire_freq"] > 0) == frame["alive"]).all()
        assert record["history"]["latents_s"] < record["wall_s"]


def test_root_table_has_a_row_per_latent_and_matches_the_decoders(root: Path) -> None:
    lat = pd.read_parquet(root / "latents.parquet")
    results = pd.read_parquet(root / "results.parquet")
    assert len(lat) == int(results["d_sae"].sum()) == 2 * 2 * 3 * 16
    assert not lat.duplicated(["unit_id", "sae_id", "latent"]).any()
    assert set(lat["stability"].unique()) <= {0.0, 0.5, 1.0}  # 3 seeds: 2 others
    assert lat["plane_purity"].notna().all() and lat["ev_contribution"].notna().all()
    for (uid, gid), grp in lat.groupby(["unit_id", "group_id"]):
        sae_ids = sorted(grp["sae_id"].unique())
        units = []
        for sid in sae_ids:
            dec = load_sae(root / "units" / uid / "saes" / sid).W_dec.double()
            units.append(dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-30))
        for i, sid in enumerate(sae_ids):
            hits = sum(
                ((units[i] @ units[j].T).max(dim=1).values >= 0.7 - 1e-6).double()
                for j in range(len(units))
                if j != i
            )
            want = (hits / (len(units) - 1)).numpy()
            got = grp[grp["sae_id"] == sid].sort_values("latent")["stability"].to_numpy()
            assert np.array_equal(got, want), (gid, sid)


def test_summary_gains_per_feature_stability_and_tables_are_repeatable(root: Path) -> None:
    summary = pd.read_parquet(root / "summary.parquet")
    for col in (
        "latent_stability_mean",
        "latent_stability_median",
        "latent_stable_half",
        "latent_stable_all",
        "latent_stability_mean_baseline",
        "latent_stable_all_baseline",
        "latent_stability_mean_baseline_subspace",
        "latent_stable_all_baseline_subspace",
    ):
        assert summary[col].between(0, 1).all(), col
    # the data subspace (rank <= d_in) is the harder random reference
    sub, sphere = (
        summary.latent_stability_mean_baseline_subspace,
        summary.latent_stability_mean_baseline,
    )
    assert (sub >= sphere).all() and (summary.latent_stability_data_rank <= 32).all()
    lat = pd.read_parquet(root / "latents.parquet")
    alive = lat[lat["alive"]]
    first = summary.drop_duplicates("group_id").set_index("group_id")
    means = alive.groupby("group_id")["stability"].mean()
    assert np.allclose(first.loc[means.index, "latent_stability_mean"], means)
    before = (root / "latents.parquet").read_bytes()
    build_tables(RunStore(root).records(), root, bootstrap=50)
    assert (root / "latents.parquet").read_bytes() == before


def test_latents_section_builds(root: Path) -> None:
    sec = latents_section(RunView.open(root))
    tables = [b for b in sec.blocks if isinstance(b, Table)]
    figures = [b for b in sec.blocks if isinstance(b, Figure)]
    assert len(tables) == 2 and len(tables[0].rows) == 4  # one row per configuration
    assert len(tables[1].rows) == 4 + 2  # + pooled, pooled within configurations
    assert len(figures) == 1 and figures[0].png.startswith(b"\x89PNG")
    assert all("(" in cell for row in tables[1].rows for cell in row[1:])  # rho (n)


def test_latents_section_says_when_the_table_is_missing(root: Path, tmp_path: Path) -> None:
    (tmp_path / "summary.parquet").write_bytes((root / "summary.parquet").read_bytes())
    sec = latents_section(RunView.open(tmp_path))
    assert "latents.parquet is not in this run" in sec.blocks[0].text
