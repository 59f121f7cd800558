"""Entry point of ``husai train-saes``: one batched group from an ExperimentConfig.

:func:`train_saes_from_config` trains ``cfg.sae`` for every seed in
``cfg.sae_train.init_seeds`` on one activation directory and writes, under
``out_parent``, one SAELens-format directory per SAE (with ``eval.json``), named
``<group_name>_<sae_id>`` (e.g. ``topk_w512_k16-seed0``: the study's SAE id of
:func:`husai.layout.sae_id` behind the group, since several groups may share
``out_parent``; saved by :func:`husai.saes.io.save_member`, as study units are), plus
``group_<id>.json`` (members, steps, convergence, history) and
``snapshots_<id>.safetensors`` (W_dec [N, d_sae, d_in] per snapshot step). A
checkpoint directory ``.checkpoint_<id>`` makes an interrupted run resumable.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from husai.config import ExperimentConfig
from husai.errors import UserError
from husai.io import atomic_save_safetensors, atomic_write_json, load_safetensors
from husai.saes.evaluate import evaluate
from husai.saes.io import save_member
from husai.saes.trainer import GroupResult, train_group

log = logging.getLogger(__name__)


def read_activations(activations_dir: Path) -> tuple[Tensor, dict[str, Any]]:
    """acts [N, d] and meta of an activation dir (via husai.activations when it loads)."""
    activations_dir = Path(activations_dir)
    if (activations_dir / "meta.json").is_file():
        from husai.activations import load_activations

        loaded = load_activations(activations_dir)
        return loaded.acts, dict(loaded.meta)
    path = activations_dir / "acts.safetensors"
    if not path.is_file():
        raise UserError(f"{activations_dir}: not an activation dir (acts.safetensors missing)")
    acts = load_safetensors(path).get("acts")
    if acts is None or acts.dim() != 2:
        raise UserError(f"{path}: expected a tensor 'acts' of shape [n, d]")
    return acts.float(), {}


def group_name(cfg: Any) -> str:
    """The group's tag in ``out_parent``: ``<arch>_w<d_sae>`` (e.g. ``topk_w512``)."""
    return f"{cfg.arch}_w{cfg.d_sae}"


def train_saes_from_config(
    cfg: ExperimentConfig, activations_dir: Path, out_parent: Path
) -> list[Path]:
    """Train one batched group (cfg.sae x cfg.sae_train.init_seeds); return the SAE dirs."""
    acts_ND, meta = read_activations(activations_dir)
    out_parent = Path(out_parent)
    gid = group_name(cfg.sae)
    group = train_group(
        acts_ND,
        [cfg.sae],
        cfg.sae_train,
        checkpoint_dir=out_parent / f".checkpoint_{gid}",
        device=cfg.device,
    )
    source = {
        "hook_name": meta.get("hook", cfg.hook),
        "model_name": cfg.name,
        "context_size": cfg.task.n_ctx,
    }
    extra = {
        "experiment": cfg.name,
        "activations_dir": str(activations_dir),
        "model_sha256": meta.get("model_sha256"),
        "checkpoint": meta.get("checkpoint"),
    }
    dirs = []
    for i in range(group.sae.n_models):
        path = save_member(out_parent, group, i, **source, extra=extra, group_tag=gid)
        metrics = evaluate(group.sae, acts_ND, index=i)
        alive = metrics.pop("alive_mask")
        metrics |= {
            "n_alive": int(alive.sum()),
            "alive_mask": alive.tolist(),
            "n_inputs": len(acts_ND),
        }
        atomic_write_json(path / "eval.json", metrics)
        dirs.append(path)
        log.info("saved %s (EV %.3f, L0 %.1f)", path, metrics["explained_variance"], metrics["l0"])
    write_group_files(out_parent, gid, group, [p.name for p in dirs])
    return dirs


def write_group_files(out_parent: Path, gid: str, group: GroupResult, names: list[str]) -> None:
    """group_<id>.json and snapshots_<id>.safetensors for the training-dynamics analysis."""
    snaps = {f"step_{s}": w for s, w in group.snapshots.items()}
    if snaps:
        atomic_save_safetensors(out_parent / f"snapshots_{gid}.safetensors", snaps)
    atomic_write_json(
        out_parent / f"group_{gid}.json",
        {
            "sae_dirs": names,
            "init_seeds": [m[1] for m in group.members],
            "steps": group.steps,
            "converged_step": group.converged_step,
            "norm_scale": group.norm_scale,
            "snapshot_steps": sorted(group.snapshots),
            "history": group.history,
            "train_config": group.train_cfg.model_dump(mode="json") if group.train_cfg else None,
        },
    )


def stack_snapshots(path: Path) -> dict[int, Tensor]:
    """Read snapshots_<id>.safetensors back as {step: W_dec [N, d_sae, d_in]}."""
    return {
        int(k[5:]): v
        for k, v in sorted(load_safetensors(path).items(), key=lambda kv: int(kv[0][5:]))
    }


__all__ = ["read_activations", "stack_snapshots", "train_saes_from_config"]
