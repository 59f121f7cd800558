"""HUSAI: are sparse-autoencoder features stable across seeds?

The public entry points are re-exported lazily, so ``import husai`` stays light and
``husai.saes`` / ``husai.metrics`` never pull in TransformerLens, SAELens, W&B or Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ExperimentConfig": "husai.config",
    "StudyConfig": "husai.config",
    "create_dataloaders": "husai.tasks",
    "load_model": "husai.model",
    "train_model": "husai.model",
    "load_activations": "husai.activations",
    "train_group": "husai.saes",
    "load_sae": "husai.saes",
    "save_sae": "husai.saes",
    "pw_mcc": "husai.metrics",
    "stability_pair": "husai.metrics",
    "run_study": "husai.experiments",
    "build_report": "husai.report",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'husai' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
