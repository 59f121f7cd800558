"""Build the study report for a tiny fabricated run store, and check what it contains.

The run store comes from ``tests/report_fixtures.py`` (the run store's tables, seeded
random numbers, SAE decoders built inside known Fourier planes). The browser test
loads the page in headless Chromium, fails on any console message (the page has no
script, so any message is an error) and checks that the screenshot is not blank.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from html import escape as html_escape
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from husai.errors import UserError  # noqa: E402
from husai.report import build_report  # noqa: E402
from report_fixtures import HOOKS, make_run_store  # noqa: E402

SECTIONS = [
    "1. The model",
    "2. The activations",
    "3. Stability",
    "4. The verdict",
    "5. Ground truth",
    "6. Dynamics",
    "7. Geometry",
    "8. Guidelines",
    "9. Failures and provenance",
]
BROKEN = "could not be built"


@pytest.fixture(scope="module")
def stable(tmp_path_factory) -> Path:
    root = make_run_store(tmp_path_factory.mktemp("stable") / "run", "topk_stable")
    build_report(root)
    return root


@pytest.fixture(scope="module")
def nothing(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("nothing") / "run"
    root = make_run_store(tmp, "nothing_beats", hooks=HOOKS[:1], archs=("relu", "topk"))
    build_report(root)
    return root


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    nxt = md.find("\n## ", start + 1)
    return md[start : nxt if nxt > 0 else None]


def test_every_section_present_with_embedded_figures(stable):
    html = (stable / "report.html").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html
    assert BROKEN not in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) >= 20
    from PIL import Image

    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.size[0] > 100 and img.size[1] > 100
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', html))
    assert "<script" not in html.lower()


def test_markdown_matches_html_and_links_existing_figures(stable):
    md = (stable / "report.md").read_text()
    for title in SECTIONS:
        assert f"## {title}" in md
    links = re.findall(r"\]\((report_files/[^)]+\.png)\)", md)
    assert len(links) >= 20
    assert all((stable / link).is_file() for link in links)
    guide = _section(md, "8. Guidelines")
    html = (stable / "report.html").read_text()
    first_bullet = next(line[2:] for line in guide.splitlines() if line.startswith("- "))
    assert html_escape(first_bullet) in html


def test_numbers_come_from_the_tables(stable):
    s = pd.read_parquet(stable / "summary.parquet")
    best = s[s.metric == "pw_mcc_alive"].sort_values("mean").iloc[-1]
    md = (stable / "report.md").read_text()
    verdict = _section(md, "4. The verdict")
    assert f"{best['mean']:.3f}" in verdict
    assert f"{best['explained_variance_mean']:.3f}" in verdict
    r = pd.read_parquet(stable / "results.parquet")
    failures = _section(md, "9. Failures and provenance")
    assert f"({(r.status != 'ok').sum()} of {len(r)})" in failures
    assert "TrainingDivergedError" in failures and "0123456789abcdef" in failures


def test_guidelines_follow_the_data(stable, nothing):
    good = _section((stable / "report.md").read_text(), "8. Guidelines")
    bad = _section((nothing / "report.md").read_text(), "8. Guidelines")
    assert good != bad
    assert "Recommended: topk" in good and "Recommended" not in bad
    assert "Nothing beats its hardest random baseline" in bad
    assert "not grokked" not in good  # the fixture's model has test_acc 1.0
    s = pd.read_parquet(stable / "summary.parquet")
    top = s[(s.metric == "pw_mcc_alive") & (s.arch == "topk")]["mean"].max()
    assert f"{top:.3f}" in good
    assert "No configuration is stable by this rule" in _section(
        (nothing / "report.md").read_text(), "4. The verdict"
    )


def test_missing_optional_inputs_are_reported_not_fabricated(stable, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(stable, root, ignore=shutil.ignore_patterns("report*"))
    for rel in ("dynamics.parquet", "pairs.parquet", "model/fourier.json", "provenance.json"):
        (root / rel).unlink()
    shutil.rmtree(root / "units")
    res = pd.read_parquet(root / "results.parquet")
    res.drop(columns=["gt_mcc", "plane_coverage_mean"]).to_parquet(root / "results.parquet")
    build_report(root)
    md = (root / "report.md").read_text()
    assert BROKEN not in md
    for title in SECTIONS:
        assert f"## {title}" in md
    assert "No dynamics snapshots in this run" in _section(md, "6. Dynamics")
    assert "model/fourier.json is not in this run" in _section(md, "1. The model")
    assert "provenance.json is not in this run" in md
    assert "no readable SAE weights" in _section(md, "5. Ground truth")
    gt = _section(md, "5. Ground truth")
    assert (
        "| gt_mcc |" not in gt
        and "| plane_coverage_mean |" not in gt
        and "| gt_mcc_baseline |" in gt
    )
    assert not list((root / "report_files").glob("dynamics_*.png"))


def test_the_report_names_the_task(stable, tmp_path):
    md = (stable / "report.md").read_text()
    assert md.startswith("# HUSAI study report: ") and "task (a + b) mod 113" in md.split("\n")[0]
    root = tmp_path / "run"
    shutil.copytree(stable, root, ignore=shutil.ignore_patterns("report*", "provenance.json"))
    (root / "study.yaml").write_text("name: tiny\ntask: {op: mul, modulus: 7}\n")
    build_report(root)
    md = (root / "report.md").read_text()
    task = "(a * b) mod 7, a and b in 1..6 (0 excluded)"
    assert task in md.split("\n")[0]
    assert f"| task | {task} |" in _section(md, "1. The model")


def test_corrupt_table_and_empty_store(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "summary.parquet").write_bytes(b"not a parquet file")
    html = build_report(empty).read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html
    assert BROKEN not in html
    assert "summary.parquet could not be read" in html
    assert "<img" not in html  # nothing to plot, nothing invented


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_report(tmp_path / "nope")
    with pytest.raises(UserError, match="stability_threshold"):
        build_report(tmp_path, stability_threshold=1.5)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None,
    reason="chromium not found on PATH; install it with: apt-get install chromium",
)
def test_page_loads_in_headless_chromium(stable, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--log-level=0",
        f"--screenshot={shot}",
        "--window-size=1200,3000",
        (stable / "report.html").resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    console = [
        line for line in proc.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line
    ]
    assert not console, console
    assert shot.is_file(), proc.stderr[-2000:]
    import numpy as np
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert px.shape == (3000, 1200)
    assert px.std() > 20  # text, tables and figures, not a blank page
    assert (px < 128).mean() > 0.01


def test_two_checkpoints(tmp_path):
    root = make_run_store(
        tmp_path / "run", archs=("topk",), hooks=HOOKS[:1], checkpoints=("step_100", "final")
    )
    md = build_report(root).with_name("report.md").read_text()
    assert BROKEN not in md
    assert "Other checkpoints, best excess over the hardest baseline: 'step_100'" in md
    assert "[step_100]" in _section(md, "3. Stability") and "[final]" in _section(
        md, "3. Stability"
    )
    assert "transformer checkpoint 'final'" in _section(md, "8. Guidelines")
    figs = {p.name for p in (root / "report_files").glob("*.png")}
    assert {f for f in figs if f.startswith("goldilocks_")} == {
        "goldilocks_blocks_0_hook_resid_post_final.png",
        "goldilocks_blocks_0_hook_resid_post_step_100.png",
    }


def test_verdict_uses_hardest_baseline_and_dead_rule(stable):
    md = (stable / "report.md").read_text()
    verdict = _section(md, "4. The verdict")
    assert "principal subspace holding 95% of the activations' variance" in verdict
    assert "at most 50% of its dictionary is dead" in verdict
    assert "of which 2 beat it but are mostly dead (dead fraction > 0.5)" in verdict
    assert "topk w=32 k=4 @ blocks.0.hook_resid_post [final]" not in verdict.split("Pareto")[0]
    assert "Pareto frontier per (hook, checkpoint)" in verdict
    assert "| all-latent PW-MCC | dead fraction |" in verdict
    s = pd.read_parquet(stable / "summary.parquet")
    row = s[(s.metric == "pw_mcc_alive")].sort_values("mean").iloc[-1]
    assert f"{row['baseline_hardest']:.3f} (activation rows)" in verdict
    guide = _section(md, "8. Guidelines")
    assert "more than 50% dead and are never called stable" in guide
    assert "points" in guide  # every trend quotes its number of points
    gt = _section(md, "5. Ground truth")
    assert "| plane_coverage_weighted |" in gt and "plane_coverage_weighted_baseline_subspace" in gt


def test_answer_paragraph_leads_the_report_with_the_verdict_counts(stable):
    from husai.report.verdict import primary_table, stable_mask

    df, _ = primary_table(pd.read_parquet(stable / "summary.parquet"))
    n = int(stable_mask(df, 0.7, 0.9).sum())
    md = (stable / "report.md").read_text()
    first = md.split("\n\n")[1]
    assert first.startswith(f"Answer: at the direction level, {n} of {len(df)} configurations")
    assert "at any level" in first or "reaches 0.9" in first
