"""The Gram-form kernel (husai.saes.gram): its losses and gradients equal autograd's on the
direct formulas, and the architectures that use it pick it by shape alone."""

from __future__ import annotations

import pytest
import torch

from husai.config import (
    BatchTopKSAEConfig,
    MatryoshkaSAEConfig,
    ReluSAEConfig,
    SAETrainConfig,
    TopKSAEConfig,
)
from husai.saes import init_group, train_group
from husai.saes.base import BatchedSAE
from husai.saes.gram import gram_applies, gram_inputs, gram_losses

N, B, D, S = 3, 40, 24, 8


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    t = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    return {"W_enc": t(N, D, S), "b_enc": 0.3 * t(N, S), "W_dec": t(N, S, D), "b_dec": t(N, D)}


def _x(seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=gen, dtype=torch.float64) + 0.5


PREFIXES = (2, 5, S)


def _direct(p, x_BD, z_NBS, za_NBS):
    """The losses written directly, differentiated by autograd (codes = pre where active)."""
    pre_NBS = (
        torch.einsum("bd,nds->nbs", x_BD, p["W_enc"])
        - torch.einsum("nd,nds->ns", p["b_dec"], p["W_enc"])[:, None, :]
        + p["b_enc"][:, None, :]
    )
    z = pre_NBS * (z_NBS > 0)
    err_NBD = torch.einsum("nbs,nsd->nbd", z, p["W_dec"]) + p["b_dec"][:, None, :] - x_BD
    mse_N = err_NBD.pow(2).sum(-1).mean(-1)
    za = pre_NBS * (za_NBS > 0)
    e_hat_NBD = torch.einsum("nbs,nsd->nbd", za, p["W_dec"])
    aux_N = (e_hat_NBD + err_NBD.detach()).pow(2).sum(-1).mean(-1)
    l1_N = (z.sum(1) * p["W_dec"].norm(dim=-1)).sum(-1) / B
    nested_N = sum(
        (
            torch.einsum("nbs,nsd->nbd", z[..., :m], p["W_dec"][:, :m])
            + p["b_dec"][:, None, :]
            - x_BD
        )
        .pow(2)
        .sum(-1)
        .mean(-1)
        for m in PREFIXES
    )
    return mse_N, aux_N, l1_N, nested_N


@pytest.mark.parametrize("terms", ["mse", "mse+aux", "mse+l1", "nested", "nested+aux"])
def test_gram_losses_and_gradients_equal_autograd_on_the_direct_form(terms: str) -> None:
    p, x_BD = _params(), _x()
    with torch.no_grad():
        pre_NBS = torch.einsum("nbd,nds->nbs", x_BD - p["b_dec"][:, None, :], p["W_enc"])
        pre_NBS += p["b_enc"][:, None, :]
        gen = torch.Generator().manual_seed(5)
        keep = torch.rand(N, B, S, generator=gen, dtype=torch.float64) < 0.4
        z_NBS = torch.relu(pre_NBS) * keep
        za_NBS = torch.relu(pre_NBS) * (~keep) * (torch.arange(S) < 3)
    ref = {k: v.clone().requires_grad_() for k, v in p.items()}
    mse, aux, l1, nested = _direct(ref, x_BD, z_NBS, za_NBS)
    weights = torch.tensor([1.0, 0.7, 1.3], dtype=torch.float64)
    use_aux, use_l1, nest = "aux" in terms, "l1" in terms, "nested" in terms
    mse = nested if nest else mse
    total = mse + (weights * aux if use_aux else 0) + (weights * l1 if use_l1 else 0)
    total.sum().backward()

    ours = {k: v.clone().requires_grad_() for k, v in p.items()}
    sae = BatchedSAE(arch=None, params=ours)  # type: ignore[arg-type]
    gi = gram_inputs(sae, x_BD.expand(N, B, D))
    assert torch.allclose(gi.pre_NBS, pre_NBS, atol=1e-12)
    g_mse, g_aux, g_l1 = gram_losses(
        sae, gi, z_NBS, za_NBS if use_aux else None, use_l1, PREFIXES if nest else None
    )
    assert torch.allclose(g_mse, mse.detach(), rtol=1e-10)
    if use_aux:
        assert torch.allclose(g_aux, aux.detach(), rtol=1e-10)
    if use_l1:
        assert torch.allclose(g_l1, l1.detach(), rtol=1e-10)
    (g_mse + weights * g_aux + weights * g_l1).sum().backward()
    for k in p:
        assert torch.allclose(ours[k].grad, ref[k].grad, rtol=1e-9, atol=1e-10), k


