"""Per-model Adam and the learning-rate schedule of the batched SAE trainer.

Adam (Kingma & Ba 2015, Algorithm 1, betas 0.9/0.999, eps 1e-8) runs on each model's
slice of each stacked parameter, with PyTorch's fused Adam kernel (``torch._fused_adam_``,
one kernel per slice) where it exists and ``torch._foreach_*`` ops otherwise. Every slice has the
shape it would have if the model were trained alone, so the elementwise kernels
(including any FMA and vector-tail handling) see the same lengths and produce the
same bits; models flagged inactive (converged) are skipped entirely.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from husai.saes.config_base import SAETrainConfig


def lr_at(step: int, cfg: SAETrainConfig) -> float:
    """Linear warmup over warmup_steps, then constant, then linear decay to 0 from decay_start."""
    lr = cfg.lr
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    decay_from = int(cfg.decay_start * cfg.steps)
    if decay_from < cfg.steps and step >= decay_from:
        lr *= (cfg.steps - step) / (cfg.steps - decay_from)
    return lr


class PerModelAdam:
    """Adam whose state and update are held and applied per model slice."""

    def __init__(
        self,
        params: dict[str, Tensor],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.betas, self.eps = betas, eps
        self.m = {k: torch.zeros_like(p, requires_grad=False) for k, p in params.items()}
        self.v = {k: torch.zeros_like(p, requires_grad=False) for k, p in params.items()}

    @torch.no_grad()
    def step(
        self,
        params: dict[str, Tensor],
        grads: dict[str, Tensor | None],
        lr: float,
        t: int,
        active: list[bool],
    ) -> None:
        b1, b2 = self.betas
        models = [n for n, a in enumerate(active) if a]
        names = [k for k in params if grads.get(k) is not None]
        ps = [params[k][n] for k in names for n in models]
        gs = [grads[k][n] for k in names for n in models]  # type: ignore[index]
        ms = [self.m[k][n] for k in names for n in models]
        vs = [self.v[k][n] for k in names for n in models]
        if not ps:
            return
        if hasattr(torch, "_fused_adam_"):  # one kernel per slice instead of seven
            steps = [torch.tensor(float(t)) for _ in ps]
            torch._fused_adam_(
                ps,
                gs,
                ms,
                vs,
                [],
                steps,
                lr=lr,
                beta1=b1,
                beta2=b2,
                weight_decay=0.0,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
            return
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, gs, alpha=1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, math.sqrt(1 - b2**t))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(ps, ms, denom, value=-lr / (1 - b1**t))

    def state_tensors(self) -> dict[str, Tensor]:
        return {
            **{f"m.{k}": v for k, v in self.m.items()},
            **{f"v.{k}": v for k, v in self.v.items()},
        }

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        for k in self.m:
            self.m[k].copy_(tensors[f"m.{k}"])
            self.v[k].copy_(tensors[f"v.{k}"])
