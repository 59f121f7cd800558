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
    <root>/consensus/<unit_id>/<sparsity>/all/   a configuration's consensus SAE (SAELens)
    <root>/consensus.parquet           CONSENSUS: one row per configuration
"""

from __future__ import annotations

from pathlib import Path

TABLES = ("results", "pairs", "summary", "dynamics")
"""The study's tables, written by ``experiments.tables`` as ``<root>/<name>.parquet``."""

LATENTS = "latents"
"""The per-latent table, written beside TABLES but not in them: it grows with every
latent, so the report's latents section reads it alone, not every page's ``RunView``."""

CONSENSUS = "consensus"
"""The consensus step's folder and table (``consensus.parquet``), present only when the
study asks for it (``husai.experiments.consensus_step``)."""

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


def config_tag(sparsity_name: str, sparsity: float) -> str:
    """A configuration's tag among its unit's: ``<knob><value>``, e.g. ``k16``."""
    return f"{sparsity_name}{float(sparsity):g}"


def sae_id(sparsity_name: str, sparsity: float, seed: int) -> str:
    """One SAE's id among its group's: ``<knob><value>-seed<seed>``, e.g. ``k16-seed0``.

    The only SAE naming scheme: a unit's ``saes/<sae_id>/`` and the tables' ``sae_id``
    column use it as is; ``husai train-saes``, which writes several groups into one folder,
    puts the group in front (``topk_w512_k16-seed0``). In both, ``rsplit("-seed", 1)[0]``
    leaves the configuration's tag (the same SAE but for its seed).
    """
    return f"{config_tag(sparsity_name, sparsity)}-seed{seed}"


def consensus_dir(root: Path, unit_id: str, tag: str) -> Path:
    """A configuration's consensus SAEs (``tag``: :func:`config_tag`)."""
    return Path(root) / CONSENSUS / str(unit_id) / tag


def activations_dir(root: Path, checkpoint: str, hook_slug: str) -> Path:
    return Path(root) / ACTIVATIONS / checkpoint / hook_slug
