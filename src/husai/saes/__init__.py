"""HUSAI's SAE library: five architectures, one batched multi-seed trainer, SAELens-format I/O.

Public API (layout in docs/ARCHITECTURE.md): :func:`train_group`, :func:`init_group`,
:class:`GroupResult`, :class:`BatchedSAE`, :func:`save_sae`, :func:`load_sae`,
:class:`LoadedSAE`, :func:`evaluate`, and the registry of architectures (one module
each): :data:`ARCHITECTURES`, :func:`get_architecture`, :func:`register_architecture`. Importing this package needs only torch,
safetensors, pydantic and jaxtyping; sae_lens is never imported here.
"""

from husai.saes.base import Architecture, BatchedSAE
from husai.saes.evaluate import evaluate
from husai.saes.io import LoadedSAE, load_sae, save_sae
from husai.saes.registry import ARCHITECTURES, get_architecture, register_architecture
from husai.saes.trainer import GroupResult, init_group, train_group

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BatchedSAE",
    "GroupResult",
    "LoadedSAE",
    "evaluate",
    "get_architecture",
    "register_architecture",
    "init_group",
    "load_sae",
    "save_sae",
    "train_group",
]
