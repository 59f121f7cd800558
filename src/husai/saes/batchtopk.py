"""BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders").

Training keeps the top k*B positive pre-activations over the whole batch of each
model (Bussmann et al. Sec. 3, eq. 2), so k latents are active per sample on average:

    z = BatchTopK_{kB}(ReLU((x - b_dec) W_enc + b_enc)),   L = ||x - x_hat||^2 + AuxK

with the AuxK loss of Gao et al. 2024 (see :mod:`husai.saes.topk`). At inference the
batch dependence is removed with a JumpReLU threshold theta estimated during training
(Bussmann et al. Sec. 3.1): theta is a bias-corrected exponential moving average (rate
0.01) of the smallest activation kept in each batch, so it is already meaningful after
a few steps. Saved as SAELens 'jumprelu' with ``threshold = theta`` for every latent.
The selection uses ``kthvalue`` per model (ties at the cut keep all tied values).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from husai.saes.base import Architecture, BatchedSAE, TrainOut, model_mm, mse_per_model
from husai.saes.config_base import KSAEConfigBase
from husai.saes.gram import gram_applies, gram_inputs
from husai.saes.topk import dense_auxk, gram_auxk_out

EMA_RATE = 0.01


class BatchTopKSAEConfig(KSAEConfigBase):
    """BatchTopK SAE (Bussmann et al. 2024): top k*B activations over the batch."""

    arch: Literal["batchtopk"] = "batchtopk"
    aux_coefficient: Annotated[float, Field(ge=0)] = 1 / 32
    """Weight of the AuxK loss on dead latents."""


def batch_topk(pre_NBS: Tensor, k_N: Tensor) -> tuple[Tensor, Tensor]:
    """(codes, min kept value per model [N]): top k_n * B positive values per model."""
    acts_NBS = torch.relu(pre_NBS)
    n_models, batch, d_sae = acts_NBS.shape
    cut = []
    with torch.no_grad():
        for n in range(n_models):
            keep = min(int(k_N[n]) * batch, batch * d_sae)
            flat = acts_NBS[n].reshape(-1)
            cut.append(flat.kthvalue(flat.numel() - keep + 1).values)
    cut_N = torch.stack(cut)
    mask_NBS = (acts_NBS.detach() >= cut_N[:, None, None]) & (acts_NBS.detach() > 0)
    codes_NBS = acts_NBS * mask_NBS
    with torch.no_grad():
        min_kept_N = torch.where(mask_NBS, codes_NBS, float("inf")).amin(dim=(1, 2))
        min_kept_N = torch.where(torch.isfinite(min_kept_N), min_kept_N, 0.0)
    return codes_NBS, min_kept_N


class BatchTopKArch(Architecture):
    name = "batchtopk"
    config_class = BatchTopKSAEConfig
    sparsity_name = "k"
    normalize_decoder = True
    decoder_init_norm = 1.0
    saelens_architecture = "jumprelu"
    saelens_reads = ("batchtopk",)
    prefixes: tuple[int, ...] | None = None
    """Nested prefix losses (Matryoshka); None: one reconstruction loss."""
    mse_name = "mse"

    def init_extra(self, cfg, d_sae: int) -> dict[str, Tensor]:
        return {"threshold": torch.zeros(d_sae), "threshold_ema": torch.zeros(())}

    def encode(self, sae: BatchedSAE, x_NBD: Tensor) -> Tensor:
        pre_NBS = sae.pre_acts(x_NBD)
        return torch.relu(pre_NBS) * (pre_NBS > sae.buffers["threshold"][:, None, :])

    def reconstruction_losses(self, sae: BatchedSAE, codes_NBS, x_NBD) -> dict[str, Tensor]:
        recon_NBD = model_mm(codes_NBS, sae.W_dec, sae.b_dec)
        return {"mse": mse_per_model(recon_NBD, x_NBD)}, recon_NBD

    def train_forward(self, sae: BatchedSAE, x_NBD: Tensor, dead_NS: Tensor) -> TrainOut:
        if gram_applies(sae, x_NBD):  # narrow dictionaries: husai.saes.gram
            gi = gram_inputs(sae, x_NBD)
            with torch.no_grad():
                codes_NBS, self._min_kept_N = batch_topk(gi.pre_NBS, self.hp("k", torch.long))
            return gram_auxk_out(self, sae, gi, codes_NBS, dead_NS, self.prefixes, self.mse_name)
        pre_NBS = sae.pre_acts(x_NBD)
        codes_NBS, min_kept_N = batch_topk(pre_NBS, self.hp("k", torch.long))
        self._min_kept_N = min_kept_N
        losses, recon_NBD = self.reconstruction_losses(sae, codes_NBS, x_NBD)
        if bool(dead_NS.any()):
            losses["auxk"] = dense_auxk(self, sae, pre_NBS, x_NBD - recon_NBD, dead_NS)
        active_NBS = codes_NBS.detach() > 0
        return TrainOut(losses, active_NBS.any(1), active_NBS.sum(-1, dtype=torch.float32).mean(-1))

    @torch.no_grad()
    def after_step(self, sae: BatchedSAE, out: TrainOut, step: int, active_N: Tensor) -> None:
        ema_N = sae.buffers["threshold_ema"]
        new_N = ema_N * (1 - EMA_RATE) + EMA_RATE * self._min_kept_N
        ema_N.copy_(torch.where(active_N, new_N, ema_N))
        theta_N = ema_N / (1 - (1 - EMA_RATE) ** (step + 1))
        theta_NS = theta_N[:, None].expand_as(sae.buffers["threshold"])
        sae.buffers["threshold"].copy_(
            torch.where(active_N[:, None], theta_NS, sae.buffers["threshold"])
        )
