"""Loss with a replaced activation: identity recovers everything, zeros nothing."""

import pytest
import torch

from husai.config import ModelConfig, TaskConfig
from husai.errors import UserError
from husai.model.build import build_model
from husai.model.splice import loss_with_replacement
from husai.tasks import make_dataset


@pytest.fixture(scope="module")
def setup():
    task = TaskConfig(modulus=13)
    model = build_model(task, ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32))
    data = make_dataset(task)
    return model, data.tokens, data.labels


def test_identity_and_zero_replacements(setup):
    model, tokens, labels = setup
    hook = "blocks.0.hook_resid_post"
    same = loss_with_replacement(model, tokens, labels, hook, lambda x: x)
    assert same["spliced_loss"] == pytest.approx(same["clean_loss"], abs=1e-9)
    assert same["loss_recovered"] == pytest.approx(1.0)
    zero = loss_with_replacement(model, tokens, labels, hook, torch.zeros_like)
    assert zero["spliced_loss"] == pytest.approx(zero["zero_ablation_loss"])
    assert zero["loss_recovered"] == pytest.approx(0.0, abs=1e-9)
    assert zero["ablation"] == "zero"


def test_replacement_at_an_early_position_changes_the_loss(setup):
    model, tokens, labels = setup
    hook = "blocks.0.hook_resid_pre"
    noisy = loss_with_replacement(model, tokens, labels, hook, lambda x: x + 5.0, position=0)
    assert noisy["spliced_loss"] != pytest.approx(noisy["clean_loss"])


def test_unknown_hook_lists_valid_ones(setup):
    model, tokens, labels = setup
    with pytest.raises(UserError, match="valid hooks: .*blocks.0.hook_resid_post"):
        loss_with_replacement(model, tokens, labels, "blocks.0.hook_nope", lambda x: x)


def test_reference_reuses_clean_and_ablated_losses() -> None:
    """With ``reference`` only the spliced run is new; every number matches a full call."""
    from husai.config import ModelConfig, TaskConfig
    from husai.model.build import build_model
    from husai.model.splice import loss_with_replacement
    from husai.tasks import make_dataset

    task = TaskConfig(modulus=7)
    model = build_model(task, ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32)).eval()
    data = make_dataset(task)
    hook = "blocks.0.hook_resid_post"
    first = loss_with_replacement(model, data.tokens, data.labels, hook, lambda x: 0.5 * x)
    full = loss_with_replacement(model, data.tokens, data.labels, hook, lambda x: 0.9 * x)
    reused = loss_with_replacement(
        model, data.tokens, data.labels, hook, lambda x: 0.9 * x, reference=first
    )
    assert reused == full
    assert reused["spliced_loss"] != first["spliced_loss"]
