"""Without chromium, CI warns that the browser test will be skipped, and pytest says how to install it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "apt-get install chromium"


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.mark.parametrize("apt", ["failing", "absent"])
def test_ci_run_warns_that_the_browser_test_is_skipped(tmp_path: Path, apt: str) -> None:
    """A PATH with no chromium: .ci/run tries apt-get if present, then says what happens."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(shutil.which("dirname"), bin_dir / "dirname")
    _stub(bin_dir, "make", f'echo "make $1" >> {tmp_path / "make.log"}')
    if apt == "failing":
        _stub(bin_dir, "apt-get", "exit 100")
    proc = subprocess.run(
        ["/bin/bash", str(ROOT / ".ci" / "run")],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "browser test will be skipped" in proc.stderr and "will fail" not in proc.stderr
    if apt == "failing":
        assert INSTALL in proc.stderr
    assert (tmp_path / "make.log").read_text().split("\n")[:2] == ["make lint", "make test"]


def test_browser_test_skip_names_the_install_command(tmp_path: Path) -> None:
    """pytest's summary (-ra, from pyproject) gives the reason, with the install command."""
    empty = tmp_path / "empty_path"
    empty.mkdir()
    test = "tests/integration/test_report.py::test_page_loads_in_headless_chromium"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=ROOT,
        env={**os.environ, "PATH": str(empty)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(summary) == 1 and INSTALL in summary[0], proc.stdout[-2000:]
