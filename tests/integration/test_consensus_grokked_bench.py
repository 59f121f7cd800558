"""The grokked-model consensus benchmark (issue 14, 3b and 3c) runs end to end in --quick mode
at a tiny size and writes its markdown tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_consensus_grokked_quick_writes_tables(tmp_path) -> None:
    env = os.environ | {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out_md = tmp_path / "consensus_grokked.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "consensus_grokked.py"), "--quick"]
    cmd += ["--widths", "24", "--steps", "100", "--boot", "50", "--out", str(out_md)]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=600, check=True, cwd=tmp_path
    ).stdout
    text = out_md.read_text()
    assert text in out
    assert "## 3(b)" in text and "## 3(c)" in text and "Machine: " in text
    for name in ("TopK w24 k=2", "ReLU w24 l1=2"):
        row = next(line for line in text.splitlines() if f"| {name} |" in line)
        assert "met" in row  # the goal column says met or what misses
    calibration = [line for line in text.splitlines() if re.match(r"\| [01]\.\d\d \| \d+ \|", line)]
    assert [line.split("|")[1].strip() for line in calibration] == [
        "0.00",
        "0.25",
        "0.50",
        "0.75",
        "1.00",
    ]
    pooled = next(line for line in text.splitlines() if line.startswith("| all | **pooled**"))
    auc = float(pooled.rstrip(" |").split("|")[-1])
    assert 0.0 <= auc <= 1.0
