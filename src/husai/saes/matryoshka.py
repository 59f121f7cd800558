"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level Features with
Matryoshka Sparse Autoencoders").

The codes are those of BatchTopK (:mod:`husai.saes.batchtopk`); the loss sums the
reconstruction errors of nested prefixes of the dictionary (Bussmann et al. 2025,
eq. 2), so the first latents must reconstruct on their own:

    L = sum_{m in M} ||x - (z_{:m} W_dec,{:m} + b_dec)||^2 + AuxK

M defaults to (d_sae/8, d_sae/4, d_sae/2, d_sae). The prefix reconstructions are
accumulated block by block. Inference is BatchTopK's: a JumpReLU with the estimated
threshold, saved as SAELens 'jumprelu' (SAELens has no inference-time matryoshka
class; the nested structure only matters for training). The prefixes are recorded in
the husai section of cfg.json.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator

from husai.saes.base import BatchedSAE, model_mm, mse_per_model
from husai.saes.batchtopk import BatchTopKArch
from husai.saes.config_base import KSAEConfigBase


class MatryoshkaSAEConfig(KSAEConfigBase):
    """Matryoshka BatchTopK SAE (Bussmann et al. 2025): nested prefix reconstructions."""

    arch: Literal["matryoshka"] = "matryoshka"
    prefixes: tuple[int, ...] | None = None
    """Nested prefix sizes, ascending and ending at d_sae; default halves down to d_sae/8."""
    aux_coefficient: Annotated[float, Field(ge=0)] = 1 / 32
    """Weight of the AuxK loss on dead latents."""

    @field_validator("prefixes")
    @classmethod
    def _check_prefixes(
        cls, p: tuple[int, ...] | None, info: ValidationInfo
    ) -> tuple[int, ...] | None:
        d_sae = info.data.get("d_sae")
        if p is not None and (list(p) != sorted(set(p)) or p[-1] != d_sae or p[0] < 1):
            raise ValueError(
                f"expected ascending prefixes ending at d_sae ({d_sae}), got {list(p)}"
            )
        return p


def default_prefixes(d_sae: int) -> tuple[int, ...]:
    """(d_sae/8, d_sae/4, d_sae/2, d_sae), dropping duplicates and zeros."""
    sizes = {max(d_sae // 8, 1), max(d_sae // 4, 1), max(d_sae // 2, 1), d_sae}
    return tuple(sorted(sizes))


def prefixes_of(cfg) -> tuple[int, ...]:
    return tuple(cfg.prefixes) if cfg.prefixes is not None else default_prefixes(cfg.d_sae)


class MatryoshkaArch(BatchTopKArch):
    name = "matryoshka"
    config_class = MatryoshkaSAEConfig
    saelens_reads = ()  # saved as 'jumprelu' like BatchTopK; SAELens' batchtopk loads as that
    mse_name = "matryoshka_mse"

    def husai_fields(self, cfg: Any) -> dict[str, Any]:
        return {"prefixes": list(prefixes_of(cfg))}

    def __init__(self, cfgs) -> None:
        super().__init__(cfgs)
        shapes = {prefixes_of(c) for c in cfgs}
        if len(shapes) != 1:
            raise ValueError(f"one group needs one prefix list, got {sorted(shapes)}")
        self.prefixes = shapes.pop()

    def reconstruction_losses(self, sae: BatchedSAE, codes_NBS, x_NBD):
        recon_NBD = sae.b_dec[:, None, :].expand_as(x_NBD)
        total_N = torch.zeros(sae.n_models)
        start = 0
        for end in self.prefixes:
            block = model_mm(codes_NBS[:, :, start:end], sae.W_dec[:, start:end, :])
            recon_NBD = recon_NBD + block
            total_N = total_N + mse_per_model(recon_NBD, x_NBD)
            start = end
        return {"matryoshka_mse": total_N}, recon_NBD
