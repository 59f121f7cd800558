"""Activations of the trained transformer at hook points, with ground-truth Fourier planes.

``husai extract`` runs the model on all inputs of its task (p^2 pairs for addition, in
row-major (a, b) order) and keeps one position of each requested hook (the final one by
default). Each hook gets its own directory (docs/ARCHITECTURE.md)::

    acts.safetensors    {"acts": float32 [N, d]}   (trailing dims such as heads flattened)
    inputs.safetensors  {"pairs": int64 [N, 2], "train_mask": bool [N]}
    planes.safetensors  ground-truth planes (:class:`husai.model.fourier.FourierPlanes`)
    meta.json           hook, position, model checksum, key frequencies, R^2 summaries

The planes are fitted on the activations themselves (regression on Fourier functions of
the task group's variables: a, b, a+b, a-b for add and sub, the discrete logs of a, b, ab,
a/b for mul; :func:`husai.model.fourier.task_group`), with the key frequencies read from
the run's ``fourier.json``. A task without a ground truth (div) is a one-line UserError. Loading
validates shapes, dtypes and, if given, the model checksum, so SAEs are never trained on
activations of a different model by accident. A directory already holding the same hook,
position and model checksum is reused.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from husai.devices import on_cpu, resolve_device
from husai.errors import UserError
from husai.io import atomic_save_safetensors, atomic_write_json, load_safetensors
from husai.model.fourier import FourierGroup, FourierPlanes, effective_rank, fit_planes, task_group

log = logging.getLogger(__name__)
INPUT_ORDER = "row-major (a, b)"
_QUERY_DIM_HOOKS = ("hook_pattern", "hook_attn_scores")


@dataclass(frozen=True)
class Activations:
    """One hook's activations over every input, with inputs, split and ground truth."""

    acts: Float[Tensor, "n d"]
    pairs: Int[Tensor, "n 2"]
    train_mask: Bool[Tensor, " n"]
    meta: dict[str, Any]
    planes: FourierPlanes | None


def hook_slug(hook: str, position: int = -1) -> str:
    """Directory name for a hook (and a non-default position)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", hook)
    return slug if position == -1 else f"{slug}_pos{position}"


def extract(
    model: Any,
    tokens: Int[Tensor, "n pos"],
    hooks: list[str],
    position: int = -1,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Activations [n, d] (float32, on the CPU) at ``position`` of each hook, the forward
    passes on ``device`` (the model is moved there); bad hooks/positions -> UserError."""
    from husai.model.splice import check_hook

    for hook in hooks:
        check_hook(model, hook)
    n_ctx = tokens.shape[1]
    if not -n_ctx <= position < n_ctx:
        raise UserError(f"position: expected an integer in [-{n_ctx}, {n_ctx - 1}], got {position}")
    chunks: dict[str, list[Tensor]] = {h: [] for h in hooks}
    dev = resolve_device(device)
    if not on_cpu(dev):
        model = model.to(str(dev), print_details=False)  # a string keeps cuda:N in cfg.device
    with torch.no_grad():
        for batch in tokens.split(4096):
            _, cache = model.run_with_cache(batch.to(dev), names_filter=lambda n: n in chunks)
            for hook in hooks:
                chunks[hook].append(_select(cache[hook], hook, position).cpu())
    return {h: torch.cat(c).float().contiguous() for h, c in chunks.items()}


def _select(act: Tensor, hook: str, position: int) -> Tensor:
    pos_dim = 2 if hook.endswith(_QUERY_DIM_HOOKS) else 1
    return act.select(pos_dim, position).reshape(act.shape[0], -1)


def extract_to_dirs(
    model_dir: Path,
    hooks: list[str],
    out_parent: Path,
    position: int = -1,
    checkpoint: str = "final",
    device: str | torch.device | None = None,
) -> list[Path]:
    """Write one activation dir per hook under ``out_parent``; return their paths. The
    forward passes run on ``device``; planes are fitted on the CPU."""
    from husai.model.analysis import weight_fourier
    from husai.model.store import load_model, load_run_config, model_sha256
    from husai.tasks import make_dataset

    cfg = load_run_config(model_dir)
    group = task_group(cfg.task.op, cfg.task.modulus)
    model, sha = load_model(model_dir, checkpoint), model_sha256(model_dir, checkpoint)
    data = make_dataset(cfg.task)
    fourier_json = Path(model_dir) / "fourier.json"
    if checkpoint == "final" and fourier_json.is_file():
        key_freqs = json.loads(fourier_json.read_text())["key_freqs"]
    else:
        key_freqs = weight_fourier(model, cfg.task.modulus, cfg.task.op)["key_freqs"]
    todo = [h for h in hooks if not _is_current(Path(out_parent) / hook_slug(h, position), sha)]
    acts = extract(model, data.tokens, todo, position, device) if todo else {}
    for hook, acts_ND in acts.items():
        planes = fit_planes(acts_ND, data.pairs, cfg.task.modulus, key_freqs, group=group)
        meta = _meta(hook, position, sha, checkpoint, cfg.task, acts_ND, planes)
        if cfg.task.op != "add":  # add's meta.json keeps its original keys
            meta.update(_group_meta(group, planes))
        _write_dir(Path(out_parent) / hook_slug(hook, position), acts_ND, data, planes, meta)
        log.info("%s: key-plane R^2 %.3f", hook, meta["key_r2_total"])
    return [Path(out_parent) / hook_slug(h, position) for h in hooks]


