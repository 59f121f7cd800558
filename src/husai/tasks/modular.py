"""Modular arithmetic: (a op b) mod p over all p^2 pairs, as token sequences.

Vocabulary (``TaskConfig.d_vocab`` ids):

- ``0 .. p-1``: the numbers;
- ``p``: the ``=`` token;
- ``p+1 .. p+4``: the op tokens add, sub, mul, div (only in the ``a_op_b_eq`` format).

Formats: ``a_b_eq`` gives ``[a, b, =]`` (Nanda et al. 2023), ``a_op_b_eq`` gives
``[a, op, b, =]``. The label is read at the final (``=``) position and lies in
``0 .. p-1`` (so ``d_vocab_out = p``).

Inputs are ordered row-major over (a, b): index ``a * p + b``. For ``div``, pairs with
b = 0 are dropped. For ``mul``, pairs with a zero operand are dropped: 0 * b = 0 carries no
information about b, and on the nonzero residues multiplication is the cyclic group
(Z/p)* of order p - 1, whose ground truth is Fourier features of the discrete log
(:mod:`husai.model.fourier`, Chughtai, Chan & Nanda 2023). So ``mul`` has (p - 1)^2 pairs,
row-major over a, b in 1..p-1; the token 0 never appears in its inputs or labels. The train/test split is a seeded random permutation of that
order; the first ``round(train_fraction * n)`` pairs train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from husai.config import OPS, TaskConfig


def make_pairs(modulus: int, op: str = "add") -> Int[Tensor, "n 2"]:
    """All (a, b) pairs in row-major order (b = 0 dropped for 'div', a or b = 0 for 'mul')."""
    _check_modulus(modulus)
    a, b = torch.meshgrid(torch.arange(modulus), torch.arange(modulus), indexing="ij")
    pairs = torch.stack([a.flatten(), b.flatten()], dim=1)
    if op == "div":
        pairs = pairs[pairs[:, 1] != 0]
    if op == "mul":
        pairs = pairs[(pairs != 0).all(dim=1)]
    return pairs


def describe_task(op: str, modulus: int) -> str:
    """The task in words, e.g. ``(a + b) mod 113`` (the operands each op leaves out named)."""
    if op not in OPS:
        raise ValueError(f"op: expected one of {OPS}, got {op!r}")
    symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[op]
    text = f"(a {symbol} b) mod {modulus}"
    if op == "mul":
        return text + f", a and b in 1..{modulus - 1} (0 excluded)"
    return text + (f", b in 1..{modulus - 1}" if op == "div" else "")


def make_labels(pairs: Int[Tensor, "n 2"], modulus: int, op: str = "add") -> Int[Tensor, " n"]:
    a, b = pairs[:, 0], pairs[:, 1]
    if op == "add":
        return (a + b) % modulus
    if op == "sub":
        return (a - b) % modulus
    if op == "mul":
        return (a * b) % modulus
    if op == "div":
        inv = torch.tensor([pow(int(x), -1, modulus) if x else 0 for x in range(modulus)])
        return (a * inv[b]) % modulus
    raise ValueError(f"op: expected one of {OPS}, got {op!r}")


def make_tokens(
    pairs: Int[Tensor, "n 2"], modulus: int, op: str = "add", token_format: str = "a_b_eq"
) -> Int[Tensor, "n ctx"]:
    n = pairs.shape[0]
    eq = torch.full((n, 1), modulus)
    if token_format == "a_b_eq":
        return torch.cat([pairs, eq], dim=1)
    if token_format == "a_op_b_eq":
        op_tok = torch.full((n, 1), modulus + 1 + OPS.index(op))
        return torch.cat([pairs[:, :1], op_tok, pairs[:, 1:], eq], dim=1)
    raise ValueError(f"token_format: expected 'a_b_eq' or 'a_op_b_eq', got {token_format!r}")


def split_mask(n: int, train_fraction: float, seed: int) -> Bool[Tensor, " n"]:
    """True for training pairs: a seeded permutation, first round(fraction * n) train."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction: expected a value in (0, 1), got {train_fraction}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[perm[: round(train_fraction * n)]] = True
    return mask


@dataclass(frozen=True)
class ModularDataset:
    """Every input of the task, full batch, with its split."""

    tokens: Int[Tensor, "n ctx"]
    labels: Int[Tensor, " n"]
    pairs: Int[Tensor, "n 2"]
    train_mask: Bool[Tensor, " n"]
    modulus: int
    op: str = "add"

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        return self.tokens[self.train_mask], self.labels[self.train_mask]

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        return self.tokens[~self.train_mask], self.labels[~self.train_mask]


def make_dataset(cfg: TaskConfig) -> ModularDataset:
    pairs = make_pairs(cfg.modulus, cfg.op)
    return ModularDataset(
        tokens=make_tokens(pairs, cfg.modulus, cfg.op, cfg.token_format),
        labels=make_labels(pairs, cfg.modulus, cfg.op),
        pairs=pairs,
        train_mask=split_mask(len(pairs), cfg.train_fraction, cfg.data_seed),
        modulus=cfg.modulus,
        op=cfg.op,
    )


def create_dataloaders(
    modulus: int = 113,
    batch_size: int = 512,
    train_fraction: float = 0.3,
    op: str = "add",
    token_format: str = "a_b_eq",
    seed: int = 598,
    shuffle_seed: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Train and test DataLoaders of (tokens, label) batches, as the original plan promised.

    Arguments are validated through :class:`TaskConfig`, so bad values raise one clear error.
    """
    _check_modulus(modulus)
    cfg = TaskConfig(
        modulus=modulus,
        op=op,
        token_format=token_format,
        train_fraction=train_fraction,
        data_seed=seed,
    )
    ds = make_dataset(cfg)
    gen = torch.Generator().manual_seed(seed if shuffle_seed is None else shuffle_seed)
    train = DataLoader(TensorDataset(*ds.train), batch_size=batch_size, shuffle=True, generator=gen)
    test = DataLoader(TensorDataset(*ds.test), batch_size=batch_size, shuffle=False)
    return train, test


def _check_modulus(modulus: object) -> None:
    if isinstance(modulus, bool) or not isinstance(modulus, int) or modulus < 2:
        raise ValueError(f"modulus: expected an integer >= 2, got {modulus!r}")
