"""Per-architecture maths: forward == decode(encode), TopK L0 == k, BatchTopK mean L0 == k,
JumpReLU thresholds get the straight-through gradient, sparse TopK gradients == dense,
Matryoshka loss == sum of prefix losses."""

from __future__ import annotations

import pytest
import torch

from husai.config import (
    BatchTopKSAEConfig,
    JumpReLUSAEConfig,
    MatryoshkaSAEConfig,
    ReluSAEConfig,
    SAETrainConfig,
    TopKSAEConfig,
)
from husai.saes import init_group
from husai.saes.base import mse_per_model
from husai.saes.topk import rank_mask

D, S = 8, 40
ALL = {
    "relu": [ReluSAEConfig(d_sae=S)],
    "topk": [TopKSAEConfig(d_sae=S, k=3), TopKSAEConfig(d_sae=S, k=7)],
    "batchtopk": [BatchTopKSAEConfig(d_sae=S, k=3), BatchTopKSAEConfig(d_sae=S, k=6)],
    "jumprelu": [JumpReLUSAEConfig(d_sae=S, init_threshold=0.2)],
    "matryoshka": [MatryoshkaSAEConfig(d_sae=S, k=4, prefixes=(5, 10, 20, 40))],
}


def _sae(arch: str, seeds=(0, 1)):
    sae = init_group(D, ALL[arch], SAETrainConfig(init_seeds=list(seeds)))
    for p in sae.params.values():
        p.requires_grad_(True)
    return sae


def _x(n: int = 16) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("arch", list(ALL))
def test_forward_is_decode_of_encode(arch: str) -> None:
    sae = _sae(arch)
    x = _x()
    codes = sae.encode(x)
    assert codes.shape == (sae.n_models, 16, S)
    manual = torch.einsum("nbs,nsd->nbd", codes, sae.W_dec) + sae.b_dec[:, None]
    assert torch.allclose(sae.forward(x), manual, atol=1e-6)


def test_topk_l0_is_k_per_model() -> None:
    sae = _sae("topk")
    with torch.no_grad():
        sae.params["b_enc"].fill_(10.0)  # every pre-activation positive
    codes = sae.encode(_x())
    l0 = (codes != 0).sum(-1)
    assert (l0[:2] == 3).all() and (l0[2:] == 7).all()
    out = sae.arch.train_forward(sae, _x().expand(4, 16, D), torch.zeros(4, S, dtype=torch.bool))
    assert out.l0_N.tolist() == [3.0, 3.0, 7.0, 7.0]


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batchtopk_mean_l0_is_k_but_varies_per_sample(arch: str) -> None:
    sae = _sae(arch)
    with torch.no_grad():
        sae.params["b_enc"].fill_(5.0)
    out = sae.arch.train_forward(
        sae, _x(32).expand(sae.n_models, 32, D), torch.zeros(sae.n_models, S, dtype=torch.bool)
    )
    ks = [c.k for c in sae.arch.cfgs]
    assert out.l0_N.tolist() == [float(k) for k in ks]
    pre = sae.pre_acts(_x(32))
    from husai.saes.batchtopk import batch_topk

    codes, _ = batch_topk(pre.detach(), sae.arch.hp("k", torch.long))
    per_sample = (codes[0] != 0).sum(-1)
    assert per_sample.float().mean().item() == ks[0] and per_sample.min() != per_sample.max()


def test_batchtopk_threshold_is_estimated_and_used_at_inference() -> None:
    sae = _sae("batchtopk", seeds=(0,))
    x = _x(64).expand(2, 64, D)
    out = sae.arch.train_forward(sae, x, torch.zeros(2, S, dtype=torch.bool))
    sae.arch.after_step(sae, out, 0, torch.tensor([True, True]))
    theta = sae.buffers["threshold"]
    assert torch.allclose(
        theta[:, 0], sae.arch._min_kept_N
    )  # first step: bias-corrected EMA = value
    assert (theta > 0).all()
    codes = sae.encode(_x(64))
    pre = sae.pre_acts(_x(64))
    assert torch.equal(codes != 0, pre > theta[:, None, :])