def _is_current(acts_dir: Path, sha: str) -> bool:
    meta = acts_dir / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("model_sha256") == sha


def _meta(
    hook: str,
    position: int,
    sha: str,
    checkpoint: str,
    task: Any,
    acts_ND: Tensor,
    planes: FourierPlanes,
) -> dict[str, Any]:
    return {
        "hook": hook,
        "position": position,
        "checkpoint": checkpoint,
        "model_sha256": sha,
        "modulus": task.modulus,
        "op": task.op,
        "d": acts_ND.shape[1],
        "n_inputs": acts_ND.shape[0],
        "input_order": INPUT_ORDER,
        "effective_rank": effective_rank(acts_ND),
        "plane_variables": planes.variable,
        "key_freqs": planes.key_freqs,
        "key_r2_total": planes.key_r2_total,
        "r2_total_all_planes": float(planes.r2.sum()),
        "r2_by_variable": planes.r2_by_variable(key_only=True),
        "summary": planes_summary(planes),
    }


def _group_meta(group: FourierGroup, planes: FourierPlanes) -> dict[str, Any]:
    """The ground-truth group and the share of variance in the answer's key planes."""
    answer = planes.r2_by_variable(key_only=True).get(group.answer, 0.0)
    return {"group": group.info(), "answer_variable": group.answer, "key_r2_answer": answer}


def _write_dir(
    acts_dir: Path, acts_ND: Tensor, data: Any, planes: FourierPlanes, meta: dict[str, Any]
) -> None:
    atomic_save_safetensors(acts_dir / "acts.safetensors", {"acts": acts_ND})
    atomic_save_safetensors(
        acts_dir / "inputs.safetensors", {"pairs": data.pairs.long(), "train_mask": data.train_mask}
    )
    atomic_save_safetensors(acts_dir / "planes.safetensors", planes.to_tensors())
    atomic_write_json(acts_dir / "meta.json", meta)


def load_activations(acts_dir: Path, expected_model_sha256: str | None = None) -> Activations:
    """Load and validate an activation dir (shapes, dtypes, model checksum)."""
    acts_dir = Path(acts_dir)
    if not (acts_dir / "meta.json").is_file():
        raise UserError(f"{acts_dir}: not an activation dir (no meta.json)")
    meta = json.loads((acts_dir / "meta.json").read_text())
    if expected_model_sha256 is not None and meta.get("model_sha256") != expected_model_sha256:
        raise UserError(
            f"{acts_dir}: activations come from model {meta.get('model_sha256')}, expected {expected_model_sha256}"
        )
    acts = load_safetensors(acts_dir / "acts.safetensors")["acts"]
    inputs = load_safetensors(acts_dir / "inputs.safetensors")
    n, d = meta["n_inputs"], meta["d"]
    _expect(acts_dir, "acts", acts, (n, d), torch.float32)
    _expect(acts_dir, "pairs", inputs["pairs"], (n, 2), torch.int64)
    _expect(acts_dir, "train_mask", inputs["train_mask"], (n,), torch.bool)
    planes = None
    if (acts_dir / "planes.safetensors").is_file():
        planes = FourierPlanes.from_tensors(
            load_safetensors(acts_dir / "planes.safetensors"), meta["plane_variables"]
        )
        _expect(
            acts_dir,
            "planes.basis",
            planes.basis,
            (len(meta["plane_variables"]), 2, d),
            torch.float32,
        )
    return Activations(acts, inputs["pairs"], inputs["train_mask"], meta, planes)


def _expect(
    acts_dir: Path, name: str, t: Tensor, shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    if tuple(t.shape) != shape or t.dtype != dtype:
        raise UserError(
            f"{acts_dir}: {name} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}"
        )


def planes_summary(planes: FourierPlanes) -> dict[str, Any]:
    """Key-plane R^2 in total, per variable, per key frequency, and without the a-b planes
    (for mul, the a/b planes: the difference of the logs)."""
    key = planes.is_key
    no_amb = key & torch.tensor([v not in ("a-b", "a/b") for v in planes.variable])
    return {
        "key_freqs": planes.key_freqs,
        "key_r2_total": planes.key_r2_total,
        "key_r2_without_a_minus_b": float(planes.r2[no_amb].sum()),
        "all_planes_r2_total": float(planes.r2.sum()),
        "r2_by_variable": planes.r2_by_variable(key_only=True),
        "r2_by_key_freq": {
            str(k): float(planes.r2[key & (planes.freq == k)].sum()) for k in planes.key_freqs
        },
        "frequency_span_dims": {
            str(k): int(planes.frequency_basis(k).shape[0]) for k in planes.key_freqs
        },
    }
