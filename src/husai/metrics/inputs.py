"""Turn what a user passes (a tensor, an SAE object, an SAE directory) into direction matrices.

Every metric works on plain tensors: decoder directions ``[n_latents, d]`` (one row per
latent) and encoder directions in the same layout. An SAE directory (HUSAI or SAELens
format) is read with ``husai.saes.load_sae``, imported lazily so that ``husai.metrics``
imports with torch, numpy and scipy only. An object with ``W_dec`` ``[n, d]`` and
``W_enc`` ``[d, n]`` (SAELens / HUSAI convention) is read directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from husai.errors import UserError


def load_sae_dir(path: str | Path) -> Any:
    """Load an SAE directory with ``husai.saes.load_sae`` (lazy import)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not an SAE directory")
    from husai.saes import load_sae

    return load_sae(path)


def as_decoder(x: Any) -> Tensor:
    """Decoder directions ``[n_latents, d]`` (float32, CPU) of a tensor, SAE or SAE directory."""
    if isinstance(x, (str, Path)):
        x = load_sae_dir(x)
    if hasattr(x, "W_dec"):
        x = x.W_dec
    return _matrix(x, "decoder")


def as_encoder(x: Any) -> Tensor | None:
    """Encoder directions ``[n_latents, d]`` of an SAE or SAE directory; None for a bare tensor."""
    if isinstance(x, (str, Path)):
        x = load_sae_dir(x)
    if hasattr(x, "W_enc"):
        return _matrix(torch.as_tensor(x.W_enc).T, "encoder")
    return None


def _matrix(x: Any, what: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise UserError(
            f"expected a {what} tensor, an SAE or an SAE directory, got {type(x).__name__}"
        )
    if x.ndim != 2:
        raise UserError(f"expected a {what} matrix [n_latents, d], got shape {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float32)


def as_mask(mask: Any, n: int, what: str) -> Tensor | None:
    """A boolean mask of length ``n`` (or None)."""
    if mask is None:
        return None
    mask = torch.as_tensor(mask).to("cpu").bool().flatten()
    if mask.numel() != n:
        raise UserError(f"{what}: expected {n} entries, got {mask.numel()}")
    return mask


def alive_from_codes(codes_NS: Tensor) -> Tensor:
    """Latents that fired (code > 0) on at least one of the evaluation inputs."""
    return (torch.as_tensor(codes_NS) > 0).any(dim=0)
