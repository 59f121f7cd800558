"""The transformer: config mapping, seeded init, the final-position forward, checkpoints."""

import pytest
import torch

from husai.config import ModelConfig, TaskConfig
from husai.model.build import build_model, final_logits
from husai.model.train import _freeze, checkpoint_steps, grok_step
from husai.tasks import make_dataset

SMALL = dict(d_model=32, n_heads=2, d_head=8, d_mlp=64)


def test_default_is_nanda_2023():
    model = build_model(TaskConfig(), ModelConfig())
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (1, 128, 4, 32, 512)
    assert (cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx, cfg.act_fn) == (114, 113, 3, "relu")
    assert cfg.normalization_type is None
    assert not hasattr(model, "ln_final")


def test_init_is_seeded_and_leaves_global_rng_alone():
    task = TaskConfig(modulus=11)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(task, ModelConfig(seed=5, **SMALL))
    after = torch.rand(1)
    b = build_model(task, ModelConfig(seed=5, **SMALL))
    c = build_model(task, ModelConfig(seed=6, **SMALL))
    assert before == after
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.embed.W_E, c.embed.W_E)


@pytest.mark.parametrize(
    "norm,layers,fmt,act",
    [
        ("none", 1, "a_b_eq", "relu"),
        ("LN", 1, "a_b_eq", "gelu"),
        ("none", 2, "a_op_b_eq", "relu"),
        ("LN", 2, "a_b_eq", "relu"),
    ],
)
def test_final_logits_match_hooked_transformer(norm, layers, fmt, act):
    task = TaskConfig(modulus=23, token_format=fmt)
    model = build_model(task, ModelConfig(normalization=norm, n_layers=layers, act_fn=act, **SMALL))
    with torch.no_grad():  # non-zero biases so that every term is exercised
        for name, p in model.named_parameters():
            if "b_" in name:
                p.normal_(0, 0.1)
    tokens = make_dataset(task).tokens
    with torch.no_grad():
        expected = model(tokens)[:, -1]
        got = final_logits(model, tokens)
    assert got.shape == expected.shape == (23 * 23, 23)
    assert (got - expected).abs().max() < 1e-5


def test_final_logits_gradients_match():
    task = TaskConfig(modulus=13)
    model = build_model(task, ModelConfig(**SMALL))
    tokens = make_dataset(task).tokens
    grads = []
    for fn in (lambda: model(tokens)[:, -1], lambda: final_logits(model, tokens)):
        model.zero_grad()
        fn().pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-4), name


def test_freeze_biases_zeroes_and_freezes_only_biases():
    model = build_model(TaskConfig(modulus=11), ModelConfig(normalization="LN", **SMALL))
    trained = _freeze(model, True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks.0.ln1.b" in names and "embed.W_E" in names
    assert not any(n.split(".")[-1].startswith("b_") for n in names)
    assert model.blocks[0].attn.b_Q.abs().sum() == 0
    assert len(trained) == len(names)


def test_checkpoint_steps_are_log_spaced_and_include_ends():
    steps = checkpoint_steps(1000, 8)
    assert steps[0] == 0 and steps[-1] == 1000 and len(steps) == 8
    ratios = [b / a for a, b in zip(steps[1:-1], steps[2:], strict=False)]
    assert max(ratios) / min(ratios) < 1.5
    assert checkpoint_steps(30, 1) == [30]


def test_grok_step():
    curves = {"step": [0, 10, 20, 30], "test_acc": [0.1, 0.98, 0.995, 0.999]}
    assert grok_step(curves) == 20
    assert grok_step({"step": [0], "test_acc": [0.5]}) is None
