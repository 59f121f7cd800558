"""A suite runs one grid on several tasks and compares their verdicts side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cli_helpers import invoke_husai
from husai.errors import UserError
from husai.experiments.suite import is_suite, load_members
from husai.report.compare import build_comparison
from husai.report.verdict import primary_table, stable_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_fixtures import TINY, write_study  # noqa: E402

from report_fixtures import HOOKS, make_run_store  # noqa: E402

GRID = [{"archs": ["topk"], "widths": [16], "k": [2, 4], "hooks": ["blocks.0.hook_resid_post"]}]


def _suite(tmp_path: Path, studies: list[str], **extra: object) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "studies": studies, "grid": GRID, **extra}))
    return path


def test_shipped_tasks_suite_replaces_each_grid_and_keeps_each_model():
    assert is_suite("configs/studies/tasks.yaml") and not is_suite("configs/studies/default.yaml")
    suite, members = load_members("configs/studies/tasks.yaml")
    assert [m.task.op for m in members] == ["add", "sub", "mul"]
    assert [m.transformer_run for m in members] == [
        "artifacts/default_model",
        "artifacts/sub_model",
        "artifacts/mul_model",
    ]
    assert all(m.grid == suite.grid for m in members)
    assert len({m.name for m in members}) == 3


def test_suite_errors_are_one_line(tmp_path):
    write_study(tmp_path / "a.yaml")
    with pytest.raises(UserError, match="studies"):
        load_members(_suite(tmp_path, ["a.yaml"]))  # one member: nothing to compare
    with pytest.raises(UserError, match="share a name"):
        load_members(_suite(tmp_path, ["a.yaml", "a.yaml"]))
    with pytest.raises(UserError, match="file not found"):
        load_members(_suite(tmp_path, ["a.yaml", "missing.yaml"]))


def test_comparison_counts_match_each_members_verdict(tmp_path):
    stores = [
        make_run_store(tmp_path / "one", "topk_stable", hooks=HOOKS[:1]),
        make_run_store(tmp_path / "two", "nothing_beats", hooks=HOOKS[:1]),
    ]
    (tmp_path / "two" / "study.yaml").write_text("name: two\ntask: {op: sub}\n")
    (tmp_path / "two" / "provenance.json").unlink()
    md = build_comparison(tmp_path, stores, title="t").with_suffix(".md").read_text()
    stable = []
    for s in stores:
        df, _ = primary_table(pd.read_parquet(s / "summary.parquet"))
        stable.append(set(df.label[stable_mask(df, 0.7, 0.9)]))
    assert stable[0] and not stable[1]  # the fixtures' two scenarios
    assert f"| (a + b) mod 113 | {len(df)} | {len(stable[0])} |" in md
    assert f"| (a - b) mod 113 | {len(df)} | 0 |" in md
    jaccard = "| (a + b) mod 113 | (a - b) mod 113 | 0 | " + f"{len(stable[0])} | 0.000 |"
    assert jaccard in md
    assert (tmp_path / "report_files" / "suite_excess.png").is_file()


@pytest.mark.timeout(900)
def test_tiny_suite_runs_each_task_and_compares(tmp_path):
    write_study(tmp_path / "add.yaml")
    write_study(tmp_path / "sub.yaml", name="tinysub", task={**TINY["task"], "op": "sub"})
    suite = _suite(tmp_path, ["add.yaml", "sub.yaml"])
    code, out, err = invoke_husai("run", str(suite), "--out", str(tmp_path / "run"))
    assert code == 0, err
    run = tmp_path / "run"
    assert (run / "tiny" / "report.html").is_file() and (run / "tinysub" / "report.html").is_file()
    sub = yaml.safe_load((run / "studies" / "s-tinysub.yaml").read_text())
    assert sub["task"]["op"] == "sub" and sub["grid"][0]["k"] == [2, 4]
    md = (run / "report.md").read_text()
    assert "(a + b) mod 17" in md and "(a - b) mod 17" in md
    assert "Does the stable zone move?" in md and "could not be built" not in md
    assert str(run / "report.html") in out
    assert err.count("peak memory:") == 2  # one line per member study


def test_validate_prints_each_member():
    code, out, err = invoke_husai("validate", "configs/studies/tasks.yaml")
    assert code == 0, err
    assert "valid suite of 3 studies (tasks)" in out
    assert out.count("# study tasks-") == 3
