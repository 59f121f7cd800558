"""The run store: one directory per study, every file written atomically.

Layout (see README): ``study.yaml``, ``provenance.json``, ``model/``, ``activations/``,
``units/<unit_id>/`` (``unit.json`` is written last and marks the unit finished, so a
study killed at any moment resumes by redoing only unfinished units), and the tables
``results.parquet``, ``pairs.parquet``, ``summary.parquet``, ``dynamics.parquet``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from husai.experiments.unit import UnitResult
from husai.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_json


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def units_dir(self) -> Path:
        return self.root / "units"

    def unit_dir(self, unit_id: str) -> Path:
        return self.units_dir / unit_id

    def activations_dir(self, checkpoint: str, hook_slug: str) -> Path:
        return self.root / "activations" / checkpoint / hook_slug

    def unit_record(self, unit_id: str) -> dict[str, Any] | None:
        path = self.unit_dir(unit_id) / "unit.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def is_done(self, unit_id: str) -> bool:
        rec = self.unit_record(unit_id)
        return rec is not None and rec.get("status") == "ok"

    def write_unit(self, result: UnitResult, content: dict[str, Any]) -> None:
        """Write SAE dirs and snapshots, then unit.json last (the completion marker)."""
        udir = self.unit_dir(result.unit_id)
        if udir.exists() and not (udir / "unit.json").exists():
            shutil.rmtree(udir)  # leftovers of a killed run: start clean
        udir.mkdir(parents=True, exist_ok=True)
        for sae in result.saes:
            _write_sae_dir(udir / "saes" / sae["sae_id"], sae)
        if result.snapshots:
            atomic_save_safetensors(udir / "snapshots.safetensors", result.snapshots)
        record = {
            "unit_id": result.unit_id,
            "status": result.status,
            "error": result.error,
            "unit": content,
            "steps": result.steps,
            "wall_s": result.wall_s,
            "saes": [{k: v for k, v in s.items() if k != "files"} for s in result.saes],
            "pairs": result.pairs,
            "dynamics": result.dynamics,
            "history": result.history,
        }
        atomic_write_json(udir / "unit.json", record)

    def records(self) -> list[dict[str, Any]]:
        if not self.units_dir.is_dir():
            return []
        out = [self.unit_record(p.name) for p in sorted(self.units_dir.iterdir()) if p.is_dir()]
        return [r for r in out if r is not None]


def _write_sae_dir(path: Path, sae: dict[str, Any]) -> None:
    """The SAE's own files (SAELens format, as the unit saved them) plus eval.json."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in sae["files"].items():
        atomic_write_bytes(path / name, data)
    atomic_write_json(
        path / "eval.json", {**sae["eval"], **{f"gt_{k}": v for k, v in sae["gt"].items()}}
    )
