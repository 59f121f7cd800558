"""The CLI's own wiring: a light import, one error line per user mistake, shipped configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import invoke_husai
from husai.errors import RunInterrupted, UserError

HEAVY = ("torch", "transformer_lens", "sae_lens", "pandas", "husai.config")


def test_importing_the_cli_loads_no_heavy_module() -> None:
    """What keeps ``husai --help`` fast: commands import their library function when run."""
    probe = f"import sys, husai.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _raises(err: BaseException):
    def fake(*args: object, **kwargs: object) -> None:
        raise err

    return fake


def test_a_user_error_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("husai.report.build_report", _raises(UserError("run dir is empty")))
    code, out, err = invoke_husai("report", "somewhere")
    assert (code, out, err) == (2, "", "error: run dir is empty\n")


def test_ctrl_c_prints_its_message_and_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("husai.report.build_report", _raises(RunInterrupted("rerun to resume")))
    code, _, err = invoke_husai("report", "somewhere")
    assert (code, err) == (130, "rerun to resume\n")


def test_a_bug_is_not_turned_into_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("husai.report.build_report", _raises(RuntimeError("a bug")))
    from typer.testing import CliRunner

    from husai.cli import app

    result = CliRunner().invoke(app, ["report", "somewhere"])
    assert isinstance(result.exception, RuntimeError)


def test_a_relative_config_not_here_is_read_from_the_shipped_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke_husai("validate", "configs/studies/default.yaml")
    assert code == 0, err
    assert "transformer_run: artifacts/default_model" in out
    code, _, err = invoke_husai("validate", "configs/studies/nowhere.yaml")
    assert (code, err) == (2, "error: configs/studies/nowhere.yaml: file not found\n")


def test_a_config_here_wins_over_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "configs" / "examples" / "topk_16x.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("name: mine\nsae: {arch: topk, d_sae: 8, k: 2}\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke_husai("validate", "configs/examples/topk_16x.yaml")
    assert code == 0, err
    assert "name: mine" in out
