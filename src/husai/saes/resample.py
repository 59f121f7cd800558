"""Resampling dead latents of L1-penalised SAEs (Bricken et al. 2023, "Towards Monosemanticity").

TopK-family SAEs keep latents alive with an auxiliary loss (AuxK, Gao et al. 2024). For a
ReLU SAE trained with an L1 penalty, Bricken et al. resample instead: at a few fixed steps,
every dead latent is pointed at an input the SAE reconstructs badly. Per model, here:

1. the squared reconstruction error ``e_r = ||x_r - x_hat_r||^2`` of every activation row;
2. for each dead latent, a row drawn with probability proportional to ``e_r^2`` (their
   "probability proportional to the square of the loss"), with replacement, from a
   generator seeded by (data seed, init seed, step), so a resumed run draws the same rows;
3. with ``u = (x_r - b_dec) / ||x_r - b_dec||``: the decoder row becomes ``u`` times the mean
   norm of the alive decoder rows (the decoder is not unit-norm under the norm-weighted
   penalty, Conerly et al. 2024), the encoder column ``u`` times 0.2 times the mean alive
   encoder column norm, the encoder bias 0 (Bricken et al.'s constants);
4. Adam's moments of the changed entries are reset to 0, and the latents' "steps since
   fired" counters too, so they get ``dead_window`` samples to fire before counting as dead.

Which architectures resample is :attr:`husai.saes.base.Architecture.resamples_dead`; when is
``sae_train.resample_dead_at`` (steps; empty, the default, never resamples).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from husai.saes.base import BatchedSAE, model_mm
from husai.saes.optim import PerModelAdam

ENCODER_SCALE = 0.2
"""Bricken et al. 2023: a resampled encoder column is the input direction times 0.2 times
the mean alive encoder norm."""
ROWS_PER_CHUNK = 2048


@torch.no_grad()
def reconstruction_errors(sae: BatchedSAE, acts_RD: Float[Tensor, "R D"]) -> Tensor:
    """``||x_r - x_hat_r||^2`` ``[N, R]`` of every model on every row (in row chunks)."""
    out = []
    for start in range(0, acts_RD.shape[0], ROWS_PER_CHUNK):
        x_BD = acts_RD[start : start + ROWS_PER_CHUNK]
        x_NBD = x_BD.expand(sae.n_models, *x_BD.shape)
        recon_NBD = model_mm(sae.arch.encode(sae, x_NBD), sae.W_dec, sae.b_dec)
        out.append((x_NBD - recon_NBD).pow(2).sum(-1))
    return torch.cat(out, dim=1)


@torch.no_grad()
def resample_dead(
    sae: BatchedSAE,
    adam: PerModelAdam,
    acts_RD: Float[Tensor, "R D"],
    dead_NS: Bool[Tensor, "N S"],
    models: list[int],
    seeds: list[int],
) -> list[int]:
    """Resample the dead latents of ``models`` in place (module docstring); returns how many
    latents each model had resampled (0 for the others). ``seeds[n]`` seeds model n's draw."""
    counts = [0] * sae.n_models
    if not any(bool(dead_NS[n].any()) for n in models):
        return counts
    err_NR = reconstruction_errors(sae, acts_RD)
    for n in models:
        dead_S = dead_NS[n]
        n_dead = int(dead_S.sum())
        if n_dead == 0:
            continue
        err_R = err_NR[n].double().pow(2)
        if not bool(err_R.sum() > 0):
            continue  # nothing is reconstructed badly: no row to point a latent at
        gen = torch.Generator().manual_seed(seeds[n])
        probs_R = (err_R / err_R.sum()).cpu()  # the seeded draw runs on the CPU on any device
        rows = torch.multinomial(probs_R, n_dead, replacement=True, generator=gen)
        x_KD = acts_RD[rows] - sae.b_dec[n]
        u_KD = x_KD / x_KD.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alive_S = ~dead_S
        dec_norm = sae.W_dec[n][alive_S].norm(dim=-1).mean() if alive_S.any() else None
        enc_norm = sae.W_enc[n][:, alive_S].norm(dim=0).mean() if alive_S.any() else None
        dec_norm = dec_norm if dec_norm is not None else torch.tensor(sae.arch.decoder_init_norm)
        enc_norm = enc_norm if enc_norm is not None else torch.tensor(1.0)
        idx = dead_S.nonzero().flatten()
        sae.W_dec[n, idx] = u_KD * dec_norm
        sae.W_enc[n][:, idx] = u_KD.T * (ENCODER_SCALE * enc_norm)
        sae.b_enc[n, idx] = 0.0
        for state in (adam.m, adam.v):
            state["W_dec"][n, idx] = 0.0
            state["W_enc"][n][:, idx] = 0.0
            state["b_enc"][n, idx] = 0.0
        counts[n] = n_dead
    return counts


def resample_seed(data_seed: int, init_seed: int, step: int) -> int:
    """The generator seed of one model's draw at one step (stateless, so resumes agree)."""
    return (data_seed * 1_000_003 + init_seed * 10_007 + step) % (2**63)
