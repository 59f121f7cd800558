"""Ground-truth groups: Z_p for add/sub, the discrete log of (Z/p)* for mul, planted checks."""

import math

import pytest
import torch

from husai.config import TaskConfig
from husai.errors import UserError
from husai.metrics.ground_truth import activation_frequency_purity
from husai.model.fourier import (
    MUL_VARIABLES,
    discrete_log,
    fit_planes,
    fourier_basis,
    primitive_root,
    restricted_and_excluded,
    row_frequencies,
    task_group,
)
from husai.tasks import make_dataset, make_labels, make_pairs


def test_3_is_a_primitive_root_of_113() -> None:
    assert primitive_root(113) == 3
    powers = [pow(3, i, 113) for i in range(112)]
    assert sorted(powers) == list(range(1, 113))  # 3 generates every nonzero residue
    assert primitive_root(7) == 3 and primitive_root(13) == 2


@pytest.mark.parametrize("p", [7, 13, 113])
def test_discrete_log_inverts_powers(p: int) -> None:
    g = primitive_root(p)
    log = discrete_log(p, g)
    assert log[0] == -1
    assert all(pow(g, int(log[x]), p) == x for x in range(1, p))
    with pytest.raises(ValueError, match="primitive root"):
        discrete_log(p, p - 1)  # -1 has order 2


def _dlog_basis(p: int) -> torch.Tensor:
    """Rows: the real Fourier basis of Z_{p-1} read at log(x), as functions of x = 1..p-1."""
    basis_NN, _ = fourier_basis(p - 1)
    return basis_NN[:, discrete_log(p)[1:]]


def _off_block_share(m: torch.Tensor, freq: torch.Tensor) -> float:
    same = freq[:, None] == freq[None, :]
    return (m[~same].pow(2).sum() / m.pow(2).sum()).item()


