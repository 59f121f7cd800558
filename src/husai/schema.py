"""What the study tables hold, declared once: :mod:`husai.layout` says where they live.

A unit returns typed records: :class:`SaeRecord` per SAE, :class:`PairRow` per seed pair
and metric, :class:`DynamicsRow` per snapshot and configuration; each serialises to the
row that ``unit.json`` stores and the tables gather. :mod:`husai.experiments.tables`
writes ``results``, ``pairs``, ``summary`` and ``dynamics`` in the column order declared
here, and the report reads them through :func:`conform`, which gives a table written by
an older husai the columns it lacks with the value they meant then (a single
``checkpoint`` was ``final``, an unnamed sparsity was ``sparsity``, a baseline not yet
measured is NaN, the hardest baseline was the unit-sphere one). Nothing measured is made
up: a metric column that is absent stays absent.

Columns (every table keys a configuration by :data:`GROUP_COLUMNS`):

- ``results``: :data:`RESULT_HEAD`, then the SAE's scalar evaluation
  (:func:`husai.saes.evaluate`: ``explained_variance``, ``l0``, ``dead_fraction``, ...)
  and ground-truth columns (:func:`husai.metrics.ground_truth_summary`), which depend on
  whether the study has planes and a model; a failed unit is one row with its ``error``.
- ``pairs``: :data:`PAIR_COLUMNS` (baselines: :mod:`husai.metrics.baselines`).
- ``dynamics``: :data:`DYNAMICS_COLUMNS`.
- ``summary``: :data:`SUMMARY_HEAD`, then ``<eval>_mean`` per group and the per-feature
  stability columns (:mod:`husai.experiments.tables`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

GROUP_COLUMNS = ("group_id", "arch", "d_sae", "hook", "checkpoint", "sparsity_name", "sparsity")
"""A configuration: one sparsity value of a unit (``group_id`` = ``<unit_id>/<sparsity>``)."""

BASELINE_COLUMNS = ("baseline", "baseline_subspace", "baseline_acts")
"""The random baselines whose per-pair maximum is ``baseline_hardest`` (unit sphere, the
data's principal subspace, the activations' own rows)."""


def group_id(unit_id: str, sparsity: float) -> str:
    """The id of one configuration: its unit and its sparsity value."""
    return f"{unit_id}/{sparsity:g}"


@dataclass(frozen=True)
class GroupKey:
    """The columns that identify a configuration in every table, in :data:`GROUP_COLUMNS` order."""

    group_id: str
    arch: str
    d_sae: int
    hook: str
    checkpoint: str
    sparsity_name: str
    sparsity: float

    def columns(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SaeRecord:
    """One trained SAE of a unit: ``unit.json``'s ``saes`` entry, ``results``' row head."""

    sae_id: str
    group: GroupKey
    seed: int
    steps: int
    converged_step: int | None
    n_alive: int
    eval: dict[str, Any]
    gt: dict[str, Any]
    files: dict[str, bytes]
    """The SAE directory's files (name -> bytes); written to disk, never to unit.json."""

    def as_json(self) -> dict[str, Any]:
        """The ``unit.json`` entry, in the order ``results`` takes its columns."""
        head = {"sae_id": self.sae_id, **self.group.columns(), "seed": self.seed}
        head |= {"steps": self.steps, "converged_step": self.converged_step}
        return head | {"n_alive": self.n_alive, "eval": self.eval, "gt": self.gt}


@dataclass(frozen=True)
class PairRow:
    """One seed pair's value of one metric with its baselines (a ``pairs`` row)."""

    group: GroupKey
    seed_a: int
    seed_b: int
    metric: str
    value: float
    baseline: float
    baseline_kind: str
    baseline_init: float
    baseline_subspace: float
    baseline_acts: float
    baseline_hardest: float
    excess: float
    excess_hardest: float
    ratio: float
    n_a: int
    n_b: int
    dead_included: bool

    @classmethod
    def of(cls, group: GroupKey, seed_a: int, seed_b: int, metric: str, mv: Any) -> PairRow:
        """The row of a :class:`husai.metrics.MetricValue` ``mv``."""
        return cls(
            group,
            int(seed_a),
            int(seed_b),
            metric,
            value=float(mv.value),
            baseline=float(mv.baseline),
            baseline_kind=mv.baseline_kind,
            baseline_init=float(mv.baseline_init),
            baseline_subspace=float(mv.baseline_subspace),
            baseline_acts=float(mv.baseline_acts),
            baseline_hardest=float(mv.baseline_hardest),
            excess=float(mv.excess),
            excess_hardest=float(mv.excess_hardest),
            ratio=float(mv.ratio),
            n_a=int(mv.n_latents[0]),
            n_b=int(mv.n_latents[1]),
            dead_included=bool(mv.dead_included),
        )

    def row(self) -> dict[str, Any]:
        return _flat(self)


