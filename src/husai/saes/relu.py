"""ReLU SAE with a decoder-norm-weighted L1 penalty (SAELens 'standard').

Encoder and loss (Bricken et al. 2023, "Towards Monosemanticity"; the norm-weighted
penalty is Conerly et al. 2024, "Circuits Updates - April 2024", eq. for L):

    f(x)  = ReLU((x - b_dec) W_enc + b_enc)
    x_hat = f(x) W_dec + b_dec
    L     = ||x - x_hat||^2 + lambda * sum_i f_i(x) ||W_dec,i||_2

Because the penalty is weighted by the decoder row norms, the decoder is not
renormalised; its rows start at norm 0.1 (Conerly et al. 2024). Saved as SAELens
'standard' with ``apply_b_dec_to_input = True``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from husai.saes.base import Architecture, BatchedSAE, TrainOut, mse_per_model


class ReluArch(Architecture):
    name = "relu"
    normalize_decoder = False
    decoder_init_norm = 0.1
    sparsity_name = "l1_coefficient"

    def encode(self, sae: BatchedSAE, x_NBD: Tensor) -> Tensor:
        return torch.relu(sae.pre_acts(x_NBD))

    def train_forward(self, sae: BatchedSAE, x_NBD: Tensor, dead_NS: Tensor) -> TrainOut:
        codes_NBS = torch.relu(sae.pre_acts(x_NBD))
        recon_NBD = torch.baddbmm(sae.b_dec[:, None, :], codes_NBS, sae.W_dec)
        norms_NS1 = sae.W_dec.norm(dim=-1).unsqueeze(-1)
        l1_N = torch.bmm(codes_NBS, norms_NS1).squeeze(-1).mean(-1)
        coef_N = self.hp("l1_coefficient")
        active_NBS = codes_NBS.detach() > 0
        return TrainOut(
            losses={"mse": mse_per_model(recon_NBD, x_NBD), "l1": coef_N * l1_N},
            fired_NS=active_NBS.any(1),
            l0_N=active_NBS.sum(-1, dtype=torch.float32).mean(-1),
        )
