"""The default recipe really groks p = 113 addition (slow: a few minutes on a busy CPU)."""

import json
from pathlib import Path

import pytest

from husai.config import ExperimentConfig
from husai.model import train_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_default_recipe_groks_with_a_fourier_embedding(tmp_path):
    cfg = ExperimentConfig.from_yaml(
        ROOT / "configs/models/default.yaml",
        ["tracking.mode=disabled", "model.seed=7", "train.steps=600", "train.n_checkpoints=3"],
    )
    run = train_model(cfg, tmp_path, progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    fourier = json.loads((run / "fourier.json").read_text())
    assert metrics["grok_step"] is not None and metrics["grok_step"] <= 400
    assert metrics["test_acc"] >= 0.99
    assert fourier["top8_share_we"] >= 0.85
    progress = fourier["progress"]
    assert progress["excluded_loss"][-1] > progress["train_loss"][-1]
    assert progress["restricted_loss"][-1] < progress["restricted_loss"][0]
