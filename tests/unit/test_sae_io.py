"""SAELens-format save/load: round trips, SAELens loads ours, we load SAELens'; evaluate()."""

from __future__ import annotations

import json
import os

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
from husai.errors import UserError
from husai.saes import BatchedSAE, evaluate, get_architecture, load_sae, save_sae, train_group

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
D, S = 10, 24
CFGS = {
    "relu": ReluSAEConfig(d_sae=S, l1_coefficient=1e-2),
    "topk": TopKSAEConfig(d_sae=S, k=4),
    "batchtopk": BatchTopKSAEConfig(d_sae=S, k=4),
    "jumprelu": JumpReLUSAEConfig(
        d_sae=S, l0_coefficient=1e-3, init_threshold=0.05, bandwidth=0.05
    ),
    "matryoshka": MatryoshkaSAEConfig(d_sae=S, k=4),
}


def _acts(n: int = 256) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(n, D, generator=gen) * 3 + 1).float()


@pytest.fixture(scope="module")
def groups() -> dict:
    tc = SAETrainConfig(init_seeds=[0, 1], steps=30, batch_size=64, warmup_steps=2, n_snapshots=0)
    return {arch: train_group(_acts() * 7.0, [cfg], tc) for arch, cfg in CFGS.items()}


@pytest.mark.parametrize("arch", list(CFGS))
def test_round_trip_matches_batched_model(arch, groups, tmp_path) -> None:
    group = groups[arch]
    path = save_sae(tmp_path / "sae", group, 1, hook_name="blocks.0.hook_resid_post")
    loaded = load_sae(path)
    x = _acts(64) * 7.0
    codes = group.sae.encode(x)[1]
    assert loaded.arch == arch
    assert torch.allclose(loaded.encode(x), codes, atol=1e-5)
    assert torch.allclose(loaded.decode(loaded.encode(x)), group.sae.forward(x)[1], atol=1e-4)
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["husai"]["init_seed"] == 1 and cfg["husai"]["arch"] == arch
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    if arch == "topk":
        assert cfg["rescale_acts_by_decoder_norm"] is False and cfg["k"] == 4


@pytest.mark.parametrize("arch", list(CFGS))
def test_saelens_loads_our_sae_and_agrees(arch, groups, tmp_path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    path = save_sae(
        tmp_path / "sae", groups[arch], 0, hook_name="blocks.0.hook_mlp_out", model_name="m"
    )
    theirs = sae_lens.SAE.load_from_disk(str(path))
    assert theirs.cfg.metadata.hook_name == "blocks.0.hook_mlp_out"  # kept, not dropped
    assert theirs.cfg.metadata.model_name == "m" and theirs.cfg.metadata.prepend_bos is False
    ours = load_sae(path)
    x = torch.randn(128, D) * 20
    assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-5)
    codes = ours.encode(x)
    assert torch.allclose(theirs.decode(codes), ours.decode(codes), atol=1e-5)
    assert (ours.encode(x) != 0).any()


def _saelens_sae(kind: str):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(0)
    if kind == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=D, d_sae=S))
    elif kind == "topk_rescaled":
        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(d_in=D, d_sae=S, k=5, rescale_acts_by_decoder_norm=True)
        )
    elif kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=S))
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=S, k=4))
        sae.topk_threshold = torch.tensor(0.3, dtype=torch.double)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if name != "threshold" else 0.2).__abs__())
        if kind == "jumprelu":
            sae.threshold.abs_()
    return sae


@pytest.mark.parametrize("kind", ["standard", "topk_rescaled", "jumprelu", "batchtopk"])
def test_saelens_saved_sae_loads_into_husai(kind, tmp_path) -> None:
    pytest.importorskip("sae_lens")
    sae = _saelens_sae(kind)
    sae.save_model(str(tmp_path / "theirs"))
    ours = load_sae(tmp_path / "theirs")
    x = torch.randn(64, D) * 2
    with torch.no_grad():
        if kind == "batchtopk":  # training class: inference is a JumpReLU at topk_threshold
            norms = sae.W_dec.norm(dim=-1)  # its training cfg rescales by decoder norms
            pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * norms
            expected = torch.relu(pre) * (pre > 0.3)
            recon_expected = (expected / norms) @ sae.W_dec + sae.b_dec
        else:
            expected, recon_expected = sae.encode(x), sae(x)
    assert torch.allclose(ours.encode(x), expected, atol=1e-5)
    assert torch.allclose(ours.decode(ours.encode(x)), recon_expected, atol=1e-4)
    if kind == "topk_rescaled":
        assert torch.allclose(ours.W_dec.norm(dim=-1), torch.ones(S), atol=1e-5)


