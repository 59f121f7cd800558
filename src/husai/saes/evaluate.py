"""Reconstruction and sparsity metrics of an SAE on given activations.

- explained_variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (fraction of the
  activations' total variance the reconstruction recovers; 1 is perfect, 0 is no better
  than predicting the mean);
- mse = mean over samples and dimensions of (x - x_hat)^2;
- l0 = mean number of non-zero codes per sample;
- dead_fraction = share of latents that never fire on these activations, with
  ``alive_mask`` (bool [d_sae]) marking the ones that do.

Works on a :class:`~husai.saes.io.LoadedSAE` (scalars) or a
:class:`~husai.saes.base.BatchedSAE` (one value per model in lists, ``alive_mask``
[N, d_sae]; pass ``index`` for one model's scalars). Activations are raw (an SAE
returned by the trainer has its normalisation folded in).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from husai.saes.base import BatchedSAE


@torch.no_grad()
def evaluate(
    sae: Any, acts_ND: Float[Tensor, "n d"], index: int | None = None, batch_size: int = 4096
) -> dict[str, Any]:
    """Explained variance, MSE, L0, dead fraction and alive mask of ``sae`` on ``acts_ND``."""
    if isinstance(sae, BatchedSAE) and index is not None:
        sae = sae.select(index)
        single = True
    else:
        single = not isinstance(sae, BatchedSAE)
    acts_ND = acts_ND.detach().float()
    n_models = sae.n_models if isinstance(sae, BatchedSAE) else 1
    batch_size = max(1, min(batch_size, 2**25 // (n_models * sae.W_enc.shape[-1])))
    mean_D = acts_ND.double().mean(0)
    sse = sst = l0 = None
    fired = None
    for start in range(0, acts_ND.shape[0], batch_size):
        x_BD = acts_ND[start : start + batch_size]
        codes = sae.encode(x_BD)
        recon = sae.decode(codes)
        if single and codes.dim() == 2:
            codes, recon = codes[None], recon[None]
        err_N = (recon.double() - x_BD.double()).pow(2).sum(dim=(1, 2))
        active = codes != 0
        sse = err_N if sse is None else sse + err_N
        l0_N = active.sum(dim=(1, 2), dtype=torch.float64)
        l0 = l0_N if l0 is None else l0 + l0_N
        fired = active.any(1) if fired is None else fired | active.any(1)
        tot = (x_BD.double() - mean_D).pow(2).sum()
        sst = tot if sst is None else sst + tot
    n, d = acts_ND.shape
    out = {
        "explained_variance": (1 - sse / sst).tolist(),
        "mse": (sse / (n * d)).tolist(),
        "l0": (l0 / n).tolist(),
        "dead_fraction": (1 - fired.double().mean(-1)).tolist(),
        "alive_mask": fired,
    }
    if single:
        out = {k: (v[0] if k != "alive_mask" else v[0].clone()) for k, v in out.items()}
    return out


def spliced_loss(
    model: Any, tokens: Tensor, labels: Tensor, hook: str, sae: Any, position: int = -1
) -> dict[str, Any]:
    """The model's loss with ``sae``'s reconstruction spliced in at ``hook`` (loss recovered).

    Thin wrapper over :func:`husai.model.splice.loss_with_replacement` (imported lazily,
    it needs transformer_lens); ``sae`` is a LoadedSAE or a one-model BatchedSAE.
    """
    from husai.model.splice import loss_with_replacement

    def replace(x_BD: Tensor) -> Tensor:
        recon = sae.decode(sae.encode(x_BD.float()))
        return (recon[0] if recon.dim() == 3 else recon).to(x_BD.dtype)

    return loss_with_replacement(model, tokens, labels, hook, replace, position)