def test_jumprelu_thresholds_receive_straight_through_gradient() -> None:
    sae = _sae("jumprelu", seeds=(0,))
    cfg = sae.arch.cfgs[0]
    x = _x(64)[None]
    pre = sae.pre_acts(x).detach()
    with torch.no_grad():  # put latent 0's threshold right next to a pre-activation
        sae.params["threshold"][0, 0] = pre[0, 3, 0] - cfg.bandwidth / 4
    out = sae.arch.train_forward(sae, x, torch.zeros(1, S, dtype=torch.bool))
    sum(out.losses.values()).sum().backward()
    grad = sae.params["threshold"].grad
    assert grad is not None and grad[0, 0] != 0
    # check latent 0 against eqs. 11-12: only samples inside the kernel window contribute
    theta, eps = sae.params["threshold"][0, 0].detach(), cfg.bandwidth
    inside = ((pre[0, :, 0] - theta).abs() < eps / 2).float() / eps
    recon = sae.forward(x).detach()[0]
    dz = 2 * (recon - x[0]) @ sae.W_dec[0, 0].detach() / 64
    expected = (dz * -theta * inside).sum() + cfg.l0_coefficient * (-inside).sum() / 64
    assert grad[0, 0].item() == pytest.approx(expected.item(), rel=1e-4)


def test_topk_sparse_gradients_match_dense_autograd() -> None:
    sae = _sae("topk")
    with torch.no_grad():
        sae.params["b_dec"].normal_()
        sae.params["b_enc"].normal_()
    x = _x(32).expand(4, 32, D)
    dead = torch.rand(4, S, generator=torch.Generator().manual_seed(2)) < 0.3
    out = sae.arch.train_forward(sae, x, dead)
    sum(out.losses.values()).sum().backward()
    sparse = {k: p.grad.clone() for k, p in sae.params.items()}
    for p in sae.params.values():
        p.grad = None
    k_N, pre = sae.arch.hp("k", torch.long), sae.pre_acts(x)
    vals, idx = pre.topk(7, dim=-1, sorted=True)
    codes = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals) * rank_mask(k_N, 7))
    recon = torch.baddbmm(sae.b_dec[:, None], codes, sae.W_dec)
    n_dead = dead.sum(-1)
    k_aux = n_dead.clamp(max=D // 2)
    masked = pre.detach().masked_fill(~dead[:, None], float("-inf"))
    ia = masked.topk(int(k_aux.max()), dim=-1, sorted=True).indices
    ca = torch.zeros_like(pre).scatter(
        -1, ia, torch.relu(pre.gather(-1, ia)) * rank_mask(k_aux, ia.shape[-1])
    )
    scale = (n_dead.float() / (D // 2)).clamp(max=1)
    aux = scale / 32 * mse_per_model(torch.bmm(ca, sae.W_dec), (x - recon).detach())
    (mse_per_model(recon, x) + aux).sum().backward()
    for k, p in sae.params.items():
        assert torch.allclose(p.grad, sparse[k], atol=1e-5), k


def test_matryoshka_loss_is_sum_of_prefix_losses() -> None:
    sae = _sae("matryoshka", seeds=(0,))
    x = _x(32).expand(1, 32, D)
    out = sae.arch.train_forward(sae, x, torch.zeros(1, S, dtype=torch.bool))
    from husai.saes.batchtopk import batch_topk

    codes, _ = batch_topk(sae.pre_acts(x), sae.arch.hp("k", torch.long))
    total = 0.0
    for m in (5, 10, 20, 40):
        recon = codes[0, :, :m] @ sae.W_dec[0, :m] + sae.b_dec[0]
        total += (recon - x[0]).pow(2).sum(-1).mean()
    assert out.losses["matryoshka_mse"].item() == pytest.approx(total.item(), rel=1e-5)


def test_relu_handwritten_backward_matches_autograd() -> None:
    sae = _sae("relu")
    with torch.no_grad():
        sae.params["b_dec"].normal_()
        sae.params["W_dec"].mul_(torch.rand(2, S, 1) + 0.5)
    x = _x(32).expand(2, 32, D)
    out = sae.arch.train_forward(sae, x, torch.zeros(2, S, dtype=torch.bool))
    sum(out.losses.values()).sum().backward()
    fused = {k: p.grad.clone() for k, p in sae.params.items()}
    for p in sae.params.values():
        p.grad = None
    codes = torch.relu(sae.pre_acts(x))
    recon = torch.baddbmm(sae.b_dec[:, None], codes, sae.W_dec)
    l1 = (codes * sae.W_dec.norm(dim=-1)[:, None]).sum(-1).mean(-1)
    ref = mse_per_model(recon, x) + sae.arch.cfgs[0].l1_coefficient * l1
    assert torch.allclose(ref, sum(out.losses.values()).detach(), rtol=1e-5)
    ref.sum().backward()
    for k, p in sae.params.items():
        assert torch.allclose(p.grad, fused[k], atol=1e-5), k
    assert out.l0_N.tolist() == (codes > 0).sum(-1).float().mean(-1).tolist()
