"""Read a study run store (README, "The run store") for the report, tolerating anything missing.

:class:`RunView` is the report's read-only view of a store that
:class:`husai.experiments.store.RunStore` wrote; both take their paths from
:mod:`husai.layout`. Every loader returns ``None`` when its file is absent or
unreadable and records why in ``RunView.missing`` (file name -> one-line reason), so each
report section can say what it could not show instead of crashing. A missing table stays
missing; a table an older husai wrote gets the columns it lacks from
:func:`husai.schema.conform` (names and absent baselines only, never a measurement).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from husai import layout
from husai.errors import UserError
from husai.io import load_safetensors
from husai.metrics.ground_truth import load_planes
from husai.model.fourier import FourierPlanes
from husai.saes.io import WEIGHTS_FILE
from husai.schema import conform

log = logging.getLogger(__name__)
MARKERS = ("study.yaml", "provenance.json", "results.parquet", "summary.parquet")
"""Files of which a run store holds at least one (``study.yaml`` is written first)."""


def is_run_store(root: Path) -> bool:
    """Whether ``root`` holds at least one of the run store's :data:`MARKERS`."""
    return any((Path(root) / name).is_file() for name in MARKERS)


@dataclass
class ActDir:
    """One activation dir: its meta.json and where its planes live."""

    path: Path
    meta: dict[str, Any]

    @property
    def hook(self) -> str:
        return str(self.meta.get("hook", self.path.name))

    @property
    def checkpoint(self) -> str | None:
        """meta's checkpoint, else the folder above (activations/<checkpoint>/<hook-slug>/)."""
        if self.meta.get("checkpoint") is not None:
            return str(self.meta["checkpoint"])
        return self.path.parent.name if self.path.parent.name != "activations" else None


