"""Name -> architecture registry (one class per file, as SAELens does)."""

from __future__ import annotations

from husai.saes.base import Architecture
from husai.saes.batchtopk import BatchTopKArch
from husai.saes.jumprelu import JumpReLUArch
from husai.saes.matryoshka import MatryoshkaArch
from husai.saes.relu import ReluArch
from husai.saes.topk import TopKArch

ARCHITECTURES: dict[str, type[Architecture]] = {
    cls.name: cls for cls in (ReluArch, TopKArch, BatchTopKArch, JumpReLUArch, MatryoshkaArch)
}


def get_architecture(name: str) -> type[Architecture]:
    """The architecture class registered under ``name``."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown SAE architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]
