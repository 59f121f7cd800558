"""husai installed without ``-e`` finds its shipped configs and model run from any directory.

The package is installed with ``pip install .`` (a real wheel, not editable) from a copy of
the source into a fresh venv. Nothing is downloaded: the venv is made from this Python's base
interpreter and sees this environment's dependencies through a ``.pth`` line naming its
site-packages. Python does not read the ``.pth`` files inside a directory that a ``.pth``
line adds, so the editable husai of this environment stays invisible there, and the venv's
own site-packages (where the wheel goes) comes first on ``sys.path``. pip runs with
``--no-deps --no-build-isolation --no-index`` (setuptools from this environment, no network)
and ``--ignore-installed``, so it never touches this environment's husai.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("pyproject.toml", "README.md", "src", "configs", "artifacts")
TINY_RUN = [
    "--set",
    "grid=[{hooks: [blocks.0.hook_resid_post], archs: [topk], widths: [16], k: [2]}]",
    "--set",
    "sae_train.init_seeds=[0, 1]",
    "--set",
    "sae_train.steps=20",
    "--set",
    "metrics.baseline_trials=1",
    "--set",
    "metrics.bootstrap=10",
    "--set",
    "metrics.loss_recovered=false",
    "--set",
    "tracking.mode=disabled",
]


def _copy_source(dest: Path) -> Path:
    """The files a wheel is built from (symlinks kept, so _data points into the copy)."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    dest.mkdir()
    for name in SHIPPED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=skip)
        else:
            shutil.copy2(src, dest / name)
    return dest


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding husai installed from a wheel; returns its bin directory."""
    root = tmp_path_factory.mktemp("install")
    source = _copy_source(root / "source")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", root / "venv"], check=True)
    python = root / "venv" / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    (Path(site) / "_husai_test_deps.pth").write_text(deps + "\n")
    pip = ["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([python, *pip, "--ignore-installed", source], check=True, env=_env(), cwd=root)
    return python.parent


def test_the_wheel_holds_the_configs_and_the_committed_models(venv: Path, tmp_path: Path) -> None:
    probe = (
        "import husai, husai.resources as r; print(husai.__file__); "
        "print(r.shipped('artifacts/default_model')); print(r.shipped('configs/studies'))"
    )
    out = subprocess.run(
        [venv / "python", "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout.split()
    package, model, studies = (Path(line) for line in out)
    installed = venv.parent / "lib"
    assert package.is_relative_to(installed), package  # the wheel, not the editable source
    assert model.is_relative_to(installed) and not model.is_symlink()
    for run in (REPO / "artifacts").iterdir():  # every committed model run, file for file
        assert _files(model.parent / run.name) == _files(run), run
    assert _files(studies.parent) == _files(REPO / "configs")
    valid = subprocess.run(
        [venv / "husai", "validate", "configs/studies/default.yaml"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    assert valid.returncode == 0, valid.stderr
    assert "valid study config" in valid.stdout


@pytest.mark.slow  # about 40 s on an idle 2-core machine, over 60 s when it is shared
def test_husai_run_from_another_directory_uses_the_shipped_study_and_model(
    venv: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    cmd = [venv / "husai", "run", "configs/studies/default.yaml", "--out", store, *TINY_RUN]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shipped with husai" in done.stderr
    assert not (store / "default-model").exists()  # the shipped model run was reused
    results = pd.read_parquet(store / "results.parquet")
    assert len(results) == 2  # two seeds of one (arch, width, k)
    for table in ("pairs", "summary", "dynamics"):
        assert (store / f"{table}.parquet").is_file()
    assert (store / "report.html").is_file()
    assert not (tmp_path / "configs").exists()
