"""A study's run store under damage and failure: redone units, a full disk, Ctrl-C, a held
lock, and bad hooks, checkpoints or ``transformer_run`` refused before anything is written.

One small study (three TopK units) is run once; each test works on a copy of its store.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from pandas.testing import assert_frame_equal
from study_fixtures import TINY, write_study

from cli_helpers import invoke_husai
from husai.config import StudyConfig
from husai.experiments import run_study
from husai.experiments.runner import check_hooks_and_checkpoints, model_to_reuse
from husai.experiments.store import LOCK_NAME, RunStore

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("results", "pairs", "summary", "dynamics")
SMALL = {
    "grid": {"archs": ["topk"], "widths": [4, 8, 16], "k": [2]},
    "sae_train": {**TINY["sae_train"], "init_seeds": [0, 1], "n_snapshots": 2},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(study yaml, store root) of a finished small study; copy the store before changing it."""
    tmp = tmp_path_factory.mktemp("small")
    study = write_study(tmp / "small.yaml", **SMALL)
    return study, Path(run_study(study, out=tmp / "store", report=False))


@pytest.fixture
def store(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished[1], tmp_path / "store"))


def _stamps(root: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (root / "units").glob("*/unit.json")}


def _units(root: Path) -> list[Path]:
    return sorted(p for p in (root / "units").iterdir() if not p.name.startswith("."))


# --- a damaged unit is redone, the rest skipped -------------------------------------


