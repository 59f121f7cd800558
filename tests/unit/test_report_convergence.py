"""The report's training-convergence subsection on a tiny fabricated run store.

One unit (relu, width 4) trains two sparsity groups of three seeds for 1000 steps, with
``plateau_tol`` 1e-3 and ``plateau_window`` 200; the loss is logged every 50 steps:

- group A (l1 0.001): no SAE reaches the plateau; each seed's loss is flat at c until step
  800, then flat at 0.9 c, so over its last 20% (800 -> 1000) it falls by exactly 10%;
  its alive-only PW-MCC goes 0.5 -> 0.6 between the snapshots at 500 and 1000, and every
  decoder row turns by an angle whose cosine is 0.8.
- group B (l1 0.01): every SAE plateaus at step 600; its loss, PW-MCC and decoder are flat.

So 3 of 6 SAEs (50%) plateaued, A is still moving by loss (10% > 0.1%) and by PW-MCC
(0.1 > 0.01), and B is not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from husai.report.render import Note, Para, Table
from husai.report.sections_convergence import TAIL_COLUMNS, convergence_section, loss_tail
from husai.report.store import RunView

UNIT = "relu-w4-L0-resid_post-final-0123456789"
HOOK = "blocks.0.hook_resid_post"
SEEDS = (0, 1, 2)
GROUPS = {"A": 0.001, "B": 0.01}
STEPS = 1000


def _sae_id(sp: float, seed: int) -> str:
    return f"l1_coefficient{sp:g}-seed{seed}"


def _loss(group: str, seed: int, step: int) -> float:
    c = 1.0 + seed
    return c * (0.9 if step > 800 else 1.0) if group == "A" else 2.0


def make_store(
    root: Path,
    *,
    converged: dict[str, int | None] | None = None,
    unit_json: bool = True,
    dynamics: tuple[str, ...] = ("pw_mcc_alive", "pw_mcc"),
    snapshots: bool = True,
) -> Path:
    converged = {"A": None, "B": 600} if converged is None else converged
    members = [(g, sp, seed) for g, sp in GROUPS.items() for seed in SEEDS]
    rows = [
        {"unit_id": UNIT, "sae_id": _sae_id(sp, seed), "status": "ok", "arch": "relu"}
        | {"d_sae": 4, "hook": HOOK, "checkpoint": "final", "sparsity_name": "l1_coefficient"}
        | {"sparsity": sp, "seed": seed, "steps": STEPS, "converged_step": converged[g]}
        for g, sp, seed in members
    ]
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / "results.parquet")
    udir = root / "units" / UNIT
    udir.mkdir(parents=True)
    if unit_json:
        steps = list(range(50, STEPS + 1, 50))
        record = {
            "unit_id": UNIT,
            "unit": {"sae_train": {"plateau_tol": 1e-3, "plateau_window": 200, "steps": STEPS}},
            "saes": [{"sae_id": _sae_id(sp, seed)} for _, sp, seed in members],
            "history": {
                "step": steps,
                "loss": [[_loss(g, s, t) for g, _, s in members] for t in steps],
            },
        }
        (udir / "unit.json").write_text(json.dumps(record))
    if dynamics:
        pd.DataFrame(_dynamics(dynamics)).to_parquet(root / "dynamics.parquet")
    if snapshots:
        save_file(_snapshots(), str(udir / "snapshots.safetensors"))
    return root


def _dynamics(metrics: tuple[str, ...]) -> list[dict]:
    rows = []
    for g, sp in GROUPS.items():
        for metric in metrics:
            for step in (0, 1, 10, 100, 500, 1000):
                if metric == "pw_mcc":
                    value = 0.2 + step / 10_000  # all latents: must not be read when alive exists
                elif g == "A":
                    value = 0.6 if step == 1000 else 0.5
                else:
                    value = 0.7
                rows.append(
                    {"group_id": f"{UNIT}/{sp:g}", "arch": "relu", "d_sae": 4, "hook": HOOK}
                    | {"checkpoint": "final", "sparsity": sp, "step": step, "metric": metric}
                    | {"value": value, "baseline": 0.1}
                )
    return rows


def _snapshots() -> dict[str, torch.Tensor]:
    """W_dec [6 models, 4 latents, 3]: models 0-2 (group A) turn by cos 0.8 after step 500."""
    before = torch.zeros(6, 4, 3)
    before[..., 0] = 1.0
    after = before.clone()
    after[:3, :, 0], after[:3, :, 1] = 0.8, 0.6
    return {"step_0": torch.randn(6, 4, 3), "step_500": before, "step_1000": after}


def _blocks(root: Path) -> tuple[list[Para], list[Table], list[Note]]:
    sec = convergence_section(RunView.open(root))
    paras = [b for b in sec.blocks if type(b) is Para]
    tables = [b for b in sec.blocks if type(b) is Table]
    notes = [b for b in sec.blocks if type(b) is Note]
    return paras, tables, notes


def _tail(tables: list[Table]) -> dict[str, dict[str, str]]:
    table = next(t for t in tables if t.columns == TAIL_COLUMNS)
    rows = {
        str(r[TAIL_COLUMNS.index("sparsity")]): dict(zip(TAIL_COLUMNS, r, strict=True))
        for r in table.rows
    }
    return {g: rows[f"l1_coefficient={sp:g}"] for g, sp in GROUPS.items()}


def test_moving_and_flat_groups_get_their_known_numbers(tmp_path: Path) -> None:
    paras, tables, notes = _blocks(make_store(tmp_path / "s"))
    rows = _tail(tables)
    a, b = rows["A"], rows["B"]
    assert (a["SAEs"], a["plateau reached"], b["plateau reached"]) == (3, 0, 3)
    assert a["loss change"] == "-10.00%" and a["loss limit"] == "0.10%"
    # B ends at its plateau step 600: limit 1e-3 * 120 / 200
    assert b["loss change"] == "+0.00%" and b["loss limit"] == "0.06%"
    assert a["snapshots"] == b["snapshots"] == "500 -> 1000"
    assert a["PW-MCC"] == "0.500 -> 0.600 (+0.100)"
    assert b["PW-MCC"] == "0.700 -> 0.700 (+0.000)"
    assert (a["decoder cos"], b["decoder cos"]) == ("0.800", "1.000")
    assert (a["still moving"], b["still moving"]) == ("loss, PW-MCC", "no")
    text = " ".join(p.text for p in paras)
    assert (
        "3 of 6 SAEs (50%)" in text
        and "at least 80% of the SAEs at a plateau, does not hold" in text
    )
    assert "|PW-MCC change| > 0.01" in text and "pw_mcc_alive" in text
    assert "1 of 2 groups have SAEs that did not reach the loss plateau" in text
    assert "1 were still moving over their last 20% of steps (1 by loss, 1 by PW-MCC)" in text
    assert not any("pw_mcc over all latents" in n.text for n in notes)


def test_criterion_holds_when_at_least_80_percent_plateau(tmp_path: Path) -> None:
    paras, tables, _ = _blocks(make_store(tmp_path / "s", converged={"A": 1000, "B": 600}))
    text = " ".join(p.text for p in paras)
    assert "6 of 6 SAEs (100%)" in text and "at least 80% of the SAEs at a plateau, holds." in text
    assert "In all 2 groups every SAE reached the loss plateau." in text
    assert _tail(tables)["A"]["loss change"] == "-10.00%"  # plateau at 1000: the same span


def test_pw_mcc_over_all_latents_when_no_alive_rows(tmp_path: Path) -> None:
    _, tables, notes = _blocks(make_store(tmp_path / "s", dynamics=("pw_mcc",)))
    assert _tail(tables)["A"]["PW-MCC"] == "0.250 -> 0.300 (+0.050)"
    assert any("no pw_mcc_alive rows" in n.text for n in notes)


def test_missing_history_dynamics_and_snapshots_give_notes(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s", unit_json=False, dynamics=(), snapshots=False)
    paras, tables, notes = _blocks(root)
    for row in _tail(tables).values():
        assert row["loss change"] == row["PW-MCC"] == row["decoder cos"] == "n/a"
        assert row["still moving"] == "n/a"
    text = " ".join(n.text for n in notes)
    assert "loss change n/a" in text and "decoder cos n/a" in text
    assert "PW-MCC change is n/a: dynamics.parquet is not in this run" in text
    assert "1 could not be judged" in " ".join(p.text for p in paras)


def test_corrupt_unit_files_and_old_results_do_not_crash(tmp_path: Path) -> None:
    root = make_store(tmp_path / "s")
    (root / "units" / UNIT / "unit.json").write_text("{not json")
    (root / "units" / UNIT / "snapshots.safetensors").write_bytes(b"garbage")
    _, tables, notes = _blocks(root)
    assert _tail(tables)["A"]["loss change"] == "n/a"
    assert _tail(tables)["A"]["still moving"] == "PW-MCC"  # dynamics.parquet is intact
    assert any("decoder cos n/a" in n.text for n in notes)
    results = pd.read_parquet(root / "results.parquet").drop(columns=["sparsity"])
    results.to_parquet(root / "results.parquet")
    _, tables, notes = _blocks(root)
    assert not any(t.columns == TAIL_COLUMNS for t in tables)
    assert any("no sparsity, sae_id or unit_id column" in n.text for n in notes)


@pytest.mark.parametrize("tol", [0.0, None])
def test_loss_tail_without_a_plateau_test_has_no_limit(tol: float | None) -> None:
    steps = list(range(10, 101, 10))
    record = {
        "unit": {"sae_train": {"plateau_tol": tol, "plateau_window": 20}},
        "saes": [{"sae_id": "x"}, {"sae_id": "y"}],
        "history": {"step": steps, "loss": [[1.0, 4.0 - t / 100] for t in steps]},
    }
    change, limit = loss_tail(record, "y", 100.0)
    # y: window (60, 80] -> mean(3.3, 3.2); (80, 100] -> mean(3.1, 3.0)
    assert change == pytest.approx((3.05 - 3.25) / 3.25) and math.isnan(limit)
    assert loss_tail(record, "x", 100.0)[0] == 0.0
    assert math.isnan(loss_tail(record, "missing", 100.0)[0])
    assert math.isnan(loss_tail(record, "x", 5.0)[0])  # nothing logged by then
