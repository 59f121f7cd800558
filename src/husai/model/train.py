"""Full-batch AdamW training of the modular-arithmetic transformer (``husai train-model``).

One step reads every training pair at once (full batch), computes the cross-entropy at
the final position in float64 (as Nanda et al. 2023 do, against loss spikes) and takes an
AdamW step with a short linear warmup. Biases can be frozen at zero as in Nanda's code.
Init is seeded by ``model.seed`` and the split by ``task.data_seed``; nothing else is
random, so the same config on the same CPU thread count gives the same bits.

By default the step uses :func:`husai.model.build.final_logits`, the final-position
forward over the HookedTransformer's own parameters (same logits, a fraction of the
FLOPs). Train/test loss and accuracy are evaluated every ``log_every`` steps, shown in a
rich progress bar and logged to W&B (offline by default, imported lazily). Checkpoints
are written at log-spaced steps. A non-finite loss stops training with
:class:`TrainingDivergedError` after saving the last good parameters as a checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import HookedTransformer

from husai.config import ExperimentConfig
from husai.devices import on_cpu, resolve_device
from husai.errors import TrainingDivergedError, UserError
from husai.io import atomic_write_json, sha256_file
from husai.model.build import build_model, final_logits
from husai.model.store import checkpoint_file, config_fingerprint, load_run_config, save_weights
from husai.progress import progress_bar
from husai.tasks import ModularDataset, make_dataset

log = logging.getLogger(__name__)
CURVE_KEYS = ("step", "train_loss", "test_loss", "train_acc", "test_acc", "wall_s")


def checkpoint_steps(steps: int, n_checkpoints: int) -> list[int]:
    """Step 0 plus ``n_checkpoints - 1`` log-spaced steps in [1, steps] (always ``steps``)."""
    if n_checkpoints <= 1:
        return [steps]
    grid = np.geomspace(1, steps, n_checkpoints - 1) if steps > 1 else np.array([1.0])
    return sorted({0, *(int(round(s)) for s in grid), steps})


@dataclass
class _State:
    curves: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in CURVE_KEYS})
    held_since: int | None = None
    t0: float = field(default_factory=time.perf_counter)
    last_good: dict[str, Tensor] | None = None


class _Tracker:
    """W&B run (imported lazily); a no-op when tracking is disabled."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path) -> None:
        self.run: Any = None
        if cfg.tracking.mode == "disabled":
            return
        import wandb

        self.run = wandb.init(
            project=cfg.tracking.project,
            name=f"{cfg.name}-model",
            mode=cfg.tracking.mode,
            dir=str(run_dir),
            config=cfg.model_dump(mode="json"),
            reinit=True,
        )

    def log(self, row: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(row, step=int(row["step"]))

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish()


def train_model(cfg: ExperimentConfig, out_parent: Path, *, progress: bool = True) -> Path:
    """Train ``cfg``'s transformer into ``out_parent/<cfg.name>`` and return that run dir.

    A run dir that already holds a finished run of the same task/model/train config is
    returned as is; one holding a different config is a :class:`UserError`.
    """
    run_dir = Path(out_parent) / cfg.name
    if _finished(run_dir, cfg):
        log.info("model run %s already finished with this config; skipping", run_dir)
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(run_dir / "config.yaml")
    data = make_dataset(cfg.task)
    model = build_model(cfg.task, cfg.model)  # seeded on the CPU, then moved
    device = resolve_device(cfg.device)
    if not on_cpu(device):
        model = model.to(str(device), print_details=False)  # keeps cuda:N in cfg.device
    trained = _freeze(model, cfg.train.freeze_biases)
    trainer = _Trainer(cfg, model, trained, _on(data, device), run_dir)
    steps_done = trainer.run(progress)
    wall_s = time.perf_counter() - trainer.state.t0
    if not on_cpu(device):
        model = model.to("cpu", print_details=False)
    save_weights(run_dir / "model.safetensors", model, cfg)
    _write_results(cfg, model, data, run_dir, trainer.state, steps_done, wall_s)
    return run_dir


def _on(data: ModularDataset, device: torch.device) -> ModularDataset:
    """The dataset's tensors on ``device`` (itself on the CPU)."""
    if on_cpu(device):
        return data
    moved = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    return dataclasses.replace(
        data, **{k: v.to(device) for k, v in moved.items() if torch.is_tensor(v)}
    )


def _finished(run_dir: Path, cfg: ExperimentConfig) -> bool:
    if not (run_dir / "config.yaml").is_file():
        return False
    old = load_run_config(run_dir)
    if config_fingerprint(old) != config_fingerprint(cfg):
        raise UserError(
            f"{run_dir}: holds a model trained with another config; pick another name or --out"
        )
    return (run_dir / "metrics.json").is_file() and (run_dir / "model.safetensors").is_file()


def _freeze(model: HookedTransformer, freeze_biases: bool) -> list[torch.nn.Parameter]:
    """Zero and freeze every ``b_*`` bias if asked (as in Nanda's code); return trained params."""
    trained = []
    for name, param in model.named_parameters():
        if freeze_biases and name.split(".")[-1].startswith("b_"):
            with torch.no_grad():
                param.zero_()
            param.requires_grad_(False)
        else:
            trained.append(param)
    return trained


def _forward(model: HookedTransformer, tokens: Tensor, fast: bool) -> Tensor:
    return final_logits(model, tokens) if fast else model(tokens)[:, -1]


def _loss_acc(logits: Tensor, labels: Tensor) -> tuple[Tensor, float]:
    loss = F.cross_entropy(logits.double(), labels)
    return loss, (logits.argmax(-1) == labels).float().mean().item()


class _Trainer:
    """The loop's parts: a full-batch step, evaluation/logging, checkpoints, divergence."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: HookedTransformer,
        trained: list[torch.nn.Parameter],
        data: ModularDataset,
        run_dir: Path,
    ) -> None:
        tc = cfg.train
        self.cfg, self.model, self.data, self.run_dir = cfg, model, data, run_dir
        self.opt = torch.optim.AdamW(
            trained, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay
        )
        warm = max(tc.warmup_steps, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min((s + 1) / warm, 1.0))
        self.ckpts = set(checkpoint_steps(tc.steps, tc.n_checkpoints))
        self.state, self.tracker = _State(), _Tracker(cfg, run_dir)

    def run(self, progress: bool) -> int:
        """Train until ``train.steps`` or early stop; return the number of steps taken."""
        tc = self.cfg.train
        x_tr, y_tr = self.data.train
        with progress_bar("train-model", tc.steps, enabled=progress) as bar:
            for step in range(tc.steps + 1):
                loss, acc = _loss_acc(_forward(self.model, x_tr, tc.fast_forward), y_tr)
                _check_finite(loss, step, self.run_dir, self.model, self.cfg, self.state)
                if step in self.ckpts:
                    self.checkpoint(step)
                if step % tc.log_every == 0 or step == tc.steps:
                    row = self.log(step, loss.item(), acc)
                    bar.update(step, f"train acc {acc:.3f}  test acc {row['test_acc']:.3f}")
                    if _should_stop(self.state, row, self.cfg):
                        self.checkpoint(step)
                        break
                if step == tc.steps:
                    break
                self.update(loss)
        self.tracker.finish({k: v[-1] for k, v in self.state.curves.items()})
        return step

    def update(self, loss: Tensor) -> None:
        self.state.last_good = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()

    def log(self, step: int, loss: float, acc: float) -> dict[str, float]:
        row = _evaluate(self.model, self.data, self.cfg.train.fast_forward, step, loss, acc)
        row["wall_s"] = round(time.perf_counter() - self.state.t0, 3)
        for k in CURVE_KEYS:
            self.state.curves[k].append(row[k])
        self.tracker.log(row)
        return row

    def checkpoint(self, step: int) -> None:
        save_weights(checkpoint_file(self.run_dir, step), self.model, self.cfg)


@torch.no_grad()
def _evaluate(
    model: HookedTransformer, data: ModularDataset, fast: bool, step: int, loss: float, acc: float
) -> dict[str, float]:
    x_te, y_te = data.test
    te_loss, te_acc = _loss_acc(_forward(model, x_te, fast), y_te)
    return {
        "step": step,
        "train_loss": loss,
        "test_loss": te_loss.item(),
        "train_acc": acc,
        "test_acc": te_acc,
    }


def _should_stop(state: _State, row: dict[str, float], cfg: ExperimentConfig) -> bool:
    target = cfg.train.early_stop_acc
    if target is None:
        return False
    if row["test_acc"] < target:
        state.held_since = None
        return False
    if state.held_since is None:
        state.held_since = int(row["step"])
    return row["step"] - state.held_since >= cfg.train.early_stop_patience


def _check_finite(
    loss: Tensor,
    step: int,
    run_dir: Path,
    model: HookedTransformer,
    cfg: ExperimentConfig,
    state: _State,
) -> None:
    if torch.isfinite(loss):
        return
    kept = "none (diverged at the first step)"
    if state.last_good is not None:
        model.load_state_dict(state.last_good)
        path = checkpoint_file(run_dir, step - 1)
        save_weights(path, model, cfg)
        kept = str(path)
    atomic_write_json(run_dir / "curves.json", state.curves)
    raise TrainingDivergedError(
        f"training diverged: train loss is {loss.item()} at step {step}; last good checkpoint: {kept}"
    )


def grok_step(curves: dict[str, list[float]], target: float = 0.99) -> int | None:
    """First logged step with test accuracy >= ``target`` (None if never)."""
    return next(
        (int(s) for s, a in zip(curves["step"], curves["test_acc"], strict=True) if a >= target),
        None,
    )


def _wall_at(curves: dict[str, list[float]], step: int | None) -> float | None:
    return None if step is None else curves["wall_s"][curves["step"].index(step)]


def _write_results(
    cfg: ExperimentConfig,
    model: HookedTransformer,
    data: ModularDataset,
    run_dir: Path,
    state: _State,
    steps_done: int,
    wall_s: float,
) -> None:
    from husai.model.analysis import write_fourier_json

    curves = state.curves
    atomic_write_json(run_dir / "curves.json", curves)
    write_fourier_json(run_dir, model, data)
    metrics = {k: curves[k][-1] for k in CURVE_KEYS if k not in ("step", "wall_s")}
    metrics.update(
        steps=steps_done,
        wall_s=round(wall_s, 3),
        model_sha256=sha256_file(run_dir / "model.safetensors"),
        grok_step=grok_step(curves),
        grok_wall_s=_wall_at(curves, grok_step(curves)),
        torch_threads=torch.get_num_threads(),
        torch_version=torch.__version__,
    )
    atomic_write_json(run_dir / "metrics.json", metrics)
    log.info("model run %s: test acc %.4f after %d steps", run_dir, metrics["test_acc"], steps_done)
