"""Modular arithmetic datasets: labels, splits, seeds, formats and bad input."""

import pytest
import torch

from husai.config import TaskConfig
from husai.tasks import create_dataloaders, make_dataset, make_labels, make_pairs, make_tokens


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("p", [5, 7, 11])
def test_every_label_is_right(op: str, p: int) -> None:
    pairs = make_pairs(p, op)
    labels = make_labels(pairs, p, op)
    for (a, b), y in zip(pairs.tolist(), labels.tolist(), strict=True):
        if op == "add":
            assert y == (a + b) % p
        elif op == "sub":
            assert y == (a - b) % p
        elif op == "mul":
            assert y == (a * b) % p
        else:
            assert (y * b) % p == a % p
    expected = {"div": p * (p - 1), "mul": (p - 1) ** 2}.get(op, p * p)
    assert len(pairs) == expected


def test_token_formats() -> None:
    pairs = make_pairs(5)
    t3 = make_tokens(pairs, 5, "add", "a_b_eq")
    assert t3.shape == (25, 3) and (t3[:, 2] == 5).all() and torch.equal(t3[:, :2], pairs)
    t4 = make_tokens(pairs, 5, "mul", "a_op_b_eq")
    assert t4.shape == (25, 4) and (t4[:, 1] == 5 + 1 + 2).all() and (t4[:, 3] == 5).all()
    assert int(t4.max()) < TaskConfig(modulus=5, token_format="a_op_b_eq").d_vocab


def test_split_disjoint_covering_and_seeded() -> None:
    ds = make_dataset(TaskConfig(modulus=13, train_fraction=0.3, data_seed=1))
    n = 13 * 13
    assert int(ds.train_mask.sum()) == round(0.3 * n)
    train_idx = set((ds.pairs[ds.train_mask] @ torch.tensor([13, 1])).tolist())
    test_idx = set((ds.pairs[~ds.train_mask] @ torch.tensor([13, 1])).tolist())
    assert not train_idx & test_idx and len(train_idx | test_idx) == n
    again = make_dataset(TaskConfig(modulus=13, train_fraction=0.3, data_seed=1))
    other = make_dataset(TaskConfig(modulus=13, train_fraction=0.3, data_seed=2))
    assert torch.equal(ds.train_mask, again.train_mask)
    assert not torch.equal(ds.train_mask, other.train_mask)


@pytest.mark.parametrize("bad", [1, -3, 2.5, 0, True])
def test_bad_modulus(bad: object) -> None:
    with pytest.raises(ValueError, match="modulus"):
        create_dataloaders(modulus=bad, batch_size=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="modulus"):
        make_pairs(bad)  # type: ignore[arg-type]


def test_bad_train_fraction() -> None:
    with pytest.raises(ValueError, match="train_fraction"):
        create_dataloaders(modulus=7, train_fraction=1.5)


def test_div_needs_prime() -> None:
    with pytest.raises(ValueError, match="prime"):
        TaskConfig(modulus=12, op="div")


def test_create_dataloaders_113() -> None:
    train, test = create_dataloaders(modulus=113, batch_size=512)
    n_train = n_test = 0
    for loader, counter in ((train, "train"), (test, "test")):
        for tokens, labels in loader:
            assert tokens.shape[1] == 3 and tokens.shape[0] <= 512
            assert torch.equal((tokens[:, 0] + tokens[:, 1]) % 113, labels)
            if counter == "train":
                n_train += len(labels)
            else:
                n_test += len(labels)
    assert n_train == round(0.3 * 113 * 113) and n_train + n_test == 113 * 113