@dataclass(frozen=True)
class DynamicsRow:
    """Cross-seed PW-MCC of one configuration at one decoder snapshot: ``metric`` ``pw_mcc``
    (all latents) or ``pw_mcc_alive`` (latents alive at that step)."""

    group: GroupKey
    step: int
    metric: str
    value: float
    baseline: float
    baseline_subspace: float
    baseline_acts: float
    baseline_hardest: float

    def row(self) -> dict[str, Any]:
        return _flat(self)


def _flat(record: Any) -> dict[str, Any]:
    """A row: the group's columns, then the record's other fields in declaration order."""
    out = record.group.columns()
    return out | {f.name: getattr(record, f.name) for f in fields(record) if f.name != "group"}


def _columns(record: type) -> tuple[str, ...]:
    """A row type's columns, alphabetical: the order unit.json's sorted keys always gave them."""
    return tuple(sorted(GROUP_COLUMNS + tuple(f.name for f in fields(record) if f.name != "group")))


PAIR_COLUMNS = _columns(PairRow)
DYNAMICS_COLUMNS = _columns(DynamicsRow)
_SAE_SCALARS = ("sae_id", *GROUP_COLUMNS, "seed", "steps", "converged_step", "n_alive")
RESULT_HEAD = ("unit_id", "status", "error", *sorted(_SAE_SCALARS))
"""A failed unit's row has ``unit_id``, ``sae_id`` (empty), ``status``, ``error`` and its
unit's ``arch``, ``d_sae``, ``hook``, ``checkpoint``; the other columns are null there."""
SUMMARY_HEAD = ("group_id", "metric", *GROUP_COLUMNS[1:], "mean", "ci_lo", "ci_hi", "baseline")
SUMMARY_HEAD += ("baseline_init", "excess", "ratio", "n_pairs", "dead_included")
SUMMARY_HEAD += ("baseline_subspace", "baseline_acts", "baseline_hardest", "excess_hardest")


def ordered(frame: Any, head: tuple[str, ...]) -> Any:
    """``frame`` with the declared ``head`` columns it has first, in order, then the rest."""
    first = [c for c in head if c in frame]
    return frame[first + [c for c in frame.columns if c not in head]]


LEGACY_DEFAULTS: dict[str, Any] = {
    "checkpoint": "final",
    "sparsity_name": "sparsity",
    "baseline_subspace": float("nan"),
    "baseline_acts": float("nan"),
    "baseline_init": float("nan"),
}
"""Columns an older husai did not write, with what they meant when absent."""

LEGACY_TABLES = ("results", "pairs", "summary", "dynamics")


def conform(name: str, frame: Any) -> Any:
    """``frame`` (table ``name``) with the columns of :data:`LEGACY_DEFAULTS` it lacks and,
    where ``baseline_hardest`` is absent, the largest baseline present (the unit-sphere one
    before the data-aware baselines existed) and ``excess_hardest`` from it. A frame that
    has them all is returned unchanged; an empty one too."""
    import numpy as np

    if name not in LEGACY_TABLES or frame is None or frame.empty:
        return frame
    wants_baselines = name != "results" and "baseline" in frame
    lacking = [
        c for c in LEGACY_DEFAULTS if c not in frame and (wants_baselines or "baseline" not in c)
    ]
    if name == "dynamics":
        lacking = [c for c in lacking if c != "baseline_init"]
    hard = wants_baselines and "baseline_hardest" not in frame
    if not lacking and not hard:
        return frame
    out = frame.assign(**{c: LEGACY_DEFAULTS[c] for c in lacking})
    if hard:
        vals = out[list(BASELINE_COLUMNS)].to_numpy(dtype=np.float64)
        out["baseline_hardest"] = np.fmax.reduce(vals, axis=1)
        value = "mean" if name == "summary" else "value"
        if value in out and name != "dynamics":
            out["excess_hardest"] = out[value] - out["baseline_hardest"]
    return out