def _tc(**kw) -> SAETrainConfig:
    base = dict(init_seeds=[3, 7], steps=12, batch_size=32, warmup_steps=2, dead_window=64)
    return SAETrainConfig(**(base | dict(plateau_tol=0.0, n_snapshots=0) | kw))


def _acts() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(20, 32, generator=gen)
    coef = torch.rand(400, 20, generator=gen) * (torch.rand(400, 20, generator=gen) < 0.15)
    return coef @ basis + 0.2


@pytest.mark.parametrize(
    "cfgs",
    [
        [TopKSAEConfig(d_sae=16, k=2), TopKSAEConfig(d_sae=16, k=5)],
        [BatchTopKSAEConfig(d_sae=16, k=3)],
        [ReluSAEConfig(d_sae=8, l1_coefficient=0.5)],
        [MatryoshkaSAEConfig(d_sae=16, k=3)],
    ],
    ids=["topk", "batchtopk", "relu", "matryoshka"],
)
def test_gram_training_follows_the_other_kernels(cfgs, monkeypatch) -> None:
    """The same SAEs trained through the Gram form and through the dense/sparse kernels end
    at the same parameters to float32 rounding (AuxK included: latents die here)."""
    from husai.saes import gram

    acts = _acts()
    probe = init_group(32, cfgs, _tc())
    assert gram_applies(probe, acts[:4].expand(2, 4, 32), l1=cfgs[0].arch == "relu")
    ours = train_group(acts, cfgs, _tc())
    monkeypatch.setattr(gram, "GRAM_MAX_WIDTH_RATIO", 0.0)
    monkeypatch.setattr(gram, "GRAM_MAX_WIDTH_RATIO_L1", 0.0)
    other = train_group(acts, cfgs, _tc())
    if cfgs[0].arch != "relu":
        assert "loss_auxk" in ours.history
    for k, p in ours.sae.params.items():
        assert torch.allclose(p, other.sae.params[k], rtol=1e-4, atol=2e-5), k
    assert not torch.equal(ours.sae.W_dec, other.sae.W_dec)  # really another kernel


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "matryoshka"])
def test_gram_batched_is_bit_identical_to_alone(arch: str) -> None:
    acts = _acts()
    cfgs = {
        "topk": [TopKSAEConfig(d_sae=16, k=2), TopKSAEConfig(d_sae=16, k=5)],
        "batchtopk": [BatchTopKSAEConfig(d_sae=16, k=2), BatchTopKSAEConfig(d_sae=16, k=4)],
        "relu": [ReluSAEConfig(d_sae=8, l1_coefficient=v) for v in (0.1, 1.0)],
        "matryoshka": [MatryoshkaSAEConfig(d_sae=16, k=2), MatryoshkaSAEConfig(d_sae=16, k=4)],
    }[arch]
    group = train_group(acts, cfgs, _tc())
    index = 0
    for cfg in cfgs:
        for seed in (3, 7):
            alone = train_group(acts, [cfg], _tc(init_seeds=[seed]))
            for k, p in alone.sae.params.items():
                assert torch.equal(group.sae.params[k][index], p[0]), (arch, k, index)
            index += 1


def test_the_path_depends_on_shapes_and_a_shared_batch_only() -> None:
    sae = init_group(32, [TopKSAEConfig(d_sae=16, k=2)], _tc())
    x_BD = _acts()[:8]
    assert gram_applies(sae, x_BD.expand(2, 8, 32))
    assert not gram_applies(sae, torch.stack([x_BD, x_BD]))  # per-model batches
    wide = init_group(32, [TopKSAEConfig(d_sae=17, k=2)], _tc())
    assert not gram_applies(wide, x_BD.expand(2, 8, 32))
    assert not gram_applies(sae, x_BD.expand(2, 8, 32), l1=True)  # ReLU-L1: d_in / 4


def test_auxk_codes_of_narrow_dictionaries_are_every_dead_latent() -> None:
    """With d_sae <= d_in / 2 = k_aux, AuxK's top-k_aux dead latents are all dead latents:
    the Gram path's shortcut equals the selection (same values, same scale)."""
    from husai.saes.topk import auxk_select

    gen = torch.Generator().manual_seed(2)
    pre_NBS = torch.randn(3, 50, 16, generator=gen)
    dead_NS = torch.rand(3, 16, generator=gen) < torch.tensor([[0.2], [0.6], [1.0]])
    idx, keep, scale = auxk_select(pre_NBS, dead_NS, d_in=32)
    selected = torch.zeros_like(pre_NBS).scatter_(-1, idx, pre_NBS.gather(-1, idx).relu() * keep)
    assert torch.equal(selected, pre_NBS.relu() * dead_NS[:, None, :])
    assert torch.equal(scale, (dead_NS.sum(-1).float() / 16).clamp(max=1.0))
