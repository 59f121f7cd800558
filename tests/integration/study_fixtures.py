"""A tiny study (p = 17, tiny transformer and SAEs) that runs the real pipeline in seconds."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY = {
    "name": "tiny",
    "transformer_run": None,
    "task": {"modulus": 17, "train_fraction": 0.5, "data_seed": 1},
    "model": {"d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64, "seed": 3},
    "train": {"steps": 30, "lr": 0.003, "n_checkpoints": 3, "log_every": 10},
    "sae_train": {
        "init_seeds": [0, 1, 2],
        "steps": 40,
        "batch_size": 64,
        "n_snapshots": 3,
        "warmup_steps": 5,
        "dead_window": 500,
    },
    "grid": {
        "archs": ["topk", "relu"],
        "widths": [16],
        "k": [2, 4],
        "l1_coefficient": [0.001, 0.01],
        "hooks": ["blocks.0.hook_resid_post"],
    },
    "metrics": {"baseline_trials": 2, "bootstrap": 50, "loss_recovered": True},
    "tracking": {"mode": "disabled"},
}


def write_study(path: Path, **changes: object) -> Path:
    """Write the tiny study (with top-level ``changes``) to ``path``."""
    cfg = {**TINY, **changes}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
