"""Loss with one activation replaced: how much of the model's behaviour a reconstruction keeps.

:func:`loss_with_replacement` runs the HookedTransformer four times on the same inputs:
clean, with the activation at ``hook`` (at one position) replaced by ``replace_fn`` of it
(e.g. an SAE's reconstruction), zero-ablated, and mean-ablated (batch mean at that
position). Loss is cross-entropy at the final position. Loss recovered follows SAELens'
"CE loss score": (L_zero - L_spliced) / (L_zero - L_clean), i.e. against zero ablation;
``loss_recovered_mean`` gives the same against mean ablation, which is the fairer
baseline for hooks whose zero vector is far from typical (e.g. the residual stream).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from husai.errors import UserError


def check_hook(model: HookedTransformer, hook: str) -> None:
    """UserError listing the valid hook names if ``hook`` is not one of them."""
    if hook not in model.hook_dict:
        valid = ", ".join(sorted(model.hook_dict))
        raise UserError(f"hook {hook!r} does not exist in this model; valid hooks: {valid}")


@torch.no_grad()
def loss_with_replacement(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    labels: Int[Tensor, " batch"],
    hook: str,
    replace_fn: Callable[[Tensor], Tensor],
    position: int = -1,
    reference: dict[str, float | str] | None = None,
) -> dict[str, float | str]:
    """Clean, spliced, zero- and mean-ablated losses and the loss recovered (see module doc).

    ``reference``: an earlier result on the same model, inputs, hook and position; its
    clean and ablated losses are reused, so only the spliced run is computed (one forward
    pass instead of four when many SAEs share a hook).
    """
    check_hook(model, hook)

    def run(fn: Callable[[Tensor], Tensor] | None) -> float:
        hooks = [] if fn is None else [(hook, _at_position(fn, position))]
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1]
        return F.cross_entropy(logits.double(), labels).item()

    spliced = run(replace_fn)
    if reference is not None:
        clean = float(reference["clean_loss"])
        zero, mean = float(reference["zero_ablation_loss"]), float(reference["mean_ablation_loss"])
    else:
        clean, zero = run(None), run(torch.zeros_like)
        mean = run(lambda x_BD: x_BD.mean(0, keepdim=True).expand_as(x_BD))
    return {
        "clean_loss": clean,
        "spliced_loss": spliced,
        "zero_ablation_loss": zero,
        "mean_ablation_loss": mean,
        "loss_recovered": _recovered(zero, spliced, clean),
        "loss_recovered_mean": _recovered(mean, spliced, clean),
        "ablation": "zero",
    }


def _recovered(ablated: float, spliced: float, clean: float) -> float:
    gap = ablated - clean
    return float("nan") if gap == 0 else (ablated - spliced) / gap


def _at_position(fn: Callable[[Tensor], Tensor], position: int) -> Callable[..., Tensor]:
    """A hook that applies ``fn`` to the flattened activation [batch, d] at ``position``."""

    def hook_fn(act: Tensor, hook: object) -> Tensor:
        out = act.clone()
        x_BD = act[:, position].reshape(act.shape[0], -1)
        out[:, position] = fn(x_BD).reshape(act[:, position].shape).to(act.dtype)
        return out

    return hook_fn
