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
    assert (df["n_kept"] > 0).any() and df["error"].isna().all()
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


def _plant(out: Path, root: Path, decoders: list[torch.Tensor | None]) -> tuple[list, str, dict]:
    """A copy of the store whose first TopK group's seed i has decoder ``decoders[i]`` (None:
    unchanged), its encoder and bias permuted alike; returns the records, group and weights."""
    shutil.copytree(out, root)
    rec = next(r for r in RunStore(root).records() if r["unit"]["arch"] == "topk")
    group = rec["saes"][0]["group_id"]
    saes = sorted((s for s in rec["saes"] if s["group_id"] == group), key=lambda s: s["seed"])
    paths = [
        layout.sae_dir(root, rec["unit_id"], s["sae_id"]) / "sae_weights.safetensors" for s in saes
    ]
    assert saes[0]["sae_id"] == "k2-seed0", saes[0]["sae_id"]
    base = load_file(paths[0])
    for path, dec in zip(paths, decoders, strict=True):
        if dec is not None:
            save_file({k: v.contiguous() for k, v in {**base, "W_dec": dec}.items()}, str(path))
    return [{**rec, "saes": saes}], group, base


def _consensus(study: Path, root: Path, records: list, *overrides: str) -> pd.DataFrame:
    cfg = StudyConfig.from_yaml(study, list(overrides))
    acts = {(c, h): layout.activations_dir(root, c, h) for c in cfg.checkpoints for h in cfg.hooks}
    return run_consensus(cfg, root, records, acts).set_index("group_id")


def _seed0_decoder(out: Path) -> torch.Tensor:
    """The decoder of the planted group's seed 0 (the TopK k=2 configuration)."""
    return load_file(next(out.rglob("k2-seed0/sae_weights.safetensors")))["W_dec"]


def _permuted(x: torch.Tensor, seed: int) -> torch.Tensor:
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]


def test_permuted_copies_keep_every_latent_and_agree_exactly(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """Known answer: seeds 1-3 are permuted copies of seed 0's decoder."""
    study, out = finished
    dec0 = _seed0_decoder(out)
    records, group, base = _plant(
        out, tmp_path / "planted", [None] + [_permuted(dec0, i) for i in (1, 2, 3)]
    )
    assert torch.equal(base["W_dec"], dec0)
    row = _consensus(study, tmp_path / "planted", records, "consensus.min_seeds=4").loc[group]
    width = len(dec0)
    assert row["n_kept"] == width and row["split_kept_a"] == row["split_kept_b"] == width
    dec = load_sae(_dir(tmp_path / "planted", group, "all")).W_dec
    assert pw_mcc(dec, dec0) == pytest.approx(1.0, abs=1e-6)
    assert row["split_pw_mcc"] == pytest.approx(1.0, abs=1e-6)


def test_halves_of_two_dictionaries_compare_as_those_dictionaries(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """Known answer: seeds 0-1 hold dictionary A, seeds 2-3 A rotated by a random orthogonal
    Q. The halves are A and AQ, so their PW-MCC is pw_mcc(A, AQ); no direction is in 3 seeds,
    so the full consensus keeps nothing (a row of NaNs, not an error)."""
    study, out = finished
    a = _seed0_decoder(out)
    q, _ = torch.linalg.qr(
        torch.randn(a.shape[1], a.shape[1], generator=torch.Generator().manual_seed(0))
    )
    aq = a @ q
    decs = [a, _permuted(a, 1), aq, _permuted(aq, 2)]
    records, group, _ = _plant(out, tmp_path / "planted", decs)
    row = _consensus(study, tmp_path / "planted", records, "consensus.min_seeds=3").loc[group]
    assert row["n_kept"] == 0 and pd.isna(row["k"]) and np.isnan(row["explained_variance"])
    assert row["split_min_seeds"] == 2 and row["split_kept_a"] == row["split_kept_b"] == len(a)
    assert row["split_pw_mcc"] == pytest.approx(pw_mcc(a, aq), abs=1e-6)
    assert row["split_pw_mcc"] < 0.9  # a random rotation is not a relabelling


def test_a_broken_seed_sae_is_an_error_row_not_a_failed_study(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    study, out = finished
    a = _seed0_decoder(out)
    records, group, _ = _plant(
        out, tmp_path / "planted", [None, torch.full_like(a, float("nan")), None, None]
    )
    df = _consensus(study, tmp_path / "planted", records)
    assert df.loc[group, "n_kept"] == 0 and "NaN" in df.loc[group, "error"]


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


@pytest.mark.parametrize(
    ("min_seeds", "expected"), [(5, "at most 4"), (1, "greater than or equal to 2")]
)
def test_a_bad_min_seeds_is_one_config_error(tmp_path: Path, min_seeds: int, expected: str) -> None:
    path = _study(tmp_path, consensus={"min_seeds": min_seeds})
    with pytest.raises(ConfigError) as err:
        StudyConfig.from_yaml(path)
    msg = str(err.value)
    assert "min_seeds" in msg and expected in msg and "\n" not in msg


def _dir(root: Path, group_id: str, variant: str) -> Path:
    """A configuration's consensus SAE, found through its tag."""
    results = pd.read_parquet(root / "results.parquet")
    row = results.loc[results["group_id"] == group_id].iloc[0]
    tag = layout.config_tag(row["sparsity_name"], row["sparsity"])
    return layout.consensus_dir(root, group_id.split("/")[0], tag) / variant


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
