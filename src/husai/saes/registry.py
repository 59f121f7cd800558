"""Name -> architecture registry: the one list of the SAE architectures HUSAI knows.

An architecture is one module holding everything about it (an
:class:`~husai.saes.base.Architecture` subclass: config class, sparsity knob, training
forward, inference encoder, SAELens export); see :mod:`husai.saes.relu` for the
smallest. Adding one is that module plus a line in :data:`BUILT_IN`, or a
:func:`register_architecture` call at run time (a test, a plugin).

Who reads the registry: :mod:`husai.config` builds the ``sae`` config union and the
grid's architecture names from :data:`BUILT_IN` when it is imported (a fixed set, so a
config file means the same whatever was registered first); the trainer, the grid
expansion and the SAELens I/O of :mod:`husai.saes.io` look names up in
:data:`ARCHITECTURES` when they run, so a registered architecture trains, saves, loads
and runs through ``husai analyze``.
"""

from __future__ import annotations

from husai.saes.base import Architecture
from husai.saes.batchtopk import BatchTopKArch
from husai.saes.jumprelu import JumpReLUArch
from husai.saes.matryoshka import MatryoshkaArch
from husai.saes.relu import ReluArch
from husai.saes.topk import TopKArch

BUILT_IN: tuple[type[Architecture], ...] = (
    ReluArch,
    TopKArch,
    BatchTopKArch,
    JumpReLUArch,
    MatryoshkaArch,
)
"""The architectures of every HUSAI config, in the order their names are listed."""
ARCHITECTURES: dict[str, type[Architecture]] = {}
"""Every registered architecture by name: :data:`BUILT_IN` and any registered since."""


def register_architecture(arch: type[Architecture]) -> type[Architecture]:
    """Add ``arch`` under ``arch.name`` and return it (so it also works as a class
    decorator); a ``ValueError`` names what is inconsistent about it."""
    problem = _problem(arch)
    if problem is not None:
        raise ValueError(f"cannot register {arch.__name__}: {problem}")
    ARCHITECTURES[arch.name] = arch
    return arch


def _problem(arch: type[Architecture]) -> str | None:
    fields = arch.config_class.model_fields
    taken = ARCHITECTURES.get(arch.name)
    if not arch.name:
        return "it has no name"
    if taken is not None and taken is not arch:
        return f"the name {arch.name!r} is taken by {taken.__name__}"
    if "arch" not in fields or fields["arch"].default != arch.name:
        return f"{arch.config_class.__name__}.arch must default to {arch.name!r}"
    if arch.sparsity_name not in fields:
        return (
            f"sparsity_name {arch.sparsity_name!r} is not a field of {arch.config_class.__name__}"
        )
    for other in ARCHITECTURES.values():
        shared = set(arch.saelens_reads) & set(other.saelens_reads)
        if other is not arch and shared:
            return f"SAELens {sorted(shared)} already loads as {other.name!r}"
    return None


def get_architecture(name: str) -> type[Architecture]:
    """The architecture class registered under ``name``."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown SAE architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def reading_saelens(saelens_arch: str) -> str | None:
    """The registered architecture an SAELens ``saelens_arch`` SAE without a ``husai``
    section loads as (None if none reads it)."""
    for arch in ARCHITECTURES.values():
        if saelens_arch in arch.saelens_reads:
            return arch.name
    return None


for _arch in BUILT_IN:
    register_architecture(_arch)
