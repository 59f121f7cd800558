"""Batched SAE trainer: bit-identity (batched == alone, same seed == same bits), resume,
NaN guard, convergence, schedule and snapshots."""

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
from husai.errors import TrainingDivergedError, UserError
from husai.saes import init_group, train_group
from husai.saes.optim import lr_at
from husai.saes.trainer import BatchStream, snapshot_steps

D, S = 12, 32
CFGS = {
    "relu": [
        ReluSAEConfig(d_sae=S, l1_coefficient=1e-3),
        ReluSAEConfig(d_sae=S, l1_coefficient=3e-2),
    ],
    "topk": [TopKSAEConfig(d_sae=S, k=3), TopKSAEConfig(d_sae=S, k=6)],
    "batchtopk": [BatchTopKSAEConfig(d_sae=S, k=3), BatchTopKSAEConfig(d_sae=S, k=5)],
    "jumprelu": [
        JumpReLUSAEConfig(d_sae=S, l0_coefficient=1e-3, bandwidth=0.05, init_threshold=0.05),
        JumpReLUSAEConfig(d_sae=S, l0_coefficient=1e-2, bandwidth=0.1, init_threshold=0.05),
    ],
    "matryoshka": [MatryoshkaSAEConfig(d_sae=S, k=3), MatryoshkaSAEConfig(d_sae=S, k=4)],
}


def _acts(n: int = 300, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(40, D, generator=gen)
    coef = torch.rand(n, 40, generator=gen) * (torch.rand(n, 40, generator=gen) < 0.1)
    return coef @ basis + 0.3 + 0.01 * torch.randn(n, D, generator=gen)


def _tc(**kw) -> SAETrainConfig:
    base = dict(
        init_seeds=[3, 7],
        steps=16,
        batch_size=32,
        warmup_steps=3,
        dead_window=64,
        plateau_tol=0.0,
        n_snapshots=4,
        log_every=5,
        lr=3e-3,
    )
    return SAETrainConfig(**(base | kw))


def _assert_same(a, b) -> None:
    for k in a.sae.params:
        assert torch.equal(a.sae.params[k], b.sae.params[k]), k
    for k in a.sae.buffers:
        assert torch.equal(a.sae.buffers[k], b.sae.buffers[k]), k


@pytest.mark.parametrize(
    ("arch", "per_model_order"),
    [(a, False) for a in CFGS] + [("topk", True), ("jumprelu", True)],
)
def test_batched_is_bit_identical_to_alone(arch: str, per_model_order: bool) -> None:
    acts, cfgs = _acts(), CFGS[arch]
    group = train_group(acts, cfgs, _tc(per_model_data_order=per_model_order))
    assert group.history["dead_fraction"][-1] != [0.0] * 4 or arch in ("relu", "jumprelu")
    index = 0
    for cfg in cfgs:
        for seed in (3, 7):
            alone = train_group(
                acts, [cfg], _tc(init_seeds=[seed], per_model_data_order=per_model_order)
            )
            for k, p in alone.sae.params.items():
                assert torch.equal(group.sae.params[k][index], p[0]), (arch, k, index)
            for k, b in alone.sae.buffers.items():
                assert torch.equal(group.sae.buffers[k][index], b[0]), (arch, k, index)
            assert group.members[index] == (cfg, seed)
            index += 1


@pytest.mark.parametrize("arch", list(CFGS))
def test_same_seed_twice_same_bits_and_other_seed_differs(arch: str) -> None:
    acts = _acts()
    a = train_group(acts, CFGS[arch], _tc())
    b = train_group(acts, CFGS[arch], _tc())
    _assert_same(a, b)
    c = train_group(acts, CFGS[arch], _tc(init_seeds=[4, 7]))
    assert not torch.equal(a.sae.W_dec[0], c.sae.W_dec[0])
    assert torch.equal(a.sae.W_dec[1], c.sae.W_dec[1])


def test_init_depends_only_on_own_seed() -> None:
    full = init_group(D, CFGS["topk"], _tc(init_seeds=[1, 2, 3]))
    alone = init_group(D, [CFGS["topk"][1]], _tc(init_seeds=[2]))
    assert torch.equal(full.W_dec[4], alone.W_dec[0])
    assert torch.equal(full.W_enc[4], alone.W_enc[0])
    assert not torch.equal(full.W_dec[3], full.W_dec[4])


def test_converged_models_freeze_like_alone_and_group_stops() -> None:
    acts, cfgs = _acts(), CFGS["topk"]
    tc = _tc(steps=200, plateau_tol=0.05, plateau_window=10, decay_start=1.0)
    group = train_group(acts, cfgs, tc)
    assert all(s is not None for s in group.converged_step)
    assert group.steps == max(group.converged_step) < 200
    alone = train_group(acts, [cfgs[0]], tc.model_copy(update={"init_seeds": [7]}))
    assert alone.converged_step == [group.converged_step[1]]
    assert torch.equal(alone.sae.W_dec[0], group.sae.W_dec[1])


def test_plateau_tol_zero_never_stops() -> None:
    group = train_group(_acts(), CFGS["relu"], _tc(steps=60, plateau_window=5))
    assert group.steps == 60 and group.converged_step == [None] * 4


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "batchtopk"])
def test_resume_from_checkpoint_is_bit_identical(arch: str, tmp_path, monkeypatch) -> None:
    acts, tc = _acts(), _tc(checkpoint_every=10)
    full = train_group(acts, CFGS[arch], tc)
    from husai.saes import trainer

    real = trainer._GroupTrainer.train_step

    def crash_at_15(self):
        if self.step == 15:
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(trainer._GroupTrainer, "train_step", crash_at_15)
    with pytest.raises(KeyboardInterrupt):
        train_group(acts, CFGS[arch], tc, checkpoint_dir=tmp_path)
    monkeypatch.setattr(trainer._GroupTrainer, "train_step", real)
    resumed = train_group(acts, CFGS[arch], tc, checkpoint_dir=tmp_path)
    _assert_same(full, resumed)
    assert resumed.history == full.history
    assert sorted(resumed.snapshots) == sorted(full.snapshots)
    for s in full.snapshots:
        assert torch.equal(full.snapshots[s], resumed.snapshots[s])
    assert sorted(resumed.snapshot_alive) == sorted(full.snapshot_alive)
    for s in full.snapshot_alive:
        assert torch.equal(full.snapshot_alive[s], resumed.snapshot_alive[s])


