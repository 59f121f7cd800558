"""Studies end to end on a tiny task: tables, resume, kill-and-resume, failures, W&B, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from pandas.testing import assert_frame_equal
from study_fixtures import write_study

from husai.config import StudyConfig
from husai.experiments import run_study
from husai.experiments.grid import expand_grid
from husai.experiments.store import RunStore
from husai.experiments.unit import UnitPayload, execute_unit
from husai.layout import TABLES
from husai.schema import DYNAMICS_COLUMNS, PAIR_COLUMNS, RESULT_HEAD, SUMMARY_HEAD


def _tables(root: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(root / f"{name}.parquet") for name in TABLES}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted run of the tiny study: (study yaml, store root)."""
    tmp = tmp_path_factory.mktemp("study")
    study = write_study(tmp / "tiny.yaml")
    root = run_study(study, out=tmp / "store", report=False)
    return study, Path(root)


def test_tables_hold_every_sae_and_pair_with_baselines(finished: tuple[Path, Path]) -> None:
    _, root = finished
    t = _tables(root)
    results, pairs, summary = t["results"], t["pairs"], t["summary"]
    assert (
        len(results) == 2 * 2 * 3 and (results["status"] == "ok").all()
    )  # archs x sparsities x seeds
    assert set(results["arch"]) == {"topk", "relu"}
    for col in ("explained_variance", "mse", "l0", "dead_fraction", "loss_recovered", "gt_mcc"):
        assert results[col].notna().all(), col
    topk = results[results["arch"] == "topk"]
    assert (topk["l0"].round(6) == topk["sparsity"]).all()  # TopK fires exactly k per input
    pw = pairs[pairs["metric"] == "pw_mcc"]
    assert len(pw) == 2 * 2 * 3  # groups x seed pairs
    assert pw["baseline"].between(0.05, 0.95).all() and pw["baseline_init"].notna().all()
    assert ((pw["excess"] - (pw["value"] - pw["baseline"])).abs() < 1e-9).all()
    for metric in ("pw_mcc", "pw_mcc_alive", "mmcs", "shared_fraction", "activation_mcc"):
        assert metric in set(pairs["metric"]), metric
    assert len(summary[summary["metric"] == "pw_mcc"]) == 4
    assert not t["dynamics"].empty
    assert (root / "provenance.json").is_file() and (root / "model" / "curves.json").is_file()
    # the writer's columns are the declared schema, in its order
    assert tuple(pairs.columns) == PAIR_COLUMNS and tuple(t["dynamics"].columns) == DYNAMICS_COLUMNS
    assert tuple(results.columns[: len(RESULT_HEAD)]) == RESULT_HEAD
    assert tuple(summary.columns[: len(SUMMARY_HEAD)]) == SUMMARY_HEAD


def test_rerun_skips_finished_units(finished: tuple[Path, Path]) -> None:
    study, root = finished
    before = {p: p.stat().st_mtime_ns for p in (root / "units").glob("*/unit.json")}
    tables = _tables(root)
    run_study(study, out=root, report=False)
    after = {p: p.stat().st_mtime_ns for p in (root / "units").glob("*/unit.json")}
    assert before == after
    for name, df in _tables(root).items():
        assert_frame_equal(df, tables[name])


def test_sigkill_then_rerun_is_bit_identical(finished: tuple[Path, Path], tmp_path: Path) -> None:
    study, reference = finished
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "husai.cli", "sweep", str(study), "--out", str(out)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "units").glob("*/unit.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-study: one unit written, the next in flight
    proc.wait()
    done = list((out / "units").glob("*/unit.json"))
    assert len(done) == 1, "expected the kill to land after the first unit"
    subprocess.run(cmd, check=True, capture_output=True)
    for name, df in _tables(out).items():
        assert_frame_equal(df, _tables(reference)[name], check_exact=True)


def test_failed_unit_is_recorded_and_study_continues(tmp_path: Path) -> None:
    study = StudyConfig.from_yaml(write_study(tmp_path / "s.yaml"))
    unit = expand_grid(study)[0]
    acts = torch.randn(64, 8)
    acts[3, 2] = float("nan")
    result = execute_unit(
        UnitPayload(unit=unit, unit_id="u-nan", acts_ND=acts, metrics=study.metrics)
    )
    assert result.status == "failed" and "NaN" in result.error
    store = RunStore(tmp_path / "store")
    store.write_unit(result, unit.content())
    assert not store.is_done("u-nan") and store.records()[0]["error"] == result.error


def test_wandb_offline_run_dirs_are_written(tmp_path: Path) -> None:
    study = write_study(
        tmp_path / "s.yaml",
        tracking={"mode": "offline", "project": "husai-test"},
        grid={"archs": ["topk"], "widths": [16], "k": [2], "hooks": ["blocks.0.hook_resid_post"]},
    )
    root = Path(run_study(study, out=tmp_path / "store", report=False))
    runs = list((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_bad_grid_value_fails_before_training(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s.yaml", grid={"archs": ["topk"], "widths": [4], "k": [8]})
    proc = subprocess.run(
        [sys.executable, "-m", "husai.cli", "run", str(study), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "grid" in proc.stderr and "k=8 > width 4" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
