"""The failure paths a user hits through the CLI: one line on stderr, exit 2, nothing written.

Each test runs the real ``husai`` typer app (in process, with typer's CliRunner) and
checks the message, the exit code and that no file appeared.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from study_fixtures import write_study
from typer.testing import CliRunner

from cli_helpers import invoke_husai
from husai.cli import app
from husai.io import atomic_save_safetensors, load_safetensors

ROOT = Path(__file__).resolve().parents[2]
TOPK = ROOT / "configs" / "examples" / "topk_16x.yaml"
STUDY = ROOT / "configs" / "studies" / "default.yaml"
D = 8


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every command from an empty directory, so default outputs would show up there;
    a study that gets past its checks fails at once instead of training a model."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HUSAI_CACHE_DIR", "off")

    def no_model(*_: object) -> None:
        raise AssertionError("the study started: its bad input was not refused")

    monkeypatch.setattr("husai.experiments.runner.ensure_model", no_model)


def _one_error_line(args: list[object], *expected: str) -> str:
    code, _, err = invoke_husai(*args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


# --- husai report -------------------------------------------------------------------


def test_report_on_a_directory_that_is_not_a_run_store(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a study")
    _one_error_line(["report", plain], f"{plain}: not a run store", "study.yaml")
    assert _files(plain) == {Path("notes.txt")}


# --- empty configs ------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
@pytest.mark.parametrize("command", ["train-saes", "run", "sweep", "validate"])
def test_an_empty_config_is_an_error(tmp_path: Path, command: str, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    args: list[object] = [command, path]
    if command in ("train-saes", "run", "sweep"):
        args += ["--out", tmp_path / "out"]
    if command == "train-saes":  # were the config accepted, this would fail fast, differently
        args += ["--activations", tmp_path / "no_acts"]
    _one_error_line(args, f"{path}: <root>:", "empty config")
    assert _files(tmp_path) == {Path("empty.yaml")}


# --- husai validate -----------------------------------------------------------------


@pytest.mark.parametrize(("path", "kind"), [(TOPK, "experiment"), (STUDY, "study")])
def test_validate_says_which_kind_it_read(path: Path, kind: str) -> None:
    code, out, err = invoke_husai("validate", path)
    assert code == 0, err
    first, rest = out.split("\n", 1)
    assert first == f"# {path}: valid {kind} config"
    resolved = yaml.safe_load(rest)
    assert ("grid" in resolved) == (kind == "study") and ("sae" in resolved) == (kind != "study")


def test_validate_study_errors_name_the_study_field(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s.yaml", metrics={"baseline_trials": 0})
    _one_error_line(["validate", study], f"{study}: metrics.baseline_trials:")


def test_validate_refuses_a_mix_of_both_kinds(tmp_path: Path) -> None:
    path = tmp_path / "mixed.yaml"
    path.write_text("sae:\n  arch: topk\ngrid:\n  archs: [topk]\n")
    _one_error_line(["validate", path], "experiment key(s) ['sae']", "study key(s) ['grid']")


def test_validate_kind_can_be_forced() -> None:
    _one_error_line(["validate", STUDY, "--kind", "experiment"], f"{STUDY}: ", "unknown key")


# --- duplicate seeds ----------------------------------------------------------------


def test_train_saes_refuses_duplicate_seeds(tmp_path: Path) -> None:
    acts = _acts_dir(tmp_path)
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(_tiny_experiment(init_seeds=[0, 0, 1]))
    before = _files(tmp_path)
    line = _one_error_line(
        ["train-saes", cfg, "--activations", acts, "--out", tmp_path / "out"],
        f"{cfg}: sae_train.init_seeds: expected distinct seeds",
        "[0] repeated",
    )
    assert "[0, 0, 1]" in line
    assert _files(tmp_path) == before


def test_a_study_refuses_duplicate_seeds(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s.yaml", sae_train={"init_seeds": [3, 1, 3]})
    _one_error_line(["run", study, "--out", tmp_path / "o"], "sae_train.init_seeds", "[3] repeated")
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()


# --- --set sae.arch ------------------------------------------------------------------


def test_set_arch_drops_the_old_architectures_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="husai.config"):
        code, out, err = invoke_husai("validate", TOPK, "--set", "sae.arch=jumprelu")
    assert code == 0, err
    sae = yaml.safe_load(out)["sae"]
    assert sae["arch"] == "jumprelu" and "k" not in sae
    assert sae["d_sae"] == yaml.safe_load(TOPK.read_text())["sae"]["d_sae"]
    assert "--set sae.arch=jumprelu: dropped sae.k" in caplog.text


def test_set_arch_keeps_a_field_set_with_it() -> None:
    _one_error_line(
        ["validate", TOPK, "--set", "sae.arch=jumprelu", "--set", "sae.k=4"],
        f"{TOPK}: sae.k: unknown key",
    )


# --- husai run --out ----------------------------------------------------------------


def test_run_into_an_impossible_out_dir(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s.yaml")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    before = _files(tmp_path)
    for command in ("run", "sweep"):
        _one_error_line(
            [command, study, "--out", blocker / "x"],
            f"--out {blocker / 'x'}: {blocker} is a file, not a directory",
        )
    assert _files(tmp_path) == before


# --- husai analyze --------------------------------------------------------------------


def _acts_dir(tmp_path: Path) -> Path:
    acts = torch.randn(256, D, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "acts"
    atomic_save_safetensors(out / "acts.safetensors", {"acts": acts})
    return out


def _tiny_experiment(init_seeds: list[int]) -> str:
    return yaml.safe_dump(
        {
            "name": "tiny",
            "sae": {"arch": "topk", "d_sae": 16, "k": 2},
            "sae_train": {
                "init_seeds": init_seeds,
                "steps": 4,
                "batch_size": 32,
                "warmup_steps": 1,
                "n_snapshots": 1,
                "checkpoint_every": 1000,
            },
            "tracking": {"mode": "disabled"},
        }
    )


@pytest.fixture
def trained(tmp_path: Path) -> Path:
    """``husai train-saes`` output: three SAE dirs beside group_*.json and snapshots_*."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(_tiny_experiment(init_seeds=[0, 1, 2]))
    out = tmp_path / "saes"
    code, _, err = invoke_husai(
        "train-saes", cfg, "--activations", _acts_dir(tmp_path), "--out", out
    )
    assert code == 0, err
    return out


