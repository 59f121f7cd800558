"""W&B tracking: one run per unit, grouped by study and named by unit id.

Logging happens on the driver from the unit's returned history, so Ray workers need no
W&B credentials. Offline by default (run directories under ``<run store>/wandb``);
``tracking.mode: disabled`` turns it off; ``online`` syncs when the user is logged in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from husai.config import TrackingConfig
from husai.experiments.unit import UnitResult

log = logging.getLogger(__name__)


def log_unit(
    tracking: TrackingConfig,
    study: str,
    store_root: Path,
    result: UnitResult,
    content: dict[str, Any],
) -> None:
    if tracking.mode == "disabled":
        return
    import wandb

    run = wandb.init(
        project=tracking.project,
        group=study,
        name=result.unit_id,
        job_type="sae-unit",
        mode=tracking.mode,
        dir=str(store_root),
        config=content,
        reinit="finish_previous",
        settings=wandb.Settings(silent=True, console="off"),
    )
    hist = result.history or {}
    steps = hist.get("step", [])
    for i, step in enumerate(steps):
        row: dict[str, float] = {}
        for key, series in hist.items():
            if key == "step" or not isinstance(series, list) or len(series) <= i:
                continue
            value = series[i]
            if isinstance(value, list):  # one value per model of the group
                row.update({f"{key}/model_{m}": float(v) for m, v in enumerate(value)})
            else:
                row[key] = float(value)
        run.log(row, step=int(step))
    summary: dict[str, Any] = {
        "status": result.status,
        "steps": result.steps,
        "wall_s": result.wall_s,
    }
    if result.error:
        summary["error"] = result.error
    for row in result.pairs:
        key = f"{row.metric}/{row.group.sparsity_name}={row.group.sparsity:g}"
        summary.setdefault(key, []).append(row.value)
    run.summary.update(
        {k: (sum(v) / len(v) if isinstance(v, list) else v) for k, v in summary.items()}
    )
    run.finish()
