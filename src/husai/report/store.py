"""Read a study run store (README, "The run store") for the report, tolerating anything missing.

Every loader returns ``None`` when its file is absent or unreadable and records why in
``RunStore.missing`` (file name -> one-line reason), so each report section can say
what it could not show instead of crashing. Nothing is filled in or guessed: a
missing table stays missing. Safetensors are read directly with
``safetensors.torch.load_file`` so the report does not depend on other packages'
loaders.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

log = logging.getLogger(__name__)
MARKERS = ("study.yaml", "provenance.json", "results.parquet", "summary.parquet")
"""Files of which a run store holds at least one (``study.yaml`` is written first)."""


def is_run_store(root: Path) -> bool:
    """Whether ``root`` holds at least one of the run store's :data:`MARKERS`."""
    return any((Path(root) / name).is_file() for name in MARKERS)


@dataclass
class Planes:
    """Ground-truth Fourier planes of one hook (activations/<slug>/planes.safetensors)."""

    basis_P2D: Float[np.ndarray, "P 2 d"]
    freq_P: Int[np.ndarray, " P"]
    is_key_P: Bool[np.ndarray, " P"]
    r2_P: Float[np.ndarray, " P"] | None
    variables: list[str]
    spans: tuple | None = None  # cached key-plane decomposition, filled by geometry


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
class RunStore:
    """Everything the report reads; absent items are None and explained in ``missing``."""

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

    @classmethod
    def open(cls, root: Path) -> RunStore:
        s = cls(root=root)
        s.curves = s._json("model/curves.json")
        s.fourier = s._json("model/fourier.json")
        s.model_metrics = s._json("model/metrics.json")
        s.acts = s._act_dirs()
        for name in ("results", "pairs", "summary", "dynamics"):
            setattr(s, name, s._parquet(f"{name}.parquet"))
        s.failures = s._json("failures.json")
        s.provenance = s._json("provenance.json")
        path = root / "study.yaml"
        s.study_yaml = path.read_text() if path.is_file() else None
        return s

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
        base = self.root / "activations"
        out = []
        for meta_path in sorted(base.rglob("meta.json")) if base.is_dir() else []:
            try:
                out.append(ActDir(meta_path.parent, json.loads(meta_path.read_text())))
            except (OSError, ValueError) as err:
                log.warning("report: unreadable %s (%s)", meta_path, err)
        if not out:
            self.missing["activations"] = "no activations/**/meta.json in this run"
        return out

    def act_dir(self, hook: str, checkpoint: str | None = None) -> ActDir | None:
        """The activation dir of ``hook`` (at ``checkpoint`` when several were extracted)."""
        hits = [a for a in self.acts if a.hook == hook]
        exact = [a for a in hits if checkpoint is None or a.checkpoint in (checkpoint, None)]
        return (exact or hits or [None])[0]

    def planes(self, hook: str, checkpoint: str | None = None) -> Planes | None:
        """The hook's planes (cached), or None when planes.safetensors is absent or malformed."""
        key = (hook, checkpoint)
        if key not in self._planes:
            self._planes[key] = self._read_planes(hook, checkpoint)
        return self._planes[key]

    def _read_planes(self, hook: str, checkpoint: str | None) -> Planes | None:
        act = self.act_dir(hook, checkpoint)
        path = act.path / "planes.safetensors" if act else None
        if path is None or not path.is_file():
            return None
        t = _load_safetensors(path)
        if t is None or not {"basis", "freq"} <= set(t):
            return None
        n = t["basis"].shape[0]
        is_key = t["is_key"].bool() if "is_key" in t else torch.ones(n, dtype=torch.bool)
        variables = list(act.meta.get("plane_variables") or [""] * n)
        variables = variables if len(variables) == n else [""] * n
        r2 = t["r2"].double().numpy() if "r2" in t else None
        basis = t["basis"].double().numpy()
        return Planes(basis, t["freq"].long().numpy(), is_key.numpy(), r2, variables)

    def sae_dir(self, unit_id: str, sae_id: str) -> Path:
        return self.root / "units" / str(unit_id) / "saes" / str(sae_id)

    def decoder(self, unit_id: str, sae_id: str, d_in: int) -> Float[np.ndarray, "S d"] | None:
        """W_dec [d_sae, d_in] of one SAE (transposed if stored the other way), or None."""
        t = _load_safetensors(self.sae_dir(unit_id, sae_id) / "sae_weights.safetensors")
        dec = None if t is None else t.get("W_dec")
        if dec is None or dec.ndim != 2:
            return None
        if dec.shape[1] != d_in and dec.shape[0] == d_in:
            dec = dec.T
        return dec.double().numpy() if dec.shape[1] == d_in else None


def _load_safetensors(path: Path) -> dict[str, Tensor] | None:
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except Exception as err:  # corrupt tensors are reported as missing
        log.warning("report: unreadable %s (%s)", path, err)
        return None
