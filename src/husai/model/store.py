"""The model run directory: checkpoints, their config fingerprint, and loading.

Layout (docs/ARCHITECTURE.md)::

    <run_dir>/config.yaml                      resolved ExperimentConfig
    <run_dir>/model.safetensors                final HookedTransformer state_dict
    <run_dir>/checkpoints/step_000123.safetensors
    <run_dir>/curves.json, fourier.json, metrics.json

Every weights file carries the task, model and train configs as JSON in its safetensors
metadata (``husai_config``). Loading compares that fingerprint with the run dir's
``config.yaml``, so a checkpoint copied from another run is refused with one clear line
instead of loading silently into the wrong architecture. The final weights and the last
checkpoint are byte-identical files (git stores them once).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformer_lens import HookedTransformer

from husai.config import ExperimentConfig, load_config
from husai.errors import UserError
from husai.io import atomic_save_safetensors, sha256_file
from husai.model.build import build_model

CONFIG_KEY = "husai_config"
_STEP_RE = re.compile(r"^step_(\d+)$")


def config_fingerprint(cfg: ExperimentConfig) -> str:
    """Canonical JSON of what determines the weights: task, model and train configs."""
    parts = {k: getattr(cfg, k).model_dump(mode="json") for k in ("task", "model", "train")}
    return json.dumps(parts, sort_keys=True, separators=(",", ":"))


def checkpoint_file(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}.safetensors"


def save_weights(path: Path, model: HookedTransformer, cfg: ExperimentConfig) -> None:
    """Write the state_dict (float32) with the config fingerprint in the metadata."""
    state = {k: v.detach().float() for k, v in model.state_dict().items() if v.is_floating_point()}
    state.update({k: v for k, v in model.state_dict().items() if not v.is_floating_point()})
    atomic_save_safetensors(path, state, metadata={CONFIG_KEY: config_fingerprint(cfg)})


def load_run_config(run_dir: Path) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a model run dir (no config.yaml)")
    return load_config(ExperimentConfig, path)


def list_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the saved checkpoints, ascending."""
    folder = Path(run_dir) / "checkpoints"
    stems = (p.name.removesuffix(".safetensors") for p in folder.glob("step_*.safetensors"))
    return sorted(int(m.group(1)) for s in stems if (m := _STEP_RE.match(s)))


def weights_path(run_dir: Path, checkpoint: str = "final") -> Path:
    """``final`` -> model.safetensors, ``step_<n>`` -> that checkpoint; else a UserError."""
    run_dir = Path(run_dir)
    if checkpoint == "final":
        path = run_dir / "model.safetensors"
    elif m := _STEP_RE.match(checkpoint):
        path = checkpoint_file(run_dir, int(m.group(1)))
    else:
        raise UserError(f"checkpoint: expected 'final' or 'step_<n>', got {checkpoint!r}")
    if not path.is_file():
        have = ", ".join(f"step_{s}" for s in list_checkpoints(run_dir)) or "none"
        raise UserError(f"{path}: no such checkpoint (checkpoints: {have})")
    return path


def load_model(run_dir: Path, checkpoint: str = "final") -> HookedTransformer:
    """The trained transformer of ``run_dir`` as a plain HookedTransformer (eval mode)."""
    cfg = load_run_config(run_dir)
    path = weights_path(run_dir, checkpoint)
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get(CONFIG_KEY)
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({err})") from None
    if stored is not None and stored != config_fingerprint(cfg):
        raise UserError(
            f"{path}: checkpoint was written by another config than {run_dir}/config.yaml ({_first_diff(stored, config_fingerprint(cfg))})"
        )
    model = build_model(cfg.task, cfg.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(f"{path}: weights do not fit the model in {run_dir}/config.yaml") from None
    return model.eval()


def model_sha256(run_dir: Path, checkpoint: str = "final") -> str:
    return sha256_file(weights_path(run_dir, checkpoint))


def _first_diff(a_json: str, b_json: str) -> str:
    """'<section.field>: <a> != <b>' for the first differing field of two fingerprints."""
    a, b = json.loads(a_json), json.loads(b_json)
    for sec in sorted(set(a) | set(b)):
        sa, sb = a.get(sec, {}), b.get(sec, {})
        for key in sorted(set(sa) | set(sb)):
            if sa.get(key) != sb.get(key):
                return f"{sec}.{key}: checkpoint {sa.get(key)!r}, config {sb.get(key)!r}"
    return "metadata differs"