def test_load_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(UserError, match="cfg.json missing"):
        load_sae(tmp_path)


def _identity_sae() -> BatchedSAE:
    """Codes = (x)_+ and (-x)_+ on 4 dims, latents 8..9 never fire: exact reconstruction."""
    eye = torch.eye(4)
    W_enc = torch.cat([eye, -eye, torch.zeros(4, 2)], dim=1)
    W_dec = torch.cat([eye, -eye, torch.zeros(2, 4)], dim=0)
    arch = get_architecture("relu")([ReluSAEConfig(d_sae=10)])
    params = {
        "W_enc": W_enc[None],
        "b_enc": torch.zeros(1, 10) - torch.tensor([0.0] * 8 + [1.0, 1.0]),
        "W_dec": W_dec[None],
        "b_dec": torch.zeros(1, 4),
    }
    return BatchedSAE(arch, params)


def test_evaluate_known_values() -> None:
    sae = _identity_sae()
    x = torch.tensor([[1.0, -2.0, 0.0, 3.0], [0.5, 0.5, -0.5, 0.0]])
    m = evaluate(sae, x, index=0)
    assert m["explained_variance"] == pytest.approx(1.0)
    assert m["mse"] == pytest.approx(0.0)
    assert m["l0"] == pytest.approx(3.0)  # 3 non-zeros in each row
    # fired: +0,-1,+3 / +0,+1,-2 -> latents 0,1,3,5,6 fire; 5 of 10 dead
    assert m["dead_fraction"] == pytest.approx(0.5)
    assert m["alive_mask"].tolist() == [
        True,
        True,
        False,
        True,
        False,
        True,
        True,
        False,
        False,
        False,
    ]
    sae.params["W_dec"].zero_()  # reconstruction = 0: EV = 1 - sum x^2 / sum (x - mean)^2
    m0 = evaluate(sae, x, index=0)
    sst = (x - x.mean(0)).pow(2).sum()
    assert m0["explained_variance"] == pytest.approx(1 - float(x.pow(2).sum() / sst))
    assert m0["mse"] == pytest.approx(float(x.pow(2).mean()))
    batched = evaluate(_identity_sae(), x)
    assert batched["l0"] == [pytest.approx(3.0)] and batched["alive_mask"].shape == (1, 10)


def test_spliced_loss_of_exact_sae_recovers_all_loss() -> None:
    transformer_lens = pytest.importorskip("transformer_lens")
    from husai.saes.evaluate import spliced_loss

    torch.manual_seed(0)
    model = transformer_lens.HookedTransformer(
        transformer_lens.HookedTransformerConfig(
            n_layers=1, d_model=4, n_ctx=3, d_head=2, n_heads=2, d_mlp=8, d_vocab=7, act_fn="relu"
        )
    )
    tokens = torch.randint(0, 7, (20, 3))
    labels = torch.randint(0, 7, (20,))
    exact = spliced_loss(
        model, tokens, labels, "blocks.0.hook_resid_post", _identity_sae().select(0)
    )
    assert exact["spliced_loss"] == pytest.approx(exact["clean_loss"], abs=1e-6)
    assert exact["loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    broken = _identity_sae()
    broken.params["W_dec"].zero_()  # reconstruction = b_dec = 0: the zero ablation
    zero = spliced_loss(model, tokens, labels, "blocks.0.hook_resid_post", broken)
    assert zero["loss_recovered"] == pytest.approx(0.0, abs=1e-6)


def test_evaluate_is_independent_of_chunking(groups) -> None:
    x = _acts(100) * 7.0
    whole = evaluate(groups["topk"].sae, x)
    chunked = evaluate(groups["topk"].sae, x, batch_size=7)
    for key in ("explained_variance", "mse", "l0", "dead_fraction"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-6)
    assert torch.equal(chunked["alive_mask"], whole["alive_mask"])
