"""Expand a study's grid into units, each one batched SAE training pass.

A unit fixes (architecture, width, hook, transformer checkpoint) and holds every sparsity
value of that architecture times every seed: all of them train in one batched pass.
Every SAE config of the grid is validated here, before any training, so a bad grid value
fails at once with one line naming it. Which grid field an architecture sweeps (its
sparsity knob) and its config class come from its module, through
:mod:`husai.saes.registry`.

Unit ids are content hashes: the unit's SAE configs, its training config and the identity
of its activations (model checksum, hook, checkpoint). Rerunning a study therefore finds
finished units by id, and a changed config never reuses a stale result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from husai.config import SAETrainConfig, StudyConfig
from husai.errors import UserError
from husai.saes.registry import get_architecture


@dataclass(frozen=True)
class Unit:
    """One batched training pass: every sparsity value x every seed of one arch/width/hook/checkpoint."""

    arch: str
    d_sae: int
    hook: str
    checkpoint: str
    sae_cfgs: tuple[Any, ...]
    sae_train: SAETrainConfig

    @property
    def sparsity_name(self) -> str:
        """The architecture's sparsity knob (k or a coefficient), from its module."""
        return get_architecture(self.arch).sparsity_name

    @property
    def sparsities(self) -> list[float]:
        return [float(getattr(c, self.sparsity_name)) for c in self.sae_cfgs]

    @property
    def n_models(self) -> int:
        return len(self.sae_cfgs) * len(self.sae_train.init_seeds)

    def content(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "d_sae": self.d_sae,
            "hook": self.hook,
            "checkpoint": self.checkpoint,
            "sae_cfgs": [c.model_dump(mode="json") for c in self.sae_cfgs],
            "sae_train": self.sae_train.model_dump(mode="json"),
        }

    def unit_id(self, activations_id: str, device: str = "cpu") -> str:
        """Content hash of this unit, the activations it trains on and, off the CPU, the
        device (CPU ids are the ones from before devices existed)."""
        key: dict[str, Any] = {"unit": self.content(), "acts": activations_id}
        if device != "cpu":
            key["device"] = device
        blob = json.dumps(key, sort_keys=True)
        slug = f"{self.arch}-w{self.d_sae}-{hook_abbrev(self.hook)}-{self.checkpoint}"
        return f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def hook_abbrev(hook: str) -> str:
    """Short hook name for unit ids (``blocks.0.hook_resid_post`` -> ``L0-resid_post``).
    Directory names use the full name, :func:`husai.activations.hook_slug`."""
    return (
        hook.replace("blocks.", "L").replace(".hook_", "-").replace("hook_", "").replace(".", "-")
    )


def expand_grid(study: StudyConfig) -> list[Unit]:
    """All units of the study's grid, in a fixed order; raises UserError on any invalid value."""
    units = []
    for g_idx, grid in enumerate(study.grids):
        where = f"grid.{g_idx}"
        sae_train = _sae_train(study.sae_train, grid.sae_train, where)
        for hook in grid.hooks:
            for checkpoint in grid.checkpoints:
                for arch in grid.archs:
                    for width in grid.widths:
                        field = get_architecture(arch).sparsity_name
                        values = getattr(grid, field)
                        if not values:
                            raise UserError(
                                f"{where}.{field}: expected at least one value for arch {arch!r}"
                            )
                        if len(set(values)) != len(values):
                            raise UserError(
                                f"{where}.{field}: expected distinct values, got {list(values)} "
                                "(a repeated setting would be compared with itself)"
                            )
                        cfgs = tuple(_sae_cfg(arch, width, v, f"{where}.{field}") for v in values)
                        units.append(Unit(arch, width, hook, checkpoint, cfgs, sae_train))
    ids = [json.dumps(u.content(), sort_keys=True) for u in units]
    if len(set(ids)) != len(ids):
        raise UserError("grid: the grids repeat a unit (same arch, width, hook and checkpoint)")
    return units


def _sae_train(base: SAETrainConfig, overrides: dict[str, Any], where: str) -> SAETrainConfig:
    if not overrides:
        return base
    try:
        return SAETrainConfig.model_validate({**base.model_dump(), **overrides})
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{where}.sae_train.{loc}: {first['msg']}") from None


def _sae_cfg(arch: str, width: int, value: float, where: str) -> Any:
    config_class = get_architecture(arch).config_class
    field = get_architecture(arch).sparsity_name
    as_type = config_class.model_fields[field].annotation  # int for k, float for a coefficient
    raw = {"arch": arch, "d_sae": width, field: as_type(value)}
    try:
        return config_class.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        raise UserError(
            f"{where}: value {value!r} invalid for {arch} width {width}: {msg}"
        ) from None


def estimate_cost(units: list[Unit], d_in_by_hook: dict[str, int]) -> dict[str, float]:
    """Upper bound on SAE-steps and FLOPs (forward + backward ~ 3x the two dense matmuls)."""
    sae_steps = flops = 0.0
    for unit in units:
        steps = unit.n_models * unit.sae_train.steps
        d_in = d_in_by_hook.get(unit.hook, 128)
        sae_steps += steps
        flops += steps * 3 * 2 * 2 * unit.sae_train.batch_size * d_in * unit.d_sae
    return {
        "units": len(units),
        "saes": sum(u.n_models for u in units),
        "sae_steps": sae_steps,
        "flops": flops,
    }
