"""Gram-form training kernel for narrow SAEs on a shared batch: the reconstruction loss and
its gradients without ever forming a ``[models, batch, d_in]`` tensor.

For one model with codes z (fixed, computed without gradient from the pre-activations),
x_hat = z W_dec + b_dec and e = x_hat - x. Every term the loss and its gradients need is a
product of the shared batch x with ``[W_enc | W_dec^T]`` (one GEMM per model, which also
gives the encoder pre-activations), or a product of d_sae-sized tensors:

    P = x [W_enc | W_dec^T] = [A | X],   c = b_dec [W_enc | W_dec^T] = [c_enc | u]
    pre = A - c_enc + b_enc                          (= (x - b_dec) W_enc + b_enc)
    G = W_dec W_dec^T,   R = e W_dec^T = z G + u - X
    ||e_b||^2 = z_b . (R_b + u - X_b) + ||b_dec - x_b||^2
    dL/dz = 2 R / B,   dL/dW_dec = 2/B (z^T z W_dec + (z^T 1) b_dec - z^T x)
    dL/db_dec = 2/B (1^T z) W_dec + 2 (b_dec - mean_b x_b) - W_enc (1^T dL/dpre)
    dL/dW_enc = x^T dL/dpre - b_dec (1^T dL/dpre),   dL/db_enc = 1^T dL/dpre

where dL/dpre is dL/dz on the active codes. The second GEMM per model is
``x^T [w | dL/dpre]``, with w the loss-weighted codes, which gives both ``z^T x`` and the
encoder gradient. Two optional terms ride along in the same products:

- AuxK (Gao et al. 2024, App. A.2) with dead-latent codes z_a and the detached target -e:
  ``||z_a W_dec + e||^2 = z_a . (z_a G + 2 R) + ||e||^2``, gradient ``2/B (z_a G + R)`` to
  z_a and ``2/B z_a^T (z_a W_dec + e)`` to W_dec;
- the decoder-norm-weighted L1 of ReLU SAEs (:mod:`husai.saes.relu`),
  ``sum_s (sum_b z_bs) ||W_dec,s|| / B``.

Two GEMMs of ``B x d_in x 2 d_sae`` per model replace the five ``B x d_in x d_sae`` products
and the passes over the d_in-sized error of the dense kernels, at the price of
``O(B d_sae^2)`` small products, so it pays for narrow dictionaries: ``d_sae <= d_in / 2``
for the TopK family, whose AuxK also gets cheap here (every dead latent is in AuxK's top
d_in / 2), ``d_in / 4`` for ReLU-L1 (measured, see the constants; BENCHMARKS.md). It needs the batch shared by all
models (``per_model_data_order`` off) and runs on the CPU; the path depends on the shapes
alone, so a model takes it alone and in any group. The loss is an expansion, exact in real
arithmetic; in float32 it agrees with the direct form to rounding (tests against autograd).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from husai.saes.base import BatchedSAE, on_accelerator, per_model_mm, per_model_mv

GRAM_MAX_WIDTH_RATIO = 0.5
"""TopK-family SAEs with ``d_sae <= ratio * d_in`` train through the Gram form. Measured per
training step against the dense/sparse kernels on the default study's activations and
settings, AuxK running (``benchmarks/sae_training.py --kernels``, 2 threads): residual
stream (d_in 128) TopK 2.0x at widths 16 and 64, Matryoshka 1.9x and BatchTopK 1.4x at 64;
MLP (d_in 512) TopK 3.5x at width 64 and 3.0x at 128."""
GRAM_MAX_WIDTH_RATIO_L1 = 0.25
"""The same for ReLU-L1, which has no AuxK to gain on: on synthetic activations (d_in 128,
2 threads) the Gram form was 1.25x at width 16, 1.14x at 32 and 0.85x at 64 of the dense
hand-written kernel; on d_in 512, 1.3x at 64 and 1.03x at 128."""


def gram_applies(sae: BatchedSAE, x_NBD: Tensor, l1: bool = False) -> bool:
    """Whether ``sae`` trains through the Gram form on ``x_NBD``: on the CPU, a batch shared
    by all models (a stride-0 view), and a narrow dictionary (``l1``: a ReLU-L1 SAE)."""
    ratio = GRAM_MAX_WIDTH_RATIO_L1 if l1 else GRAM_MAX_WIDTH_RATIO
    return not on_accelerator(sae) and x_NBD.stride(0) == 0 and sae.d_sae <= ratio * sae.d_in


class GramInputs(NamedTuple):
    """The products of one step that do not depend on the codes."""

    x_NBD: Tensor
    """The shared batch, expanded over models (stride 0)."""
    P_NBT: Tensor
    """``x [W_enc | W_dec^T]``, T = 2 d_sae."""
    c_NT: Tensor
    """``b_dec [W_enc | W_dec^T]``."""
    Wcat_NDT: Tensor
    """``[W_enc | W_dec^T]``."""
    xbar_D: Tensor
    x2: Tensor
    """mean_b ||x_b||^2 (a scalar tensor)."""
    pre_NBS: Tensor
    """Encoder pre-activations ``(x - b_dec) W_enc + b_enc`` (a fresh tensor)."""


@torch.no_grad()
def gram_inputs(sae: BatchedSAE, x_NBD: Tensor) -> GramInputs:
    """One GEMM per model gives the pre-activations and ``x W_dec^T`` together."""
    s, x_BD = sae.d_sae, x_NBD[0]
    Wcat_NDT = torch.cat([sae.W_enc, sae.W_dec.transpose(1, 2)], dim=2)
    P_NBT = per_model_mm(x_NBD, Wcat_NDT)
    c_NT = per_model_mv(Wcat_NDT.transpose(1, 2), sae.b_dec)
    pre_NBS = (P_NBT[:, :, :s] - c_NT[:, None, :s]).add_(sae.b_enc[:, None, :])
    x2 = x_BD.pow(2).sum(-1).mean()
    return GramInputs(x_NBD, P_NBT, c_NT, Wcat_NDT, x_BD.mean(0), x2, pre_NBS)


class GramLossFn(torch.autograd.Function):
    """(mse [N], AuxK mse [N], norm-weighted L1 [N]) of fixed codes under the SAE's
    parameters, with gradients to W_enc, b_enc, W_dec and b_dec through the active codes.
    The AuxK and L1 outputs are zeros unless ``za_NBS`` is given or ``l1`` is set."""

    @staticmethod
    def forward(ctx: Any, W_enc, b_enc, W_dec, b_dec, gi, z_NBS, za_NBS, l1, nest_S):  # type: ignore[override]
        s, batch = z_NBS.shape[2], z_NBS.shape[1]
        G_NSS = per_model_mm(W_dec, W_dec.transpose(1, 2))
        X_NBS, u_NS = gi.P_NBT[:, :, s:], gi.c_NT[:, s:]
        uX_NBS = u_NS[:, None, :] - X_NBS
        const_N = (b_dec * b_dec).sum(-1) - 2 * (b_dec * gi.xbar_D).sum(-1) + gi.x2
        R_NBS = C_SS = None  # R = e W_dec^T: the plain mse's, and AuxK's with any mse
        if nest_S is None or za_NBS is not None:
            R_NBS = per_model_mm(z_NBS, G_NSS).add_(uX_NBS)
        Rn_NBS, n_terms = R_NBS, 1
        if nest_S is not None:  # Matryoshka: latent j enters nest_S[j] of the prefix losses
            C_SS = torch.minimum(nest_S[:, None], nest_S[None, :])  # latents i and j share
            Rn_NBS = per_model_mm(z_NBS, G_NSS * C_SS).add_(uX_NBS * nest_S)
            n_terms = int(nest_S.max())
        mse_N = (z_NBS * (Rn_NBS + uX_NBS * (1 if nest_S is None else nest_S))).sum(-1).mean(-1)
        mse_N += n_terms * const_N
        aux_N = l1_N = torch.zeros_like(mse_N)
        zaG_NBS = norms_NS = None
        if za_NBS is not None:  # AuxK's target is the error of the whole dictionary
            zaG_NBS = per_model_mm(za_NBS, G_NSS)
            full_N = mse_N if nest_S is None else (z_NBS * (R_NBS + uX_NBS)).sum(-1).mean(-1)
            aux_N = (za_NBS * (zaG_NBS + 2 * R_NBS)).sum(-1).mean(-1) + full_N
            aux_N += 0 if nest_S is None else const_N
        zsum_NS = z_NBS.sum(1)
        if l1:
            norms_NS = W_dec.norm(dim=-1)
            l1_N = (zsum_NS * norms_NS).sum(-1) / batch
        ctx.gi, ctx.l1, ctx.nest, ctx.C_SS, ctx.n_terms = gi, l1, nest_S, C_SS, n_terms
        ctx.saved = (z_NBS, za_NBS, R_NBS, Rn_NBS, zaG_NBS, norms_NS, zsum_NS, W_dec, b_dec)
        return mse_N, aux_N, l1_N

    @staticmethod
    def backward(ctx: Any, g_mse_N, g_aux_N, g_l1_N):  # type: ignore[override]
        z_NBS, za_NBS, R_NBS, Rn_NBS, zaG_NBS, norms_NS, zsum_NS, W_dec, b_dec = ctx.saved
        gi, nest_S, s, batch = ctx.gi, ctx.nest, z_NBS.shape[2], z_NBS.shape[1]
        g_pre_NBS = Rn_NBS * (2 * g_mse_N / batch)[:, None, None]
        if ctx.l1:
            g_pre_NBS += ((g_l1_N / batch)[:, None] * norms_NS)[:, None, :]
        g_pre_NBS.masked_fill_(z_NBS <= 0, 0.0)
        zn_NBS = z_NBS if nest_S is None else z_NBS * nest_S
        w_NBS = zn_NBS * g_mse_N[:, None, None]  # the codes as the x and b_dec terms weigh them
        H_NSS = per_model_mm(z_NBS.transpose(1, 2), z_NBS)
        if nest_S is not None:
            H_NSS *= ctx.C_SS
        H_NSS *= g_mse_N[:, None, None]
        if za_NBS is not None:
            g_aux_NBS = (zaG_NBS + R_NBS).mul_((2 * g_aux_N / batch)[:, None, None])
            g_pre_NBS += g_aux_NBS.masked_fill_(za_NBS <= 0, 0.0)
            wa_NBS = za_NBS * g_aux_N[:, None, None]
            w_NBS += wa_NBS
            H_NSS += per_model_mm(wa_NBS.transpose(1, 2), za_NBS + z_NBS)
        Q_NDT = per_model_mm(gi.x_NBD.transpose(1, 2), torch.cat([w_NBS, g_pre_NBS], dim=2))
        dW_dec = per_model_mm(H_NSS, W_dec)
        dW_dec += w_NBS.sum(1)[:, :, None] * b_dec[:, None, :]
        dW_dec -= Q_NDT[:, :, :s].transpose(1, 2)
        dW_dec *= 2 / batch
        if ctx.l1:
            dW_dec += ((g_l1_N / batch)[:, None] * zsum_NS / norms_NS)[:, :, None] * W_dec
        db_enc = g_pre_NBS.sum(1)
        dW_enc = Q_NDT[:, :, s:] - b_dec[:, :, None] * db_enc[:, None, :]
        v_NT = torch.cat([-db_enc, (2 / batch) * g_mse_N[:, None] * zn_NBS.sum(1)], dim=1)
        db_dec = per_model_mv(gi.Wcat_NDT, v_NT)
        db_dec += (2 * ctx.n_terms) * g_mse_N[:, None] * (b_dec - gi.xbar_D)
        return dW_enc, db_enc, dW_dec, db_dec, None, None, None, None, None


def gram_losses(
    sae: BatchedSAE,
    gi: GramInputs,
    z_NBS: Tensor,
    za_NBS: Tensor | None = None,
    l1: bool = False,
    prefixes: tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(mse, AuxK mse, L1) per model of codes ``z`` (and AuxK codes ``za``) under ``sae``;
    with Matryoshka ``prefixes`` the mse is the sum of the nested prefix mses."""
    nest_S = None
    if prefixes is not None:  # how many of the prefixes hold each latent
        bounds = torch.tensor(prefixes)
        nest_S = (torch.arange(sae.d_sae)[:, None] < bounds[None, :]).sum(-1).to(z_NBS.dtype)
    return GramLossFn.apply(
        sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, gi, z_NBS, za_NBS, l1, nest_S
    )
