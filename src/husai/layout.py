"""Where each file of a run store lives: the one place that knows the layout.

The writer (:class:`husai.experiments.store.RunStore`) and the report's reader
(:class:`husai.report.store.RunView`) both build their paths here, so the two cannot
drift apart. Nothing in this module touches the disk.

::

    <root>/study.yaml, provenance.json, failures.json
    <root>/model/                      curves.json, fourier.json, metrics.json
    <root>/activations/<checkpoint>/<hook-slug>/   meta.json, acts, planes.safetensors
    <root>/units/<unit_id>/unit.json
    <root>/units/<unit_id>/saes/<sae_id>/          SAELens files + eval.json
    <root>/<table>.parquet             one per name in TABLES
    <root>/latents.parquet             LATENTS: one row per latent of every SAE
"""

from __future__ import annotations

from pathlib import Path

TABLES = ("results", "pairs", "summary", "dynamics")
"""The study's tables, written by ``experiments.tables`` as ``<root>/<name>.parquet``."""

LATENTS = "latents"
"""The per-latent table, written beside TABLES but not in them: it grows with every
latent, so the report's latents section reads it alone, not every page's ``RunView``."""

UNITS = "units"
ACTIVATIONS = "activations"
SAES = "saes"
UNIT_RECORD = "unit.json"
"""A unit's record: its config, ``saes`` in model order, the trainer's ``history``, ``files``."""
UNIT_SNAPSHOTS = "snapshots.safetensors"
"""A unit's decoder snapshots: ``step_<t>`` -> W_dec [N, S, D]."""


def table_path(root: Path, name: str) -> Path:
    return Path(root) / f"{name}.parquet"


def unit_dir(root: Path, unit_id: str) -> Path:
    return Path(root) / UNITS / str(unit_id)


def sae_dir(root: Path, unit_id: str, sae_id: str) -> Path:
    return sae_dir_in(unit_dir(root, unit_id), sae_id)


def sae_dir_in(unit_path: Path, sae_id: str) -> Path:
    """An SAE's folder inside a unit folder (also a unit's staging folder)."""
    return Path(unit_path) / SAES / str(sae_id)


def activations_dir(root: Path, checkpoint: str, hook_slug: str) -> Path:
    return Path(root) / ACTIVATIONS / checkpoint / hook_slug
