"""sha256_tensors: names, dtypes, shapes and bits; 0-d tensors included.

The known hex below was computed with the code before 0-d tensors were supported, so a
change to how tensors of one or more dimensions hash (and so to every job key and weight
checksum already written) fails here.
"""

from __future__ import annotations

import pytest
import torch

from husai.io import sha256_tensors

KNOWN = "ddaa8456ff36cd800dbbb2240bf2f1a36ba17988e448809e89eb7f994d9c08d6"


def test_tensors_of_one_or_more_dims_hash_as_before() -> None:
    tensors = {
        "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor([1, 2, 3], dtype=torch.int64),
        "e": torch.zeros(0, 4),
        "h": torch.tensor([0.5, -1.0], dtype=torch.bfloat16),
    }
    assert sha256_tensors(tensors) == KNOWN


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_a_0d_tensor_hashes_by_its_bits_and_its_shape(dtype: torch.dtype) -> None:
    scalar = torch.tensor(1, dtype=dtype)
    assert sha256_tensors({"x": scalar}) == sha256_tensors({"x": scalar.clone()})
    assert sha256_tensors({"x": scalar}) != sha256_tensors({"x": scalar.reshape(1)})
    assert sha256_tensors({"x": scalar}) != sha256_tensors({"x": torch.tensor(0, dtype=dtype)})


def test_a_state_dict_with_a_0d_buffer_hashes() -> None:
    model = torch.nn.Linear(2, 2)
    model.register_buffer("fill", torch.tensor(-1e5))
    state = model.state_dict()
    assert sha256_tensors(state) == sha256_tensors({k: v.clone() for k, v in state.items()})