@pytest.mark.parametrize("p", [13, 113])
def test_dlog_basis_is_orthonormal_and_diagonalises_multiplicative_convolution(p: int) -> None:
    n = p - 1
    basis = _dlog_basis(p)
    assert torch.allclose(basis @ basis.T, torch.eye(n, dtype=torch.float64), atol=1e-10)
    # C_f h = f * h under multiplication: (f * h)(c) = sum_b f(c / b) h(b), on exact group data.
    f = torch.randn(p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.arange(1, p)
    inv = torch.tensor([pow(int(b), -1, p) for b in x])
    conv = f[(x[:, None] * inv[None, :]) % p]
    freq = row_frequencies(n)
    assert _off_block_share(basis @ conv @ basis.T, freq) < 1e-20
    # Control: the additive Fourier basis of the residues does not diagonalise it.
    add_basis = fourier_basis(p)[0][1:, 1:]  # drop the constant and the residue 0
    assert _off_block_share(add_basis @ conv @ add_basis.T, row_frequencies(p)[1:]) > 0.5


def test_dlog_features_compose_by_multiplication() -> None:
    """cos(w log a) cos(w log b) - sin sin = cos(w log(ab)): the algorithm's identity."""
    p, k = 113, 7
    group = task_group("mul", p)
    pairs = make_pairs(p, "mul")
    co = group.coordinates(pairs)
    w = 2 * math.pi * k / group.order
    lhs = torch.cos(w * co["a"]) * torch.cos(w * co["b"]) - torch.sin(w * co["a"]) * torch.sin(
        w * co["b"]
    )
    log_ab = discrete_log(p)[make_labels(pairs, p, "mul")].double()
    assert torch.allclose(lhs, torch.cos(w * log_ab), atol=1e-10)


def _label_embedding(values: torch.Tensor, order: int, k: int, slot: int) -> torch.Tensor:
    """Activations [n, 4]: cos/sin of frequency ``k`` of ``values`` in columns 2 slot, 2 slot + 1."""
    angle = 2 * math.pi * k * values.double() / order
    acts = torch.zeros(len(values), 4, dtype=torch.float64)
    acts[:, 2 * slot], acts[:, 2 * slot + 1] = torch.cos(angle), torch.sin(angle)
    return acts


def _r2(fit, k: int, var: str) -> float:
    pairs = list(zip(fit.freq.tolist(), fit.variable, strict=True))
    return float(fit.r2[pairs.index((k, var))])


def test_sub_answer_lives_in_the_a_minus_b_planes() -> None:
    p = 23
    data = make_dataset(TaskConfig(modulus=p, op="sub"))
    acts = _label_embedding(data.labels, p, 5, 0) + 0.5 * _label_embedding(
        data.pairs[:, 0], p, 2, 1
    )
    fit = fit_planes(acts.float(), data.pairs, p, [2, 5], group=task_group("sub", p))
    assert _r2(fit, 5, "a-b") == pytest.approx(0.8, abs=1e-4)  # variances 1 : 0.25
    assert _r2(fit, 2, "a") == pytest.approx(0.2, abs=1e-4)
    assert fit.key_r2_total == pytest.approx(1.0, abs=1e-4)
    assert task_group("sub", p).answer == "a-b"


def test_mul_planes_on_exact_group_data() -> None:
    p = 29
    group = task_group("mul", p)
    data = make_dataset(TaskConfig(modulus=p, op="mul"))
    log = discrete_log(p)
    acts = _label_embedding(log[data.labels], p - 1, 3, 0) + _label_embedding(
        log[data.pairs[:, 1]], p - 1, 9, 1
    )
    fit = fit_planes(acts.float(), data.pairs, p, [3, 9], group=group)
    assert tuple(dict.fromkeys(fit.variable)) == MUL_VARIABLES
    assert int(fit.freq.max()) == (p - 2) // 2  # k = 1..(n-1)//2 with n = p - 1
    assert _r2(fit, 3, "ab") == pytest.approx(0.5, abs=1e-4)
    assert _r2(fit, 9, "b") == pytest.approx(0.5, abs=1e-4)
    assert fit.key_r2_total == pytest.approx(1.0, abs=1e-4)
    assert float(fit.r2.sum()) == pytest.approx(1.0, abs=1e-4)
    assert fit.r2_by_variable()["ab"] == pytest.approx(_r2(fit, 3, "ab"))


def test_mul_restricted_and_excluded_split_planted_logits() -> None:
    p, keys = 13, [2, 5]
    group = task_group("mul", p)
    log = discrete_log(p).double()
    la = log[1:]
    s_AB = la[:, None] + la[None, :]
    w = 2 * math.pi / group.order
    signal = sum(torch.cos(k * w * (s_AB[:, :, None] - log[None, None, :])) for k in keys)
    other = 0.3 * torch.cos(4 * w * (la[:, None] - la[None, :]))[:, :, None].expand(-1, -1, p)
    restricted, excluded = restricted_and_excluded(signal + other, keys, s_AB, group.order)
    assert torch.allclose(restricted, signal + other.mean(dim=(0, 1), keepdim=True), atol=1e-9)
    assert torch.allclose(excluded, other, atol=1e-9)


def test_mul_activation_purity_reads_the_discrete_log() -> None:
    p = 31
    data = make_dataset(TaskConfig(modulus=p, op="mul"))
    log_ab = discrete_log(p)[data.labels].double()
    codes = torch.relu(torch.cos(2 * math.pi * 4 * log_ab / (p - 1)))[:, None]
    out = activation_frequency_purity(codes, p, "mul")
    assert out["freq"][0] == 4 and out["purity"][0] > 0.6
    with pytest.raises(UserError, match="rows"):
        activation_frequency_purity(codes, p, "add")


def test_mul_dataset_has_no_zero() -> None:
    data = make_dataset(TaskConfig(modulus=11, op="mul"))
    assert len(data.pairs) == 100 and int(data.tokens[:, :2].min()) == 1
    assert int(data.labels.min()) == 1 and data.op == "mul"


@pytest.mark.parametrize(("op", "p", "why"), [("div", 113, "no Fourier"), ("mul", 12, "prime")])
def test_unsupported_ground_truth_is_one_line_user_error(op: str, p: int, why: str) -> None:
    with pytest.raises(UserError, match=why) as err:
        task_group(op, p)
    assert "\n" not in str(err.value) and str(err.value).startswith("task.op:")


def test_zero_operand_is_refused_by_the_mul_group() -> None:
    with pytest.raises(UserError, match="outside the group"):
        task_group("mul", 7).coordinates(make_pairs(7, "add"))