def test_a_unit_with_a_missing_or_corrupt_sae_file_is_redone(
    finished: tuple[Path, Path], store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study, reference = finished
    missing, corrupt, intact = _units(store)
    lost = next((missing / "saes").iterdir()) / "sae_weights.safetensors"
    lost.unlink()
    cfg = next((corrupt / "saes").iterdir()) / "cfg.json"
    cfg.write_text(cfg.read_text().replace('"d_in"', '"d_IN"'))  # same size, other bytes
    before = _stamps(store)
    with caplog.at_level(logging.WARNING, logger="husai.experiments.store"):
        run_study(study, out=store, report=False)
    after = _stamps(store)
    assert after[intact.name] == before[intact.name]  # skipped
    assert (
        after[missing.name] != before[missing.name] and after[corrupt.name] != before[corrupt.name]
    )
    rel = lambda p, u: p.relative_to(u).as_posix()  # noqa: E731
    assert f"unit {missing.name}: {rel(lost, missing)} is missing; redoing it" in caplog.text
    assert f"unit {corrupt.name}: {rel(cfg, corrupt)} fails its checksum" in caplog.text
    assert lost.is_file() and '"d_in"' in cfg.read_text()
    assert all(RunStore(store).is_done(u.name) for u in _units(store))
    for name in TABLES:
        assert_frame_equal(
            pd.read_parquet(store / f"{name}.parquet"),
            pd.read_parquet(reference / f"{name}.parquet"),
        )


# --- full disk and Ctrl-C: one line, lock released, nothing partial -----------------


def test_a_full_disk_is_one_line_and_keeps_no_partial_unit(
    finished: tuple[Path, Path], store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redo = _units(store)[0]
    shutil.rmtree(redo)

    def full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("husai.experiments.store.atomic_write_bytes", full)
    code, _, err = invoke_husai("sweep", finished[0], "--out", store)
    assert code == 2, err
    assert err.strip().splitlines()[-1] == (
        f"error: disk full while writing {redo}; no partial files were kept; "
        "free space and rerun to resume"
    )
    assert "Traceback" not in err
    assert not redo.exists() and not list((store / "units").glob(".*"))
    assert (store / LOCK_NAME).read_text() == ""


def test_ctrl_c_says_that_rerunning_resumes(
    finished: tuple[Path, Path], store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from husai.experiments import executors

    first, second = _units(store)[:2]
    shutil.rmtree(first)
    shutil.rmtree(second)
    real, calls = executors.execute_unit, []

    def interrupted_second(payload: Any) -> Any:
        calls.append(payload.unit_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(payload)

    monkeypatch.setattr(executors, "execute_unit", interrupted_second)
    code, _, err = invoke_husai("sweep", finished[0], "--out", store)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == (
        f"run interrupted; finished units are kept in {store}; rerun the same command to resume"
    )
    assert "Traceback" not in err
    done = [u.name for u in _units(store) if RunStore(store).is_done(u.name)]
    assert calls[0] in done and calls[1] not in done and len(done) == 2
    assert (store / LOCK_NAME).read_text() == ""


def test_a_second_run_on_a_locked_store_exits_2_naming_the_holder(
    finished: tuple[Path, Path], store: Path
) -> None:
    import os

    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.name != LOCK_NAME}
    with RunStore(store).lock():
        code, _, err = invoke_husai("run", finished[0], "--out", store)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"run store in use by PID {os.getpid()}" in lines[0], err
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.name != LOCK_NAME} == before


def test_a_stale_lock_is_recovered_by_the_next_run(
    finished: tuple[Path, Path], store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (store / LOCK_NAME).write_text(json.dumps({"pid": 4_000_000_001, "host": "elsewhere"}))
    with caplog.at_level(logging.WARNING, logger="husai.experiments.store"):
        run_study(finished[0], out=store, report=False)
    assert "recovered a stale lock left by PID 4000000001" in caplog.text
    assert (store / LOCK_NAME).read_text() == ""


# --- checked before anything is written -----------------------------------------------


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("the study started: its bad input was not refused")

    monkeypatch.setattr("husai.experiments.runner.ensure_model", refuse)


def _refused(study: Path, out: Path, *expected: str) -> str:
    code, _, err = invoke_husai("run", study, "--out", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def _reusing_study(path: Path, **grid: object) -> Path:
    """A small study on the committed model (its config, not TINY's task/model/train)."""
    cfg = {k: v for k, v in TINY.items() if k not in ("task", "model", "train")}
    cfg["transformer_run"] = str(ROOT / "artifacts" / "default_model")
    cfg["transformer_config"] = str(ROOT / "configs" / "models" / "default.yaml")
    cfg["grid"] = {**SMALL["grid"], **grid}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.usefixtures("no_work")
def test_a_bad_hook_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s.yaml", grid={**SMALL["grid"], "hooks": ["blocks.0.hook_x"]})
    _refused(study, tmp_path / "o", f"{study}: grid.hooks: hook 'blocks.0.hook_x' does not exist")


@pytest.mark.usefixtures("no_work")
def test_a_checkpoint_training_will_not_save_is_refused(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s.yaml", grid={**SMALL["grid"], "checkpoints": ["step_7"]})
    _refused(
        study, tmp_path / "o", f"{study}: grid.checkpoints:", "step_0, step_1, step_30", "'step_7'"
    )


@pytest.mark.usefixtures("no_work")
def test_a_checkpoint_the_reused_model_lacks_is_refused(tmp_path: Path) -> None:
    study = _reusing_study(tmp_path / "s.yaml", checkpoints=["final", "step_76"])
    _refused(study, tmp_path / "o", "grid.checkpoints:", "default_model", "step_75,", "'step_76'")


@pytest.mark.usefixtures("no_work")
def test_a_mistyped_transformer_run_is_an_error(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s.yaml", transformer_run="artifacts/defualt_model")
    _refused(
        study,
        tmp_path / "o",
        f"{study}: transformer_run: no model run at artifacts/defualt_model",
        "transformer_run: null",
    )


def test_the_committed_studies_reuse_their_committed_models() -> None:
    from husai.experiments.suite import is_suite, load_members

    for path in sorted((ROOT / "configs" / "studies").glob("*.yaml")):
        studies = load_members(path)[1] if is_suite(path) else [StudyConfig.from_yaml(path)]
        for study in studies:
            if study.language_model is None:
                _check_reuse(study, path)
            else:  # a language-model study reads the offline demo model, nothing from a hub
                assert study.language_model.model == "minilm", path


def _check_reuse(study: StudyConfig, path: Path) -> None:
    reuse = model_to_reuse(study, path)
    model = {"add": "default_model"}.get(study.task.op, f"{study.task.op}_model")
    assert reuse is not None and reuse.resolve() == ROOT / "artifacts" / model, path
    check_hooks_and_checkpoints(study, path, reuse)


@pytest.mark.usefixtures("no_work")
def test_a_task_without_ground_truth_is_refused_before_training(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s.yaml", task={**TINY["task"], "op": "div"})
    _refused(study, tmp_path / "o", f"{study}: task.op: 'div'", "supported: add, sub, mul")
