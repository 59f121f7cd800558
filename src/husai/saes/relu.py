"""ReLU SAE with a decoder-norm-weighted L1 penalty (SAELens 'standard').

Encoder and loss (Bricken et al. 2023, "Towards Monosemanticity"; the norm-weighted
penalty is Conerly et al. 2024, "Circuits Updates - April 2024"):

    f(x)  = ReLU((x - b_dec) W_enc + b_enc)
    x_hat = f(x) W_dec + b_dec
    L     = ||x - x_hat||^2 + lambda * sum_i f_i(x) ||W_dec,i||_2

Because the penalty is weighted by the decoder row norms, the decoder is not
renormalised; its rows start at norm 0.1 (Conerly et al. 2024). Saved as SAELens
'standard' with ``apply_b_dec_to_input = True``.

The forward and backward passes are written out by hand (:class:`ReluSAEFn`): five
per-model matmuls per step instead of autograd's six (the b_dec gradient through the
encoder input is ``-W_enc @ sum_b dL/dpre``, a matrix-vector product, not a full
``dL/dpre @ W_enc^T``), and fewer passes over the [N, B, d_sae] codes. A unit test
checks the gradients against autograd.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from husai.saes.base import Architecture, BatchedSAE, TrainOut, model_mm, per_model_mv
from husai.saes.config_base import SAEConfigBase
from husai.saes.gram import gram_applies, gram_inputs, gram_losses


class ReluSAEConfig(SAEConfigBase):
    """ReLU SAE with an L1 penalty weighted by decoder column norms (SAELens 'standard')."""

    arch: Literal["relu"] = "relu"
    l1_coefficient: Annotated[float, Field(ge=0)] = 1e-3
    """Weight of the norm-weighted L1 sparsity penalty."""


class ReluSAEFn(torch.autograd.Function):
    """(mse [N], mean-over-batch norm-weighted L1 [N], activity counts [N, S]) of a ReLU SAE."""

    @staticmethod
    def forward(ctx: Any, x_NBD, W_enc, b_enc, W_dec, b_dec):  # type: ignore[override]
        batch = x_NBD.shape[1]
        x_in_NBD = x_NBD - b_dec[:, None, :]
        codes_NBS = model_mm(x_in_NBD, W_enc, b_enc).relu_()
        err_NBD = model_mm(codes_NBS, W_dec, b_dec).sub_(x_NBD)
        norms_NS = W_dec.norm(dim=-1)
        sum_NS = codes_NBS.sum(1)
        counts_NS = (codes_NBS > 0).sum(1)
        ctx.save_for_backward(x_in_NBD, codes_NBS, err_NBD, W_enc, W_dec, norms_NS, sum_NS)
        ctx.mark_non_differentiable(counts_NS)
        mse_N = err_NBD.pow(2).sum(-1).mean(-1)
        l1_N = (sum_NS * norms_NS).sum(-1) / batch
        return mse_N, l1_N, counts_NS

    @staticmethod
    def backward(ctx: Any, g_mse_N, g_l1_N, _):  # type: ignore[override]
        x_in_NBD, codes_NBS, err_NBD, W_enc, W_dec, norms_NS, sum_NS = ctx.saved_tensors
        batch = x_in_NBD.shape[1]
        g_err_NBD = err_NBD * (2 * g_mse_N / batch)[:, None, None]
        l1_scale_N1 = (g_l1_N / batch)[:, None]
        dW_dec = model_mm(codes_NBS.transpose(1, 2), g_err_NBD)
        dW_dec += (l1_scale_N1 * sum_NS / norms_NS)[:, :, None] * W_dec
        g_pre_NBS = model_mm(g_err_NBD, W_dec.transpose(1, 2))
        g_pre_NBS += (l1_scale_N1 * norms_NS)[:, None, :]
        g_pre_NBS.masked_fill_(codes_NBS <= 0, 0.0)
        dW_enc = model_mm(x_in_NBD.transpose(1, 2), g_pre_NBS)
        db_enc = g_pre_NBS.sum(1)
        db_dec = g_err_NBD.sum(1) - per_model_mv(W_enc, db_enc)
        return None, dW_enc, db_enc, dW_dec, db_dec


class ReluArch(Architecture):
    name = "relu"
    config_class = ReluSAEConfig
    sparsity_name = "l1_coefficient"
    normalize_decoder = False
    decoder_init_norm = 0.1
    resamples_dead = True
    saelens_architecture = "standard"
    saelens_reads = ("standard",)

    def encode(self, sae: BatchedSAE, x_NBD: Tensor) -> Tensor:
        return torch.relu(sae.pre_acts(x_NBD))

    def train_forward(self, sae: BatchedSAE, x_NBD: Tensor, dead_NS: Tensor) -> TrainOut:
        if gram_applies(sae, x_NBD, l1=True):  # narrow dictionaries: husai.saes.gram
            gi = gram_inputs(sae, x_NBD)
            codes_NBS = gi.pre_NBS.relu_()
            mse_N, _, l1_N = gram_losses(sae, gi, codes_NBS, l1=True)
            counts_NS = (codes_NBS > 0).sum(1)
        else:
            mse_N, l1_N, counts_NS = ReluSAEFn.apply(
                x_NBD, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
            )
        return TrainOut(
            losses={"mse": mse_N, "l1": self.hp("l1_coefficient") * l1_N},
            fired_NS=counts_NS > 0,
            l0_N=counts_NS.sum(-1, dtype=torch.float32) / x_NBD.shape[1],
        )
