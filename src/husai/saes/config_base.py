"""Config pieces shared by every SAE architecture and by the batched trainer.

The frozen pydantic base of every HUSAI config, the bases of the per-architecture SAE
configs (each architecture defines its own config class in its module, e.g.
:class:`husai.saes.relu.ReluSAEConfig`) and :class:`SAETrainConfig`, which the trainer
reads. Kept apart from :mod:`husai.config` so that the architecture modules and the
trainer never import the experiment configs, which import the architecture registry.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class FrozenConfig(BaseModel):
    """Frozen, ``extra="forbid"``: a typo'd key is an error, never a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SAEConfigBase(FrozenConfig):
    """What every architecture's config has; a subclass adds ``arch: Literal[name]`` and its
    own fields (its sparsity knob among them)."""

    d_sae: Annotated[int, Field(ge=1)] = 512
    """Number of latents (dictionary width)."""


class KSAEConfigBase(SAEConfigBase):
    """Base of the configs whose sparsity knob is k (TopK, BatchTopK, Matryoshka)."""

    k: Annotated[int, Field(ge=1)] = 16
    """Active latents per sample (TopK) or on average per sample (BatchTopK)."""

    @field_validator("k")
    @classmethod
    def _k_le_d_sae(cls, k: int, info: ValidationInfo) -> int:
        d_sae = info.data.get("d_sae")
        if d_sae is not None and k > d_sae:
            raise ValueError(f"expected k <= d_sae ({d_sae}), got {k}")
        return k


class SAETrainConfig(FrozenConfig):
    """How a batched group of SAEs is trained (shared by every SAE in the group)."""

    init_seeds: Annotated[list[int], Field(min_length=1)] = [0, 1, 2, 3, 4]
    """One SAE initialisation seed per entry; each seed is one SAE. Seeds must be distinct."""
    data_seed: int = 0
    """Seed of the order in which activation batches are drawn."""
    per_model_data_order: bool = False
    """If true, each SAE draws its own batch order from data_seed + its init seed."""
    batch_size: Annotated[int, Field(ge=1)] = 1024
    """Activations per step."""
    steps: Annotated[int, Field(ge=1)] = 3000
    """Maximum optimisation steps."""
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """Adam learning rate."""
    warmup_steps: Annotated[int, Field(ge=0)] = 50
    """Linear LR warmup."""
    decay_start: Annotated[float, Field(ge=0, le=1)] = 0.8
    """Fraction of training after which the LR decays linearly to 0."""
    dead_window: Annotated[int, Field(ge=1)] = 10_000
    """A latent is dead if it has not fired in this many most recent samples."""
    n_snapshots: Annotated[int, Field(ge=0)] = 8
    """Decoder snapshots at log-spaced steps, for training dynamics."""
    plateau_tol: Annotated[float, Field(ge=0)] = 1e-3
    """Converged when the relative loss improvement over a window falls below this (0: never stop early)."""
    plateau_window: Annotated[int, Field(ge=1)] = 200
    """Steps per window of the plateau test (mean loss of a window vs the window before)."""
    log_every: Annotated[int, Field(ge=1)] = 50
    """Steps between entries of the training history (loss terms, L0, dead fraction)."""
    checkpoint_every: Annotated[int, Field(ge=1)] = 1000
    """Steps between resumable checkpoints (only when a checkpoint directory is given)."""
    resample_dead_at: list[Annotated[int, Field(ge=1)]] = []
    """Steps at which dead latents are resampled (Bricken et al. 2023; ReLU-L1 only, see
    ``husai.saes.resample``); empty: never. TopK-family SAEs use AuxK instead."""
    normalize_activations: bool = True
    """Scale activations so that their mean squared norm is d_in (SAELens 'expected_average_only_in')."""

    @field_validator("init_seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(
                f"expected distinct seeds, got {seeds} (seed(s) {repeated} repeated; "
                "a repeated seed trains the same SAE twice and scores a false 1.0)"
            )
        return seeds
