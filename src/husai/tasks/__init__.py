"""Algorithmic datasets. ``modular`` is the grokking task; ``synthetic`` the known-truth SAE task."""

from husai.tasks.modular import (
    ModularDataset,
    create_dataloaders,
    describe_task,
    make_dataset,
    make_labels,
    make_pairs,
    make_tokens,
    split_mask,
)

__all__ = [
    "ModularDataset",
    "create_dataloaders",
    "describe_task",
    "make_dataset",
    "make_labels",
    "make_pairs",
    "make_tokens",
    "split_mask",
]
