"""The grokked transformer: build, train, load, Fourier analysis, splicing.

Submodules:

- ``build``: config -> HookedTransformer, and the fast final-position forward;
- ``train``: full-batch AdamW training (``husai train-model``);
- ``store``: the run directory, checkpoints and :func:`load_model`;
- ``fourier``: Fourier maths and ground-truth planes (torch only: no TransformerLens);
- ``analysis``: fourier.json for a run (key frequencies, Gini, progress measures);
- ``splice``: loss with an activation replaced (e.g. by an SAE reconstruction).

Exports are resolved lazily, so ``import husai.model.fourier`` (used by ``husai.metrics``)
never imports TransformerLens.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "husai.model.build",
    "final_logits": "husai.model.build",
    "train_model": "husai.model.train",
    "load_model": "husai.model.store",
    "load_run_config": "husai.model.store",
    "model_sha256": "husai.model.store",
    "FourierPlanes": "husai.model.fourier",
    "fit_planes": "husai.model.fourier",
    "loss_with_replacement": "husai.model.splice",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'husai.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