@dataclass
class RunView:
    """Everything the report reads of a run store; absent items are None, explained in ``missing``."""

    root: Path
    missing: dict[str, str] = field(default_factory=dict)
    curves: dict | None = None
    fourier: dict | None = None
    model_metrics: dict | None = None
    acts: list[ActDir] = field(default_factory=list)
    results: Any = None  # pandas.DataFrame | None
    pairs: Any = None
    summary: Any = None
    dynamics: Any = None
    failures: Any = None
    provenance: dict | None = None
    study_yaml: str | None = None
    _planes: dict = field(default_factory=dict, repr=False)
    _units: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: Path) -> RunView:
        s = cls(root=root)
        s.curves = s._json("model/curves.json")
        s.fourier = s._json("model/fourier.json")
        s.model_metrics = s._json("model/metrics.json")
        s.acts = s._act_dirs()
        for name in layout.TABLES:
            setattr(s, name, conform(name, s._parquet(layout.table_path(root, name).name)))
        s.failures = s._json("failures.json")
        s.provenance = s._json("provenance.json")
        path = root / "study.yaml"
        s.study_yaml = path.read_text() if path.is_file() else None
        return s

    def task(self) -> str | None:
        """The study's task in words (``(a + b) mod 113``), from provenance or study.yaml."""
        from husai.config import TaskConfig
        from husai.tasks import describe_task

        study = (self.provenance or {}).get("study")
        if not isinstance(study, dict) and self.study_yaml is not None:
            import yaml

            try:
                study = yaml.safe_load(self.study_yaml)
            except yaml.YAMLError:
                study = None
        task = study.get("task") if isinstance(study, dict) else None
        try:  # a study.yaml without a task block used the defaults, as does this
            cfg = TaskConfig.model_validate(task if isinstance(task, dict) else {})
        except ValueError:  # pydantic's ValidationError is a ValueError
            return None
        return describe_task(cfg.op, cfg.modulus)

    def _json(self, rel: str) -> Any:
        path = self.root / rel
        if not path.is_file():
            self.missing[rel] = f"{rel} is not in this run"
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            self.missing[rel] = f"{rel} could not be read ({err.__class__.__name__}: {err})"
            log.warning("report: %s", self.missing[rel])
            return None

    def _parquet(self, rel: str) -> Any:
        import pandas as pd

        path = self.root / rel
        if not path.is_file():
            self.missing[rel] = f"{rel} is not in this run"
            return None
        try:
            return pd.read_parquet(path)
        except Exception as err:  # a corrupt table is reported, not raised
            self.missing[rel] = f"{rel} could not be read ({err.__class__.__name__})"
            log.warning("report: %s", self.missing[rel])
            return None

    def _act_dirs(self) -> list[ActDir]:
        base = self.root / layout.ACTIVATIONS
        out = []
        for meta_path in sorted(base.rglob("meta.json")) if base.is_dir() else []:
            try:
                out.append(ActDir(meta_path.parent, json.loads(meta_path.read_text())))
            except (OSError, ValueError) as err:
                log.warning("report: unreadable %s (%s)", meta_path, err)
        if not out:
            self.missing[layout.ACTIVATIONS] = "no activations/**/meta.json in this run"
        return out

    def act_dir(self, hook: str, checkpoint: str | None = None) -> ActDir | None:
        """The activation dir of ``hook`` (at ``checkpoint`` when several were extracted)."""
        hits = [a for a in self.acts if a.hook == hook]
        exact = [a for a in hits if checkpoint is None or a.checkpoint in (checkpoint, None)]
        return (exact or hits or [None])[0]

    def planes(self, hook: str, checkpoint: str | None = None) -> FourierPlanes | None:
        """The hook's planes (cached), or None when planes.safetensors is absent or malformed."""
        key = (hook, checkpoint)
        if key not in self._planes:
            act = self.act_dir(hook, checkpoint)
            self._planes[key] = _or_none(load_planes, act.path) if act else None
        return self._planes[key]

    def sae_dir(self, unit_id: str, sae_id: str) -> Path:
        return layout.sae_dir(self.root, unit_id, sae_id)

    def decoder(self, unit_id: str, sae_id: str, d_in: int) -> Float[np.ndarray, "S d"] | None:
        """W_dec [d_sae, d_in] of one SAE (transposed if stored the other way), or None."""
        t = _or_none(load_safetensors, self.sae_dir(unit_id, sae_id) / WEIGHTS_FILE)
        dec = None if t is None else t.get("W_dec")
        if dec is None or dec.ndim != 2:
            return None
        if dec.shape[1] != d_in and dec.shape[0] == d_in:
            dec = dec.T
        return dec.double().numpy() if dec.shape[1] == d_in else None

    def unit_record(self, unit_id: str) -> dict[str, Any] | None:
        """``units/<unit_id>/unit.json`` (cached): the unit's config (``unit``), its ``saes`` in
        model order and the trainer's ``history`` (``step``, ``loss`` [step][model], ...); None
        when absent or unreadable (logged)."""
        if unit_id not in self._units:
            path = layout.unit_dir(self.root, unit_id) / layout.UNIT_RECORD
            rec = None
            try:
                rec = json.loads(path.read_text()) if path.is_file() else None
            except (OSError, ValueError) as err:
                log.warning("report: %s could not be read (%s)", path, err.__class__.__name__)
            self._units[unit_id] = rec if isinstance(rec, dict) else None
        return self._units[unit_id]

    def snapshot_steps(self, unit_id: str) -> list[int]:
        """The steps of the unit's decoder snapshots, ascending; [] when there are none."""
        from safetensors import SafetensorError, safe_open

        path = layout.unit_dir(self.root, unit_id) / layout.UNIT_SNAPSHOTS
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
        except (SafetensorError, OSError, ValueError):
            return []
        return sorted(int(k[5:]) for k in keys if k.startswith("step_") and k[5:].isdigit())

    def snapshot(self, unit_id: str, step: int) -> Float[np.ndarray, "N S D"] | None:
        """The unit's W_dec of every model at snapshot ``step``, or None."""
        from safetensors import SafetensorError, safe_open

        path = layout.unit_dir(self.root, unit_id) / layout.UNIT_SNAPSHOTS
        try:
            with safe_open(str(path), framework="pt") as f:
                dec = f.get_tensor(f"step_{int(step)}")
        except (SafetensorError, OSError, ValueError, KeyError):
            return None
        return dec.double().numpy() if dec.ndim == 3 else None


def _or_none(load: Any, path: Path) -> Any:
    """``load(path)``, or None (logged) when the file is absent or unreadable."""
    try:
        return load(path)
    except UserError as err:
        log.warning("report: %s", err)
        return None
