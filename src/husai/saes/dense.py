"""Dense training kernel for narrow TopK-style SAEs: given the codes, the reconstruction
loss and its gradients, written out by hand with one 2-D ``mm`` per model.

For a TopK SAE (Gao et al. 2024) with selected codes z (zero off the selection):

    x_hat = z W_dec + b_dec,  e = x_hat - x,  L = mean_b ||e_b||^2

    dL/dW_dec = z^T g,   dL/dz = g W_dec^T,   dL/dpre = dL/dz * [z > 0]
    dL/dW_enc = x_in^T dL/dpre,   dL/db_enc = sum_b dL/dpre,
    dL/db_dec = sum_b g - W_enc sum_b dL/dpre          with g = 2 e / B.

The sparse kernels of :mod:`husai.saes.sparse` touch only the B*k selected pairs, which
pays off for wide dictionaries; below :data:`DENSE_MAX_WIDTH` latents their per-model
sorting and bag overheads cost more than the dense products (``benchmarks/sae_training.py
--small``). The path is chosen by width alone, never by k, so a model takes the same path
alone and in any group.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from husai.saes.base import model_mm, per_model_mv

DENSE_MAX_WIDTH = 128
"""Widths up to this train TopK SAEs with dense products. Measured (d_in 128, batch 512,
20 models, k <= 8, AMD EPYC, 1 and 2 threads): dense/sparse step time 0.91/0.75 at width 64,
1.03/0.98 at 128, 1.38/1.29 at 256, 1.9/1.8 at 512."""


class DenseReconFn(torch.autograd.Function):
    """(mse [N], error x_hat - x [N, B, D] without gradient) of fixed codes, with gradients
    to W_enc, b_enc, W_dec and b_dec through the active codes."""

    @staticmethod
    def forward(ctx: Any, x_NBD, x_in_NBD, codes_NBS, W_enc, b_enc, W_dec, b_dec):  # type: ignore[override]
        err_NBD = model_mm(codes_NBS, W_dec, b_dec).sub_(x_NBD)
        ctx.save_for_backward(x_in_NBD, codes_NBS, err_NBD, W_enc, W_dec)
        ctx.mark_non_differentiable(err_NBD)
        return err_NBD.pow(2).sum(-1).mean(-1), err_NBD

    @staticmethod
    def backward(ctx: Any, g_mse_N, _):  # type: ignore[override]
        x_in_NBD, codes_NBS, err_NBD, W_enc, W_dec = ctx.saved_tensors
        # in place: the saved error is not needed after this backward
        g_err_NBD = err_NBD.mul_((2 * g_mse_N / x_in_NBD.shape[1])[:, None, None])
        dW_dec = model_mm(codes_NBS.transpose(1, 2), g_err_NBD)
        g_pre_NBS = model_mm(g_err_NBD, W_dec.transpose(1, 2))
        g_pre_NBS.masked_fill_(codes_NBS <= 0, 0.0)
        dW_enc = model_mm(x_in_NBD.transpose(1, 2), g_pre_NBS)
        db_enc = g_pre_NBS.sum(1)
        db_dec = g_err_NBD.sum(1) - per_model_mv(W_enc, db_enc)
        return None, None, None, dW_enc, db_enc, dW_dec, db_dec


def dense_recon(sae: Any, x_NBD: Tensor, x_in_NBD: Tensor, codes_NBS: Tensor):
    """(mse [N], error [N, B, D]) of ``codes`` (computed without grad) under ``sae``."""
    return DenseReconFn.apply(
        x_NBD, x_in_NBD, codes_NBS, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    )