def test_checkpoint_of_other_config_is_refused(tmp_path) -> None:
    acts = _acts()
    train_group(acts, CFGS["relu"], _tc(steps=5), checkpoint_dir=tmp_path)
    with pytest.raises(UserError, match="other configs"):
        train_group(acts, CFGS["relu"], _tc(steps=6), checkpoint_dir=tmp_path)


def test_nan_guard_raises_clear_error() -> None:
    with pytest.raises(TrainingDivergedError, match=r"relu d_sae=32 l1_coefficient=.*step \d+"):
        train_group(
            _acts(), CFGS["relu"], _tc(lr=1e30, warmup_steps=0, normalize_activations=False)
        )


def test_bad_activations_are_user_errors() -> None:
    acts = _acts()
    acts[3, 2] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        train_group(acts, CFGS["relu"], _tc())
    with pytest.raises(UserError, match="one arch and width"):
        train_group(_acts(), [CFGS["relu"][0], CFGS["topk"][0]], _tc())


def test_lr_schedule_warmup_and_decay() -> None:
    tc = SAETrainConfig(lr=1.0, steps=100, warmup_steps=10, decay_start=0.8)
    assert lr_at(0, tc) == pytest.approx(0.1)
    assert lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(50, tc) == 1.0
    assert lr_at(90, tc) == pytest.approx(0.5)
    assert lr_at(99, tc) == pytest.approx(0.05)


def test_snapshots_are_log_spaced_and_stored() -> None:
    assert snapshot_steps(1000, 5) == [0, 1, 10, 100, 1000]
    group = train_group(_acts(), CFGS["topk"], _tc(steps=25, n_snapshots=4))
    assert sorted(group.snapshots) == [0, 1, 5, 25]
    assert group.snapshots[0].shape == (4, S, D)
    assert torch.equal(group.snapshots[25], group.sae.W_dec)


