"""The Ray executor on a local 2-CPU cluster: the study completes, and a worker that dies
mid-task (fault injection: each unit's first attempt exits the worker process) is retried
by Ray until the study completes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from study_fixtures import write_study

from husai.experiments import run_study

ray = pytest.importorskip("ray", reason="ray is an optional extra (pip install 'husai[ray]')")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    import os

    fault_dir = tmp_path_factory.mktemp("faults")
    os.environ["HUSAI_FAULT_DIR"] = str(fault_dir)  # inherited by the local workers
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield fault_dir
    ray.shutdown()
    del os.environ["HUSAI_FAULT_DIR"]


def test_ray_study_survives_killed_workers(ray_cluster: Path, tmp_path: Path) -> None:
    study = write_study(
        tmp_path / "s.yaml",
        metrics={"baseline_trials": 2, "bootstrap": 20, "loss_recovered": False},
    )
    root = Path(run_study(study, out=tmp_path / "store", executor="ray", report=False))
    crashed = sorted(p.name for p in ray_cluster.iterdir())
    assert len(crashed) == 2, "every unit's first attempt should have killed its worker"
    results = pd.read_parquet(root / "results.parquet")
    assert len(results) == 12 and (results["status"] == "ok").all()
    assert set(results["unit_id"]) == set(crashed)
    assert not pd.read_parquet(root / "pairs.parquet").empty
