"""Fit an SAE's encoder to a fixed decoder (the second step of a consensus SAE).

Given decoder rows ``W_dec [S, D]`` chosen elsewhere (the cluster means of several seeds'
latents, :mod:`husai.metrics.consensus`), train the encoder ``W_enc``, ``b_enc`` and the
decoder bias ``b_dec`` of one SAE of any registered architecture, the decoder held fixed.
The loss is the architecture's own training loss (its ``train_forward``: TopK's MSE plus
AuxK on dead latents, Gao et al. 2024; ReLU's MSE plus the norm-weighted L1, Conerly et al.
2024, a plain L1 for unit rows), and everything else is the batched trainer's
(:mod:`husai.saes.trainer`): Adam per model slice, its warmup/decay schedule, the batch
order as a pure function of ``(data_seed, step)``, dead-latent tracking, activations scaled
to mean squared norm ``d_in`` and that scale folded back at the end. With
``finetune_steps > 0`` a second phase of that many steps trains the decoder too (fresh Adam
state, rows renormalised when the architecture keeps them unit).

Initialisation: ``W_enc = W_dec^T`` (the tied init of :func:`husai.saes.base.init_models`),
``b_enc = 0``, ``b_dec = b_dec_init`` (e.g. the mean of the seeds' ``b_dec``) or 0; any
extra state of the architecture (a threshold) is its own init for ``train_cfg.init_seeds[0]``.
On CPU the result is a function of the inputs and the config only (same bits on a rerun).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from husai.errors import TrainingDivergedError, UserError
from husai.saes.base import BatchedSAE
from husai.saes.config_base import SAEConfigBase, SAETrainConfig
from husai.saes.optim import PerModelAdam, lr_at
from husai.saes.trainer import BatchStream, fold_scale, init_group, norm_scale


def fit_encoder(
    acts_RD: Float[Tensor, "R D"],
    W_dec_SD: Float[Tensor, "S D"],
    sae_cfg: SAEConfigBase,
    train_cfg: SAETrainConfig,
    *,
    b_dec_init_D: Float[Tensor, " D"] | None = None,
    finetune_steps: int = 0,
) -> BatchedSAE:
    """A one-model SAE with decoder ``W_dec`` whose encoder is fitted on ``acts`` (module doc).

    ``sae_cfg.d_sae`` must equal ``len(W_dec)``; ``train_cfg`` gives steps, batch size, lr,
    schedule, dead window, data seed and whether activations are normalised.
    """
    acts_RD = acts_RD.detach().float().cpu()
    if acts_RD.dim() != 2 or acts_RD.shape[1] != W_dec_SD.shape[1] or len(acts_RD) == 0:
        raise UserError(
            f"activations: expected a non-empty [n, {W_dec_SD.shape[1]}] tensor, "
            f"got {tuple(acts_RD.shape)}"
        )
    if sae_cfg.d_sae != W_dec_SD.shape[0]:
        raise UserError(f"d_sae: expected {W_dec_SD.shape[0]} (decoder rows), got {sae_cfg.d_sae}")
    scale = norm_scale(acts_RD) if train_cfg.normalize_activations else 1.0
    acts_RD = acts_RD * scale
    sae = init_group(
        acts_RD.shape[1],
        [sae_cfg],
        train_cfg.model_copy(update={"init_seeds": [train_cfg.init_seeds[0]]}),
    )
    with torch.no_grad():
        sae.params["W_dec"].copy_(W_dec_SD[None].float())
        sae.params["W_enc"].copy_(W_dec_SD.T[None].float())
        sae.params["b_enc"].zero_()
        if b_dec_init_D is not None:
            sae.params["b_dec"].copy_(b_dec_init_D[None].float() * scale)
        else:
            sae.params["b_dec"].zero_()
    _train(sae, acts_RD, train_cfg, train_decoder=False)
    if finetune_steps > 0:
        _train(sae, acts_RD, train_cfg.model_copy(update={"steps": finetune_steps}), True)
    for p in sae.params.values():
        p.requires_grad_(False)
    fold_scale(sae, scale)
    return sae


def _train(sae: BatchedSAE, acts_RD: Tensor, cfg: SAETrainConfig, train_decoder: bool) -> None:
    """``cfg.steps`` Adam steps on every parameter but (unless ``train_decoder``) W_dec."""
    for p in sae.params.values():
        p.requires_grad_(True)
    adam = PerModelAdam(sae.params)
    stream = BatchStream(len(acts_RD), cfg.batch_size, cfg.data_seed)
    since_fired_NS = torch.zeros(1, sae.d_sae, dtype=torch.long)
    for step in range(cfg.steps):
        x_NBD = acts_RD[stream.indices(step)][None]
        out = sae.arch.train_forward(sae, x_NBD, since_fired_NS >= cfg.dead_window)
        loss = torch.stack(list(out.losses.values())).sum()
        if not bool(torch.isfinite(loss.detach())):
            raise TrainingDivergedError(
                f"encoder fit diverged: loss {float(loss.detach())} at step {step}; "
                "lower the learning rate or check the activations"
            )
        loss.backward()
        grads = {k: p.grad for k, p in sae.params.items() if train_decoder or k != "W_dec"}
        with torch.no_grad():
            adam.step(sae.params, grads, lr_at(step, cfg), step + 1, [True])
            if train_decoder and sae.arch.normalize_decoder:
                W = sae.params["W_dec"][0]
                W.div_(W.norm(dim=-1, keepdim=True))
            sae.arch.after_step(sae, out, step, torch.tensor([True]))
        for p in sae.params.values():
            p.grad = None
        since_fired_NS += x_NBD.shape[1]
        since_fired_NS[out.fired_NS] = 0
