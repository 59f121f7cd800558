"""The study's consensus option (issue 14 item 4) through the real pipeline, on the tiny study.

A planted case with a known answer (every seed a permuted copy of one SAE: all latents
kept, the two half-seed consensus decoders agree at PW-MCC 1), the table against the store's
own files and an independent recomputation, reuse on a rerun, the report section, a
rerun without the option, and the config error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from study_fixtures import TINY, write_study

from husai import layout
from husai.config import ConfigError, StudyConfig
from husai.experiments import run_study
from husai.experiments.consensus_step import CONSENSUS_COLUMNS, run_consensus
from husai.experiments.store import RunStore
from husai.metrics.similarity import pw_mcc
from husai.saes import load_sae

SEEDS = [0, 1, 2, 3]
CONSENSUS = {"min_seeds": 2, "fit_steps": 30}


def _study(tmp: Path, **changes: object) -> Path:
    sae_train = {**TINY["sae_train"], "init_seeds": SEEDS}
    return write_study(tmp / "tiny.yaml", sae_train=sae_train, **changes)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("consensus_study")
    study = _study(tmp, consensus=CONSENSUS)
    out = tmp / "run"
    run_study(study, out=out)
    return study, out


def _table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(layout.table_path(out, layout.CONSENSUS))


def test_one_row_per_configuration_matching_the_store(finished: tuple[Path, Path]) -> None:
    _, out = finished
    df, summary = _table(finished[1]), pd.read_parquet(out / "summary.parquet")
    assert list(df.columns) == list(CONSENSUS_COLUMNS)
    assert sorted(df["group_id"]) == sorted(summary["group_id"].unique())
    results = pd.read_parquet(out / "results.parquet")
    for r in df.itertuples():
        seeds = results[results["group_id"] == r.group_id]
        assert r.n_seeds == len(SEEDS) and r.min_seeds == 2 and r.split_min_seeds == 2
        assert r.seed_explained_variance == pytest.approx(seeds["explained_variance"].mean())
        assert r.seed_l0 == pytest.approx(seeds["l0"].mean())
        if r.n_kept == 0:
            continue
        full = _dir(out, r.group_id, "all")
        summary_json = json.loads((full / "consensus.json").read_text())
        assert load_sae(full).W_dec.shape[0] == r.n_kept == summary_json["n_kept"]
        assert r.k == min(max(1, round(seeds["l0"].mean())), r.n_kept)
        assert r.explained_variance == pytest.approx(
            summary_json["consensus_eval"]["explained_variance"]
        )


def test_split_agreement_is_pw_mcc_of_the_half_decoders(finished: tuple[Path, Path]) -> None:
    _, out = finished
    split = _table(out).dropna(subset=["split_pw_mcc"])
    assert len(split) > 0
    for r in split.itertuples():
        halves = load_file(_dir(out, r.group_id, "all").parent / "split.safetensors")
        assert len(halves["W_dec_a"]) == r.split_kept_a and len(halves["W_dec_b"]) == r.split_kept_b
        assert r.split_pw_mcc == pytest.approx(
            pw_mcc(halves["W_dec_a"], halves["W_dec_b"]), abs=1e-12
        )
        assert np.isfinite(r.split_baseline_hardest) and 0 < r.split_baseline_hardest < 1


def test_permuted_copies_keep_every_latent_and_agree_exactly(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """Known answer: seeds 1-3 replaced by permuted copies of seed 0."""
    study, out = finished
    root = tmp_path / "planted"
    shutil.copytree(out, root)
    records = RunStore(root).records()
    rec = next(r for r in records if r["unit"]["arch"] == "topk")
    group = rec["saes"][0]["group_id"]
    saes = sorted((s for s in rec["saes"] if s["group_id"] == group), key=lambda s: s["seed"])
    base = load_file(
        layout.sae_dir(root, rec["unit_id"], saes[0]["sae_id"]) / "sae_weights.safetensors"
    )
    width = base["W_dec"].shape[0]
    for i, sae in enumerate(saes[1:], start=1):
        perm = torch.randperm(width, generator=torch.Generator().manual_seed(i))
        weights = {**base, "W_dec": base["W_dec"][perm], "W_enc": base["W_enc"][:, perm]}
        weights["b_enc"] = base["b_enc"][perm]
        path = layout.sae_dir(root, rec["unit_id"], sae["sae_id"]) / "sae_weights.safetensors"
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    cfg = StudyConfig.from_yaml(study, ["consensus.min_seeds=4"])
    acts = {(c, h): layout.activations_dir(root, c, h) for c in cfg.checkpoints for h in cfg.hooks}
    df = run_consensus(cfg, root, [{**rec, "saes": saes}], acts)
    row = df.set_index("group_id").loc[group]
    assert row["n_kept"] == width and row["split_kept_a"] == row["split_kept_b"] == width
    dec = load_sae(_dir(root, group, "all")).W_dec
    assert pw_mcc(dec, base["W_dec"]) == pytest.approx(1.0, abs=1e-6)
    assert row["split_pw_mcc"] == pytest.approx(1.0, abs=1e-6)


def test_rerun_reuses_consensus_and_the_report_has_the_section(finished: tuple[Path, Path]) -> None:
    study, out = finished
    summaries = sorted((out / layout.CONSENSUS).rglob("consensus.json"))
    assert summaries
    before = {p: p.stat().st_mtime_ns for p in summaries}
    table = _table(out)
    run_study(study, out=out)
    assert {p: p.stat().st_mtime_ns for p in summaries} == before
    pd.testing.assert_frame_equal(_table(out), table)
    heads = [
        line for line in (out / "report.md").read_text().splitlines() if line.startswith("## ")
    ]
    assert heads[7:10] == [
        "## 8. Stable features by construction",
        "## 9. Guidelines",
        "## 10. Failures and provenance",
    ]


def test_a_rerun_without_the_option_drops_the_table(
    tmp_path: Path, finished: tuple[Path, Path]
) -> None:
    _, out = finished
    root = tmp_path / "copy"
    shutil.copytree(out, root)
    run_study(_study(tmp_path), out=root)
    assert not layout.table_path(root, layout.CONSENSUS).exists()
    assert "Stable features by construction" not in (root / "report.md").read_text()


def test_min_seeds_above_the_seeds_is_one_config_error(tmp_path: Path) -> None:
    path = _study(tmp_path, consensus={"min_seeds": 5})
    with pytest.raises(ConfigError) as err:
        StudyConfig.from_yaml(path)
    msg = str(err.value)
    assert "consensus.min_seeds" in msg and "at most 4" in msg and "\n" not in msg


def _dir(root: Path, group_id: str, variant: str) -> Path:
    """A configuration's consensus SAE, found through its seeds' SAE ids."""
    results = pd.read_parquet(root / "results.parquet")
    sae_id = results.loc[results["group_id"] == group_id, "sae_id"].iloc[0]
    return (
        layout.consensus_dir(root, group_id.split("/")[0], sae_id.rsplit("-seed", 1)[0]) / variant
    )


def test_a_corrupt_table_is_a_note_in_the_report(
    tmp_path: Path, finished: tuple[Path, Path]
) -> None:
    from husai.report import build_report

    _, out = finished
    root = tmp_path / "copy"
    shutil.copytree(out, root)
    layout.table_path(root, layout.CONSENSUS).write_bytes(b"not parquet")
    build_report(root)
    text = (root / "report.md").read_text()
    assert "## 8. Stable features by construction" in text
    assert "consensus.parquet could not be read" in text
