"""JumpReLU SAE with an L0 penalty (Rajamanoharan et al. 2024, "Jumping Ahead: Improving
Reconstruction Fidelity with JumpReLU Sparse Autoencoders").

    pi(x) = (x - b_dec) W_enc + b_enc
    z     = JumpReLU_theta(pi) = pi * H(pi - theta)                    (eq. 4)
    L     = ||x - x_hat||^2 + lambda * ||H(pi - theta)||_0            (eq. 9)

H has zero gradient almost everywhere, so theta is trained with straight-through
estimators using the rectangle kernel K(u) = 1{|u| < 1/2} and bandwidth eps
(eqs. 11-12):

    d/dtheta JumpReLU_theta(pi) := -(theta / eps) K((pi - theta) / eps)
    d/dtheta H(pi - theta)      := -(1 / eps) K((pi - theta) / eps)

The pre-activation gets the exact gradient H(pi - theta) from the JumpReLU and none
from the L0 term (DeepMind's choice). theta is a parameter of its own (not log theta,
as SAELens 6), clamped at 0 after each step; decoder rows are kept at unit norm so that
the L0 penalty cannot be dodged by rescaling. Saved as SAELens 'jumprelu'.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from husai.saes.base import Architecture, BatchedSAE, TrainOut, model_mm, mse_per_model
from husai.saes.config_base import SAEConfigBase


class JumpReLUSAEConfig(SAEConfigBase):
    """JumpReLU SAE with an L0 penalty through a straight-through estimator (Rajamanoharan et al. 2024)."""

    arch: Literal["jumprelu"] = "jumprelu"
    l0_coefficient: Annotated[float, Field(ge=0)] = 1.0
    """Weight of the L0 sparsity penalty."""
    bandwidth: Annotated[float, Field(gt=0)] = 0.2
    """Width of the rectangle kernel of the straight-through estimator. Activations are
    normalised to mean squared norm d_in, so pre-activations are O(1); SAELens's 1e-3 (for
    both this and init_threshold) left L0 at ~d_sae after 400 steps on the grokked model's
    residual stream, while (0.2, 0.5) gave L0 39 -> 17 for l0_coefficient 0.1 -> 1."""
    init_threshold: Annotated[float, Field(gt=0)] = 0.5
    """Initial threshold of every latent (see bandwidth)."""


def _kernel(pre_NBS: Tensor, theta_NS: Tensor, eps_N: Tensor) -> Tensor:
    eps_N11 = eps_N[:, None, None]
    return ((pre_NBS - theta_NS[:, None, :]).abs() < eps_N11 / 2).float() / eps_N11


class JumpReLUFn(torch.autograd.Function):
    """pi * H(pi - theta) with the straight-through gradient for theta (eq. 11)."""

    @staticmethod
    def forward(ctx: Any, pre_NBS, theta_NS, eps_N):  # type: ignore[override]
        ctx.save_for_backward(pre_NBS, theta_NS, eps_N)
        return pre_NBS * (pre_NBS > theta_NS[:, None, :])

    @staticmethod
    def backward(ctx: Any, grad_NBS):  # type: ignore[override]
        pre_NBS, theta_NS, eps_N = ctx.saved_tensors
        d_pre = grad_NBS * (pre_NBS > theta_NS[:, None, :])
        ste = -theta_NS[:, None, :] * _kernel(pre_NBS, theta_NS, eps_N)
        return d_pre, (grad_NBS * ste).sum(1), None


class StepFn(torch.autograd.Function):
    """H(pi - theta) with the straight-through gradient for theta only (eq. 12)."""

    @staticmethod
    def forward(ctx: Any, pre_NBS, theta_NS, eps_N):  # type: ignore[override]
        ctx.save_for_backward(pre_NBS, theta_NS, eps_N)
        return (pre_NBS > theta_NS[:, None, :]).float()

    @staticmethod
    def backward(ctx: Any, grad_NBS):  # type: ignore[override]
        pre_NBS, theta_NS, eps_N = ctx.saved_tensors
        ste = -_kernel(pre_NBS, theta_NS, eps_N)
        return None, (grad_NBS * ste).sum(1), None


class JumpReLUArch(Architecture):
    name = "jumprelu"
    config_class = JumpReLUSAEConfig
    sparsity_name = "l0_coefficient"
    normalize_decoder = True
    decoder_init_norm = 1.0
    has_threshold_param = True
    saelens_architecture = "jumprelu"
    saelens_reads = ("jumprelu",)

    def init_extra(self, cfg, d_sae: int) -> dict[str, Tensor]:
        return {"threshold": torch.full((d_sae,), float(cfg.init_threshold))}

    def encode(self, sae: BatchedSAE, x_NBD: Tensor) -> Tensor:
        pre_NBS = sae.pre_acts(x_NBD)
        return pre_NBS * (pre_NBS > sae.params["threshold"][:, None, :])

    def train_forward(self, sae: BatchedSAE, x_NBD: Tensor, dead_NS: Tensor) -> TrainOut:
        pre_NBS = sae.pre_acts(x_NBD)
        theta_NS, eps_N = sae.params["threshold"], self.hp("bandwidth")
        codes_NBS = JumpReLUFn.apply(pre_NBS, theta_NS, eps_N)
        recon_NBD = model_mm(codes_NBS, sae.W_dec, sae.b_dec)
        l0_NB = StepFn.apply(pre_NBS, theta_NS, eps_N).sum(-1)
        active_NBS = codes_NBS.detach() != 0
        return TrainOut(
            losses={
                "mse": mse_per_model(recon_NBD, x_NBD),
                "l0": self.hp("l0_coefficient") * l0_NB.mean(-1),
            },
            fired_NS=active_NBS.any(1),
            l0_N=active_NBS.sum(-1, dtype=torch.float32).mean(-1),
        )

    @torch.no_grad()
    def after_step(self, sae: BatchedSAE, out: TrainOut, step: int, active_N: Tensor) -> None:
        sae.params["threshold"].clamp_(min=0.0)