def test_batch_stream_is_a_permutation_per_epoch() -> None:
    stream = BatchStream(10, 4, seed=5)
    rows = torch.cat([stream.indices(t) for t in range(5)])  # 20 rows = 2 epochs
    assert sorted(rows[:10].tolist()) == list(range(10))
    assert sorted(rows[10:].tolist()) == list(range(10))
    assert torch.equal(BatchStream(10, 4, seed=5).indices(3), stream.indices(3))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "matryoshka"])
def test_decoder_rows_stay_unit_norm(arch: str) -> None:
    group = train_group(_acts(), CFGS[arch], _tc())
    norms = group.sae.W_dec.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_normalisation_is_folded_into_returned_sae() -> None:
    acts = _acts() * 50.0
    group = train_group(acts, CFGS["topk"], _tc())
    scale = group.norm_scale
    assert (acts * scale).pow(2).sum(-1).mean().item() == pytest.approx(D, rel=1e-4)
    raw = train_group(acts, CFGS["topk"], _tc())
    assert torch.equal(raw.sae.W_dec, group.sae.W_dec)
    recon_raw = group.sae.forward(acts[:50])
    unfolded = group.sae.select(0)
    unfolded.params["b_enc"] *= scale
    unfolded.params["b_dec"] *= scale
    recon_scaled = unfolded.forward(acts[:50] * scale)[0]
    assert torch.allclose(recon_raw[0] * scale, recon_scaled, rtol=1e-4, atol=1e-3)


def test_per_model_adam_matches_torch_adam() -> None:
    from husai.saes.optim import PerModelAdam

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 5, generator=gen)
    ref = [w[n].clone().requires_grad_() for n in range(3)]
    opt = torch.optim.Adam(ref, lr=0.01)
    ours = {"w": w.clone()}
    adam = PerModelAdam(ours)
    for t in range(1, 4):
        g = torch.randn(3, 4, 5, generator=gen)
        for n in range(3):
            ref[n].grad = g[n].clone()
        opt.step()
        adam.step(ours, {"w": g}, 0.01, t, [True, True, False])
    assert torch.allclose(ours["w"][0], ref[0].detach(), atol=1e-6)
    assert torch.allclose(ours["w"][1], ref[1].detach(), atol=1e-6)
    assert torch.equal(ours["w"][2], w[2])  # inactive model untouched


WIDE = {
    "topk": [TopKSAEConfig(d_sae=1024, k=8), TopKSAEConfig(d_sae=1024, k=4)],
    "relu": [ReluSAEConfig(d_sae=1024, l1_coefficient=0.1), ReluSAEConfig(d_sae=1024)],
    "batchtopk": [BatchTopKSAEConfig(d_sae=1024, k=8), BatchTopKSAEConfig(d_sae=1024, k=4)],
    "jumprelu": [JumpReLUSAEConfig(d_sae=1024), JumpReLUSAEConfig(d_sae=1024, l0_coefficient=0.1)],
    "matryoshka": [MatryoshkaSAEConfig(d_sae=1024, k=8), MatryoshkaSAEConfig(d_sae=1024, k=4)],
}


@pytest.mark.parametrize("arch", list(WIDE))
def test_bit_identity_at_realistic_width(arch: str) -> None:
    """Wide dictionaries take other BLAS paths than the tiny tests above (MKL splits a large
    reduction over threads on some CPUs); run at the thread count torch picks."""
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(2048, 64, generator=gen)
    cfgs = WIDE[arch]
    tc = _tc(steps=3, batch_size=512, dead_window=512, warmup_steps=0)
    group = train_group(acts, cfgs, tc.model_copy(update={"init_seeds": [0, 1, 2]}))
    alone = train_group(acts, [cfgs[-1]], tc.model_copy(update={"init_seeds": [1]}))
    index = group.sae.n_models - 2
    for k, p in alone.sae.params.items():
        assert torch.equal(group.sae.params[k][index], p[0]), k
    for k, b in alone.sae.buffers.items():
        assert torch.equal(group.sae.buffers[k][index], b[0]), k


