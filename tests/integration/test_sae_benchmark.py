"""The SAE training benchmark runs end to end in its --quick mode and prints its ratios."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_quick_prints_ratios(tmp_path) -> None:
    pytest.importorskip("sae_lens")
    env = os.environ | {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "sae_training.py"),
            "--quick",
            "--rounds",
            "1",
            "--json",
            str(tmp_path / "b.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    ).stdout
    assert "topk" in out and "relu" in out and out.count("ratio") == 2
    assert (tmp_path / "b.json").is_file()
