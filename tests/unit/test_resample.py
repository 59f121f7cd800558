"""Resampling dead ReLU latents (Bricken et al. 2023): planted draws, bookkeeping, bit-identity."""

from __future__ import annotations

import pytest
import torch

from husai.config import ReluSAEConfig, SAETrainConfig, TopKSAEConfig
from husai.saes import init_group, train_group
from husai.saes.optim import PerModelAdam
from husai.saes.resample import ENCODER_SCALE, resample_dead, resample_seed

D, S = 8, 6


def _group_with_dead(n_models: int = 2):
    """ReLU models whose alive latents never fire (b_enc -100): x_hat = b_dec = 0 everywhere,
    so each row's error is ||x||^2."""
    cfgs = [ReluSAEConfig(d_sae=S, l1_coefficient=1.0)]
    sae = init_group(D, cfgs, SAETrainConfig(init_seeds=list(range(n_models))))
    with torch.no_grad():
        sae.params["b_enc"].fill_(-100.0)
        sae.params["b_dec"].zero_()
    adam = PerModelAdam(sae.params)
    for state in (adam.m, adam.v):
        for t in state.values():
            t.fill_(1.0)
    dead = torch.zeros(n_models, S, dtype=torch.bool)
    dead[:, [1, 4]] = True
    return sae, adam, dead


def _acts(big_row: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    acts = 0.01 * torch.randn(50, D, generator=gen)
    acts[big_row] = 10.0 * torch.nn.functional.normalize(torch.randn(D, generator=gen), dim=0)
    return acts


def test_dead_latents_point_at_the_worst_reconstructed_input() -> None:
    sae, adam, dead = _group_with_dead()
    before = {k: v.clone() for k, v in sae.params.items()}
    acts = _acts()
    counts = resample_dead(sae, adam, acts, dead, models=[0], seeds=[1, 2])
    assert counts == [2, 0]
    u = acts[5] / acts[5].norm()  # error^2 ~ 1e4 against ~1e-8: always this row
    alive = ~dead[0]
    dec_norm = before["W_dec"][0][alive].norm(dim=-1).mean()
    enc_norm = before["W_enc"][0][:, alive].norm(dim=0).mean()
    for s in (1, 4):
        assert torch.allclose(sae.W_dec[0, s], u * dec_norm, atol=1e-6)
        assert torch.allclose(sae.W_enc[0][:, s], u * ENCODER_SCALE * enc_norm, atol=1e-6)
        assert sae.b_enc[0, s] == 0.0
        assert adam.m["W_dec"][0, s].abs().sum() == 0 and adam.v["W_enc"][0][:, s].abs().sum() == 0
        assert adam.m["b_enc"][0, s] == 0
    for k in before:  # alive latents and the model not asked for are untouched
        assert torch.equal(sae.params[k][1], before[k][1]), k
    assert torch.equal(sae.W_dec[0][alive], before["W_dec"][0][alive])
    assert adam.m["W_dec"][0][alive].eq(1).all() and adam.m["W_dec"][1].eq(1).all()
    # a resampled latent now fires on that input: pre-activation 0.2 * enc_norm * |x| > 0
    x = acts[5] - sae.b_dec[0]
    assert (x @ sae.W_enc[0][:, [1, 4]] + sae.b_enc[0, [1, 4]] > 0).all()


def test_draws_follow_the_squared_error_and_the_seed() -> None:
    acts = torch.nn.functional.normalize(torch.randn(400, D), dim=1)  # equal errors
    picks = []
    for seed in (1, 1, 2):
        sae, adam, dead = _group_with_dead(1)
        dead[:] = True
        dead[0, 0] = False
        resample_dead(sae, adam, acts, dead, models=[0], seeds=[seed])
        picks.append(sae.W_dec[0, 1:].clone())
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])
    assert resample_seed(0, 3, 200) != resample_seed(0, 4, 200) != resample_seed(0, 3, 400)


def _tc(**kw) -> SAETrainConfig:
    base = dict(
        init_seeds=[3, 7],
        steps=60,
        batch_size=32,
        warmup_steps=3,
        dead_window=64,
        plateau_tol=0.0,
        log_every=10,
        lr=3e-3,
    )
    return SAETrainConfig(**(base | kw))


def _train_acts() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(20, D, generator=gen)
    coef = torch.rand(300, 20, generator=gen) * (torch.rand(300, 20, generator=gen) < 0.1)
    return coef @ basis + 0.01 * torch.randn(300, D, generator=gen)


CFGS = [ReluSAEConfig(d_sae=24, l1_coefficient=c) for c in (10.0, 30.0)]


def test_training_resamples_counts_and_stays_bit_identical_alone() -> None:
    acts, tc = _train_acts(), _tc(resample_dead_at=[20, 40])
    group = train_group(acts, CFGS, tc)
    counts = group.history["resampled"][-1]
    assert len(counts) == 4 and max(counts) > 0  # a strong penalty kills latents to resample
    plain = train_group(acts, CFGS, _tc())
    assert "resampled" not in plain.history
    assert not torch.equal(plain.sae.W_dec, group.sae.W_dec)
    index = 0
    for cfg in CFGS:
        for seed in (3, 7):
            alone = train_group(acts, [cfg], tc.model_copy(update={"init_seeds": [seed]}))
            for k, p in alone.sae.params.items():
                assert torch.equal(group.sae.params[k][index], p[0]), (k, index)
            assert alone.history["resampled"][-1] == [counts[index]]
            index += 1


def test_resampling_leaves_topk_alone_and_resumes_bit_identically(tmp_path, monkeypatch) -> None:
    acts = _train_acts()
    topk = [TopKSAEConfig(d_sae=24, k=2)]
    assert torch.equal(
        train_group(acts, topk, _tc(resample_dead_at=[20])).sae.W_dec,
        train_group(acts, topk, _tc()).sae.W_dec,
    )
    tc = _tc(resample_dead_at=[20, 40], checkpoint_every=30)
    full = train_group(acts, CFGS, tc)
    from husai.saes import trainer

    real = trainer._GroupTrainer.train_step

    def crash_at_35(self):
        if self.step == 35:
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(trainer._GroupTrainer, "train_step", crash_at_35)
    with pytest.raises(KeyboardInterrupt):
        train_group(acts, CFGS, tc, checkpoint_dir=tmp_path)
    monkeypatch.setattr(trainer._GroupTrainer, "train_step", real)
    resumed = train_group(acts, CFGS, tc, checkpoint_dir=tmp_path)
    assert torch.equal(full.sae.W_dec, resumed.sae.W_dec)
    assert resumed.history == full.history


def test_no_plateau_is_declared_until_two_windows_after_a_resampling() -> None:
    # plateau_tol 1.0: any window counts as a plateau at the first step allowed to check
    acts, tc = _train_acts(), _tc(plateau_tol=1.0, plateau_window=5)
    assert train_group(acts, CFGS, tc).converged_step == [10] * 4
    late = train_group(acts, CFGS, tc.model_copy(update={"resample_dead_at": [8]}))
    assert late.converged_step == [20] * 4  # windows 10-15 and 15-20 follow the resampling
    topk = [TopKSAEConfig(d_sae=24, k=2)]  # AuxK, no resampling: nothing to wait for
    assert (
        train_group(acts, topk, tc.model_copy(update={"resample_dead_at": [8]})).converged_step
        == [10] * 2
    )