@pytest.mark.parametrize("arch", list(CFGS))
def test_training_runs_no_batched_gemm(arch: str, monkeypatch) -> None:
    """A batched GEMM's reduction order may depend on the number of models (one GEMM split
    over threads for N = 1, one GEMM per thread for N > 1), so training must not call one."""

    def refuse(*args, **kwargs):
        raise AssertionError("batched GEMM called during SAE training")

    def refuse_batched(real):
        def check(*args, **kwargs):
            if any(isinstance(a, torch.Tensor) and a.dim() > 2 for a in args):
                raise AssertionError("batched matmul called during SAE training")
            return real(*args, **kwargs)

        return check

    monkeypatch.setattr(torch, "bmm", refuse)
    monkeypatch.setattr(torch, "baddbmm", refuse)
    monkeypatch.setattr(torch, "einsum", refuse)
    monkeypatch.setattr(torch, "matmul", refuse_batched(torch.matmul))
    monkeypatch.setattr(torch.Tensor, "__matmul__", refuse_batched(torch.Tensor.__matmul__))
    train_group(_acts(), CFGS[arch], _tc(steps=4))


@pytest.mark.parametrize(("rows", "inner", "cols"), [(512, 1024, 64), (37, 33, 5)])
def test_model_mm_slice_does_not_depend_on_group(rows: int, inner: int, cols: int) -> None:
    from husai.saes.base import model_mm

    gen = torch.Generator().manual_seed(1)
    A = torch.randn(3, rows, inner, generator=gen, requires_grad=True)
    B = torch.randn(3, cols, inner, generator=gen).transpose(1, 2).requires_grad_()
    bias = torch.randn(3, cols, generator=gen)
    group = model_mm(A, B, bias)
    group.pow(2).sum().backward()
    A1, B1 = A[1:2].detach().clone().requires_grad_(), B[1:2].detach().clone().requires_grad_()
    alone = model_mm(A1, B1, bias[1:2])
    alone.pow(2).sum().backward()
    assert torch.equal(group[1], alone[0])
    assert torch.equal(A.grad[1], A1.grad[0]) and torch.equal(B.grad[1], B1.grad[0])
    ref = torch.baddbmm(bias[:, None, :], A.detach(), B.detach())
    assert torch.allclose(group.detach(), ref, rtol=1e-5, atol=1e-4)


def test_topk_dense_and_sparse_paths_agree(monkeypatch) -> None:
    """Narrow TopK SAEs train through dense products, wide ones through the sparse kernels;
    both compute the same function (to float32 rounding), including AuxK on dead latents."""
    from husai.saes import topk

    acts, cfgs, tc = _acts(), CFGS["topk"], _tc(steps=3)
    calls = []
    real = topk.dense_recon
    monkeypatch.setattr(topk, "dense_recon", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(topk, "DENSE_MAX_WIDTH", S)
    dense = train_group(acts, cfgs, tc)
    assert len(calls) == 3
    monkeypatch.setattr(topk, "DENSE_MAX_WIDTH", S - 1)
    sparse = train_group(acts, cfgs, tc)
    assert len(calls) == 3
    assert "loss_auxk" in dense.history and "loss_auxk" in sparse.history
    for k, p in dense.sae.params.items():
        assert torch.allclose(p, sparse.sae.params[k], rtol=1e-4, atol=1e-6), k


def test_snapshot_alive_masks_are_the_trainers_dead_counter_at_each_snapshot() -> None:
    # dead_window 64 = 2 batches: latents that stop firing are dead within the run
    cfgs = [ReluSAEConfig(d_sae=S, l1_coefficient=10.0)]
    group = train_group(_acts(), cfgs, _tc(steps=40, log_every=40))
    assert sorted(group.snapshot_alive) == sorted(group.snapshots)
    assert group.snapshot_alive[0].all()  # nothing has had a window to die in yet
    final = group.snapshot_alive[40]
    assert final.shape == group.snapshots[40].shape[:2] and final.dtype == torch.bool
    dead_logged = torch.tensor(group.history["dead_fraction"][-1])  # logged at step 40
    assert torch.equal(1 - final.float().mean(-1), dead_logged)
    assert 0 < int(final.sum()) < final.numel()  # the case has dead and alive latents