def _sae_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if (p / "cfg.json").is_file())


@pytest.mark.parametrize("dotglob", [False, True])
def test_analyze_takes_the_natural_glob(
    trained: Path, tmp_path: Path, dotglob: bool, caplog: pytest.LogCaptureFixture
) -> None:
    glob = sorted(p for p in trained.glob("*") if dotglob or not p.name.startswith("."))
    group_json = [p for p in glob if p.name.startswith("group_")]
    assert group_json  # what used to fail
    with caplog.at_level(logging.WARNING, logger="husai.metrics.analyze"):
        code, out, err = invoke_husai("analyze", *glob, "--out", tmp_path / "a.json")
    assert code == 0, err
    assert "stability over 3 SAEs (3 pairs)" in out
    assert f"skipping {group_json[0]} (a file" in caplog.text
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["sae_dirs"] == [str(p) for p in _sae_dirs(trained)]


def test_analyze_takes_the_group_directory(trained: Path, tmp_path: Path) -> None:
    code, out, err = invoke_husai("analyze", trained, "--out", tmp_path / "a.json")
    assert code == 0, err
    assert "stability over 3 SAEs (3 pairs)" in out


def test_analyze_needs_two_saes(trained: Path, tmp_path: Path) -> None:
    one = _sae_dirs(trained)[0]
    _one_error_line(
        ["analyze", one, "--out", tmp_path / "a.json"], "at least 2 SAE directories", "got 1"
    )
    assert not (tmp_path / "a.json").exists()


def test_analyze_refuses_the_same_directory_twice(trained: Path, tmp_path: Path) -> None:
    a, b = _sae_dirs(trained)[:2]
    _one_error_line(
        ["analyze", a, b, trained / ".." / trained.name / a.name, "--out", tmp_path / "a.json"],
        "given twice",
    )
    assert not (tmp_path / "a.json").exists()


def test_analyze_refuses_identical_weights(trained: Path, tmp_path: Path) -> None:
    a, b = _sae_dirs(trained)[:2]
    copy = shutil.copytree(a, tmp_path / "copy")
    _one_error_line(
        ["analyze", a, b, copy, "--out", tmp_path / "a.json"], f"{copy}: same weights as {a}"
    )
    assert not (tmp_path / "a.json").exists()


def test_analyze_names_the_file_with_nan_weights(trained: Path, tmp_path: Path) -> None:
    a, b = _sae_dirs(trained)[:2]
    weights = b / "sae_weights.safetensors"
    tensors = load_safetensors(weights)
    tensors["W_dec"][3, 1] = float("nan")
    atomic_save_safetensors(weights, tensors)
    _one_error_line(
        ["analyze", a, b, "--out", tmp_path / "a.json"],
        f"{weights}: W_dec: expected finite values",
    )
    assert not (tmp_path / "a.json").exists()


def test_analyze_checks_cfg_d_in_against_the_weights(trained: Path, tmp_path: Path) -> None:
    a, b = _sae_dirs(trained)[:2]
    cfg_path = b / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["d_in"] = D + 1
    cfg_path.write_text(json.dumps(cfg))
    _one_error_line(
        ["analyze", a, b, "--out", tmp_path / "a.json"],
        f"{cfg_path}: d_in: expected {D} (the weights' shape), got {D + 1}",
    )
    assert not (tmp_path / "a.json").exists()


def test_analyze_a_directory_without_saes(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    _one_error_line(
        ["analyze", tmp_path / "nothing", tmp_path / "nothing2", "--out", tmp_path / "a.json"],
        f"{tmp_path / 'nothing'}: not an SAE directory",
    )


def test_threads_option_sets_torch_threads_and_refuses_zero() -> None:
    import torch

    old = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["--threads", "1", "validate", "--help"])
        assert result.exit_code == 0
        assert torch.get_num_threads() == 1
        bad = CliRunner().invoke(app, ["--threads", "0", "validate", "x.yaml"])
        assert bad.exit_code == 2
    finally:
        torch.set_num_threads(old)
