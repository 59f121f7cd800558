"""The batched multi-seed SAE trainer: one pass over shared batches trains a whole group.

A group is one architecture and width; its models are the sparsity settings x init
seeds (config-major, then seed). The trainer knows nothing about architectures: it
asks the architecture for the loss terms of a batch, sums them per model, and then

- takes an Adam step (Kingma & Ba 2015, Algorithm 1) on each model's slice of every
  parameter, elementwise, so a model's update never depends on the other models;
- renormalises decoder rows where the architecture asks for it;
- tracks dead latents: a latent is dead when it has not fired in the last
  ``dead_window`` samples;
- stores W_dec snapshots at log-spaced steps (step 0 = initialisation);
- stops with :class:`~husai.errors.TrainingDivergedError` on a NaN/inf loss;
- declares a model converged when the mean loss of a ``plateau_window``-step window
  improves by less than ``plateau_tol`` (relative) on the window before, both windows
  after the last dead-latent resampling (whose loss spike is no plateau); a converged
  model is frozen (no further updates), so it ends exactly as it would alone, and the
  group stops when every model has converged or ``steps`` is reached;
- writes resumable checkpoints (parameters, Adam moments, trainer state).

Learning rate: linear warmup over ``warmup_steps``, constant, then linear decay to 0
from ``decay_start * steps`` (as SAELens' warmup + decay schedules).

Data order: the batch of step t is rows t*B..(t+1)*B of an endless stream of random
permutations, permutation e drawn from a generator seeded by (seed, e). Batches are a
pure function of (seed, step), so resuming needs no RNG state. The seed is
``data_seed`` for every model, or ``data_seed + init_seed`` per model when
``per_model_data_order`` is set.

Device (``device``, :mod:`husai.devices`): models are initialised and batches drawn on the
CPU whatever the device, then the parameters, optimiser state and activations move there
for the steps; the result comes back on the CPU. On the CPU nothing changes.

Activation normalisation (``normalize_activations``): activations are scaled by
c = sqrt(d_in / mean ||x||^2) (SAELens 'expected_average_only_in'). After training the
scale is folded so the returned SAEs act on raw activations with unit-norm decoder
rows kept: b_enc /= c, b_dec /= c, threshold /= c (codes come out in raw units, the
encoder and decoder weights are unchanged). ``GroupResult.norm_scale`` records c.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from husai.devices import factory_device, resolve_device
from husai.errors import TrainingDivergedError, UserError
from husai.io import atomic_save_safetensors, atomic_write_json, sha256_tensors
from husai.progress import progress_bar
from husai.saes.base import BatchedSAE, init_models
from husai.saes.config_base import SAEConfigBase, SAETrainConfig
from husai.saes.optim import PerModelAdam, lr_at
from husai.saes.registry import get_architecture
from husai.saes.resample import resample_dead, resample_seed

log = logging.getLogger(__name__)

CKPT_TENSORS = "checkpoint.safetensors"
CKPT_STATE = "checkpoint.json"


@dataclass
class GroupResult:
    """A trained group: models are sae_cfgs x init_seeds, config-major then seed."""

    sae: BatchedSAE
    members: list[tuple[Any, int]]
    snapshots: dict[int, Tensor]
    steps: int
    converged_step: list[int | None]
    history: dict[str, list] = field(default_factory=dict)
    norm_scale: float = 1.0
    train_cfg: SAETrainConfig | None = None
    snapshot_alive: dict[int, Tensor] = field(default_factory=dict)
    """Per snapshot step, ``[N, S]`` bool: the latents that fired within the last
    ``dead_window`` training samples then (the trainer's own dead counter; all at step 0)."""


def group_members(
    sae_cfgs: list[SAEConfigBase], train_cfg: SAETrainConfig
) -> list[tuple[Any, int]]:
    """(config, init seed) per model index, config-major then seed."""
    if not sae_cfgs:
        raise UserError("sae_cfgs: expected at least one SAE config")
    kinds = {(c.arch, c.d_sae) for c in sae_cfgs}
    if len(kinds) != 1:
        raise UserError(f"sae_cfgs: one group needs one arch and width, got {sorted(kinds)}")
    return [(cfg, int(seed)) for cfg in sae_cfgs for seed in train_cfg.init_seeds]


def init_group(d_in: int, sae_cfgs: list[SAEConfigBase], train_cfg: SAETrainConfig) -> BatchedSAE:
    """The untrained group, each model drawn from a generator seeded by its init seed."""
    members = group_members(sae_cfgs, train_cfg)
    arch = get_architecture(members[0][0].arch)([m[0] for m in members])
    return init_models(arch, d_in, [m[1] for m in members])


class BatchStream:
    """Batch indices of a step: a pure function of (seed, step)."""

    def __init__(self, n_rows: int, batch: int, seed: int) -> None:
        self.n_rows, self.batch, self.seed = n_rows, batch, seed
        self._perms: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
            self._perms[epoch] = torch.randperm(self.n_rows, generator=gen, device="cpu")
        return self._perms[epoch]

    def indices(self, step: int) -> Tensor:
        pos = torch.arange(step * self.batch, (step + 1) * self.batch, device="cpu")
        epoch, within = pos // self.n_rows, pos % self.n_rows
        return torch.cat([self._perm(int(e))[within[epoch == e]] for e in epoch.unique()])


def snapshot_steps(steps: int, n_snapshots: int) -> list[int]:
    """Step 0 plus ``n_snapshots - 1`` log-spaced steps in [1, steps]."""
    if n_snapshots == 0:
        return []
    spaced = torch.logspace(0, math.log10(steps), max(n_snapshots - 1, 1), dtype=torch.float64)
    return sorted({0, *(int(round(s)) for s in spaced.tolist())})


def norm_scale(acts_ND: Tensor) -> float:
    """c with mean ||c x||^2 == d_in (SAELens 'expected_average_only_in')."""
    mean_sq = acts_ND.double().pow(2).sum(-1).mean()
    return float(torch.sqrt(acts_ND.shape[1] / mean_sq))


def train_group(
    acts_ND: Float[Tensor, "n d"],
    sae_cfgs: list[SAEConfigBase],
    train_cfg: SAETrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> GroupResult:
    """Train every (config, seed) model of one arch and width in one batched pass, on
    ``device`` (:func:`husai.devices.resolve_device`; default the CPU)."""
    trainer = _GroupTrainer(acts_ND, sae_cfgs, train_cfg, checkpoint_dir, device)
    return trainer.run(progress)


class _GroupTrainer:
    def __init__(self, acts_ND, sae_cfgs, train_cfg, checkpoint_dir, device=None) -> None:
        if acts_ND.dim() != 2 or acts_ND.shape[0] == 0:
            raise UserError(
                f"activations: expected a non-empty [n, d] tensor, got {tuple(acts_ND.shape)}"
            )
        acts_ND = acts_ND.detach().float().cpu()
        if not bool(torch.isfinite(acts_ND).all()):
            raise UserError("activations: contain NaN or inf values")
        self.cfg = train_cfg
        self.members = group_members(sae_cfgs, train_cfg)
        self.scale = norm_scale(acts_ND) if train_cfg.normalize_activations else 1.0
        self.acts_ND = acts_ND * self.scale if self.scale != 1.0 else acts_ND
        self.device = resolve_device(device)
        self.sae = init_group(acts_ND.shape[1], sae_cfgs, train_cfg).to(self.device)
        for p in self.sae.params.values():
            p.requires_grad_(True)
        self.adam = PerModelAdam(self.sae.params)
        n, s = self.sae.n_models, self.sae.d_sae
        self.since_fired_NS = torch.zeros(n, s, dtype=torch.long, device=self.device)
        self.step = 0
        self.converged: list[int | None] = [None] * n
        self.resampled = [0] * n
        self.windows: list[list[float]] = [[0.0] * n, [0.0] * n]
        self.history: dict[str, list] = {}
        self.snapshots: dict[int, Tensor] = {}
        self.snapshot_alive: dict[int, Tensor] = {}
        self.snap_at = set(snapshot_steps(train_cfg.steps, train_cfg.n_snapshots))
        # the steps that resample: none for architectures that keep latents alive otherwise
        self.resample_at = (
            set(train_cfg.resample_dead_at) if self.sae.arch.resamples_dead else set()
        )
        self.last_ckpt: int | None = None
        seeds = [train_cfg.data_seed + m[1] for m in self.members]
        self.shared = not train_cfg.per_model_data_order
        self.streams = [
            BatchStream(acts_ND.shape[0], train_cfg.batch_size, sd)
            for sd in ([train_cfg.data_seed] if self.shared else seeds)
        ]
        self.ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.fingerprint = self._fingerprint(sae_cfgs)
        self.acts_ND = self.acts_ND.to(self.device)  # after the fingerprint, which reads it
        if self.ckpt_dir is not None and (self.ckpt_dir / CKPT_STATE).is_file():
            self._load_checkpoint()

    def _fingerprint(self, sae_cfgs) -> str:
        blob = json.dumps(
            {
                "cfgs": [c.model_dump(mode="json") for c in sae_cfgs],
                "train": self.cfg.model_dump(mode="json"),
                "acts": sha256_tensors({"acts": self.acts_ND}),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    # ---- main loop -------------------------------------------------------------
    def run(self, progress: bool) -> GroupResult:
        if 0 in self.snap_at and 0 not in self.snapshots:
            self._snapshot()
        with (
            progress_bar(
                "training SAEs",
                self.cfg.steps,
                enabled=progress,
                completed=self.step,
                transient=True,
            ) as bar,
            factory_device(self.device),
        ):
            while self.step < self.cfg.steps and any(c is None for c in self.converged):
                self.train_step()
                self.step += 1
                self._after_step_bookkeeping()
                bar.update(self.step)
        if self.step not in self.snapshots and self.cfg.n_snapshots > 0:
            self._snapshot()
        if self.ckpt_dir is not None and self.last_ckpt != self.step:
            self._save_checkpoint()
        return self._result()

    def _batch(self) -> Tensor:
        if self.shared:
            return self.acts_ND[self.streams[0].indices(self.step)]
        return torch.stack([self.acts_ND[s.indices(self.step)] for s in self.streams])

    def train_step(self) -> None:
        x = self._batch()
        # a shared batch is a stride-0 view over models, also for one model (which expand
        # would give a full stride): kernels tell shared from per-model batches by it
        x_NBD = x.as_strided((self.sae.n_models, *x.shape), (0, *x.stride())) if x.dim() == 2 else x
        dead_NS = self._dead_NS()
        out = self.sae.arch.train_forward(self.sae, x_NBD, dead_NS)
        loss_N = torch.stack(list(out.losses.values())).sum(0)
        self._check_finite(loss_N)
        loss_N.sum().backward()
        active = [c is None for c in self.converged]
        grads = {k: p.grad for k, p in self.sae.params.items()}
        lr = lr_at(self.step, self.cfg)
        with torch.no_grad():
            self.adam.step(self.sae.params, grads, lr, self.step + 1, active)
            if self.sae.arch.normalize_decoder:
                for n in (i for i, a in enumerate(active) if a):
                    W = self.sae.params["W_dec"][n]
                    W.div_(W.norm(dim=-1, keepdim=True))
            self.sae.arch.after_step(self.sae, out, self.step, torch.tensor(active))
        for p in self.sae.params.values():
            p.grad = None
        self.since_fired_NS += x_NBD.shape[1]
        self.since_fired_NS[out.fired_NS] = 0
        self._last = (out, loss_N.detach(), lr)

    def _check_finite(self, loss_N: Tensor) -> None:
        bad = (~torch.isfinite(loss_N.detach())).nonzero().flatten().tolist()
        if not bad:
            return
        cfg, seed = self.members[bad[0]]
        arch = self.sae.arch
        where = (
            f"last checkpoint: step {self.last_ckpt} in {self.ckpt_dir}"
            if self.last_ckpt is not None
            else "no checkpoint was written"
        )
        raise TrainingDivergedError(
            f"SAE training diverged: {arch.name} d_sae={cfg.d_sae} {arch.sparsity_name}="
            f"{arch.sparsity(cfg):g} seed={seed} loss={float(loss_N[bad[0]].detach())} at step "
            f"{self.step} ({len(bad)} of {len(loss_N)} models); lower sae_train.lr or check "
            f"the activations; {where}"
        )

    # ---- bookkeeping -------------------------------------------------------------
    def _after_step_bookkeeping(self) -> None:
        out, loss_N, lr = self._last
        self._track_plateau(loss_N.tolist())
        if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
            self._log(out, loss_N, lr)
        if self.step in self.resample_at:
            self._resample()
        if self.step in self.snap_at:
            self._snapshot()
        if self.ckpt_dir is not None and self.step % self.cfg.checkpoint_every == 0:
            self._save_checkpoint()

    def _snapshot(self) -> None:
        """The decoders now, and which latents are alive now (``GroupResult.snapshot_alive``)."""
        self.snapshots[self.step] = self.sae.W_dec.detach().clone().cpu()
        self.snapshot_alive[self.step] = (~self._dead_NS()).cpu()

    def _dead_NS(self) -> Tensor:
        """``[N, S]``: latents that have not fired within the last ``dead_window`` samples."""
        return self.since_fired_NS >= self.cfg.dead_window

    def _track_plateau(self, losses: list[float]) -> None:
        w = self.cfg.plateau_window
        for n, v in enumerate(losses):
            self.windows[1][n] += v
        if self.step % w != 0:
            return
        prev, cur = self.windows
        # both windows must lie after the last resampling, whose loss spike is no plateau
        after = max((s for s in self.resample_at if s < self.step), default=0)
        if (
            self.cfg.plateau_tol > 0
            and self.step >= after + 2 * w
            and self.step > self.cfg.warmup_steps
        ):
            for n in range(len(cur)):
                improvement = (prev[n] - cur[n]) / max(abs(prev[n]), 1e-30)
                if self.converged[n] is None and improvement < self.cfg.plateau_tol:
                    self.converged[n] = self.step
        self.windows = [cur, [0.0] * len(cur)]

    def _resample(self) -> None:
        """Resample the dead latents of the models still training (``husai.saes.resample``)."""
        dead_NS = self._dead_NS()
        models = [n for n, c in enumerate(self.converged) if c is None]
        seeds = [resample_seed(self.cfg.data_seed, seed, self.step) for _, seed in self.members]
        counts = resample_dead(self.sae, self.adam, self.acts_ND, dead_NS, models, seeds)
        for n in models:
            self.since_fired_NS[n][dead_NS[n]] = 0
        self.resampled = [a + b for a, b in zip(self.resampled, counts, strict=True)]
        log.debug("step %d resampled %s dead latents", self.step, counts)

    def _log(self, out, loss_N: Tensor, lr: float) -> None:
        dead_NS = self._dead_NS()
        row = {
            "step": self.step,
            "lr": lr,
            "loss": loss_N.tolist(),
            "l0": out.l0_N.tolist(),
            "dead_fraction": dead_NS.float().mean(-1).tolist(),
            **{f"loss_{k}": v.detach().tolist() for k, v in out.losses.items()},
        }
        if self.resample_at:
            row["resampled"] = list(self.resampled)  # cumulative, per model
        for k, v in row.items():
            self.history.setdefault(k, []).append(v)
        log.debug("step %d loss %s", self.step, row["loss"])

    def _result(self) -> GroupResult:
        sae = BatchedSAE(
            self.sae.arch,
            {k: v.detach().clone().cpu() for k, v in self.sae.params.items()},
            {k: v.clone().cpu() for k, v in self.sae.buffers.items()},
        )
        fold_scale(sae, self.scale)
        return GroupResult(
            sae=sae,
            members=self.members,
            snapshots={s: w.cpu() for s, w in sorted(self.snapshots.items())},
            steps=self.step,
            converged_step=list(self.converged),
            history=self.history,
            norm_scale=self.scale,
            train_cfg=self.cfg,
            snapshot_alive={s: a.cpu() for s, a in sorted(self.snapshot_alive.items())},
        )

    # ---- checkpoints -------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        assert self.ckpt_dir is not None
        tensors = {f"param.{k}": v.detach() for k, v in self.sae.params.items()}
        tensors |= {f"buffer.{k}": v for k, v in self.sae.buffers.items()}
        tensors |= {f"adam.{k}": v for k, v in self.adam.state_tensors().items()}
        tensors |= {f"snap.{s}": v for s, v in self.snapshots.items()}
        tensors |= {f"alive.{s}": v for s, v in self.snapshot_alive.items()}
        tensors["since_fired"] = self.since_fired_NS
        atomic_save_safetensors(self.ckpt_dir / CKPT_TENSORS, tensors)
        state = {
            "fingerprint": self.fingerprint,
            "step": self.step,
            "converged": self.converged,
            "resampled": self.resampled,
            "windows": self.windows,
            "history": self.history,
            "tensors_sha256": sha256_tensors(tensors),
        }
        atomic_write_json(self.ckpt_dir / CKPT_STATE, state)
        self.last_ckpt = self.step

    def _load_checkpoint(self) -> None:
        from husai.io import load_safetensors

        assert self.ckpt_dir is not None
        state = json.loads((self.ckpt_dir / CKPT_STATE).read_text())
        if state["fingerprint"] != self.fingerprint:
            raise UserError(
                f"{self.ckpt_dir}: holds a checkpoint of other configs or activations; "
                "use a fresh checkpoint directory"
            )
        tensors = load_safetensors(self.ckpt_dir / CKPT_TENSORS)
        if sha256_tensors(tensors) != state["tensors_sha256"]:
            raise UserError(f"{self.ckpt_dir}: checkpoint tensors do not match checkpoint.json")
        with torch.no_grad():
            for k, p in self.sae.params.items():
                p.copy_(tensors[f"param.{k}"])
            for k, b in self.sae.buffers.items():
                b.copy_(tensors[f"buffer.{k}"])
        self.adam.load_state_tensors(
            {k[5:]: v for k, v in tensors.items() if k.startswith("adam.")}
        )
        self.snapshots = {int(k[5:]): v for k, v in tensors.items() if k.startswith("snap.")}
        self.snapshot_alive = {  # absent from checkpoints of older versions: no alive rows
            int(k[6:]): v for k, v in tensors.items() if k.startswith("alive.")
        }
        self.since_fired_NS = tensors["since_fired"].to(self.device)
        self.step, self.converged = state["step"], state["converged"]
        self.resampled = state.get("resampled", self.resampled)
        self.windows, self.history = state["windows"], state["history"]
        self.last_ckpt = self.step
        log.info("resumed SAE group from %s at step %d", self.ckpt_dir, self.step)


@torch.no_grad()
def fold_scale(sae: BatchedSAE, scale: float) -> None:
    """Make an SAE trained on ``scale * x`` act on raw x (decoder and encoder unchanged)."""
    if scale == 1.0:
        return
    sae.params["b_enc"].div_(scale)
    sae.params["b_dec"].div_(scale)
    if sae.threshold is not None:
        sae.threshold.div_(scale)
