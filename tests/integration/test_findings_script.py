"""scripts/findings.py: README's numbers from a summary table, by the report's verdict rule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from husai.report.verdict import primary_table, stable_mask  # noqa: E402
from report_fixtures import make_run_store  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "findings.py"


def _findings():
    spec = importlib.util.spec_from_file_location("findings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_findings_counts_what_the_verdict_calls_stable(tmp_path, capsys) -> None:
    root = make_run_store(tmp_path / "run", "topk_stable")
    assert _findings().main([str(root / "summary.parquet")]) == 0
    out = capsys.readouterr().out
    df, _ = primary_table(pd.read_parquet(root / "summary.parquet"))
    n_stable = int(stable_mask(df, 0.7, 0.9).sum())
    assert 0 < n_stable < len(df)  # the fixture has both kinds, so the count can be wrong
    assert f"{n_stable} of {len(df)} configurations stable" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "@" in line]
    assert len(rows) == len(df)
    assert sum(line.endswith("| yes |") for line in rows) == n_stable


def test_findings_refuses_a_missing_file_in_one_line(tmp_path, capsys) -> None:
    assert _findings().main([str(tmp_path / "nope.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.parquet" in err[0]
