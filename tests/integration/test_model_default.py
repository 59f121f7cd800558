"""The committed default model (artifacts/default_model) meets issue 3's checks."""

import json
from pathlib import Path

import pytest
import torch

from husai.config import ExperimentConfig
from husai.io import sha256_file
from husai.model import load_model, load_run_config, train_model
from husai.model.analysis import weight_fourier
from husai.model.fourier import fit_planes
from husai.tasks import make_dataset

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "artifacts" / "default_model"
pytestmark = pytest.mark.skipif(
    not (RUN / "metrics.json").is_file(), reason="no committed default model"
)


@pytest.fixture(scope="module")
def model():
    return load_model(RUN)


def test_metrics_and_checksum():
    metrics = json.loads((RUN / "metrics.json").read_text())
    assert metrics["model_sha256"] == sha256_file(RUN / "model.safetensors")
    assert metrics["test_acc"] >= 0.99
    fourier = json.loads((RUN / "fourier.json").read_text())
    assert fourier["top8_share_we"] >= 0.9
    assert len(fourier["key_freqs"]) <= 8


def test_config_is_the_default_recipe():
    committed = load_run_config(RUN)
    default = ExperimentConfig.from_yaml(ROOT / "configs/models/default.yaml")
    for section in ("task", "model", "train"):
        assert getattr(committed, section) == getattr(default, section), section


def test_loaded_model_generalises_and_is_a_fourier_circuit(model):
    data = make_dataset(load_run_config(RUN).task)
    with torch.no_grad():
        pred = model(data.tokens)[:, -1].argmax(-1)
    assert (pred[~data.train_mask] == data.labels[~data.train_mask]).float().mean() >= 0.99
    fourier = weight_fourier(model, 113)
    assert fourier["top8_share_we"] >= 0.9


def _planes(model, hook):
    data = make_dataset(load_run_config(RUN).task)
    with torch.no_grad():
        _, cache = model.run_with_cache(data.tokens, names_filter=[hook])
    key_freqs = json.loads((RUN / "fourier.json").read_text())["key_freqs"]
    return fit_planes(cache[hook][:, -1], data.pairs, 113, key_freqs)


def test_key_planes_explain_the_residual_stream_mostly_through_a_plus_b(model):
    planes = _planes(model, "blocks.0.hook_resid_post")
    assert planes.key_r2_total >= 0.95
    assert planes.r2_by_variable()["a+b"] >= 0.8


def test_mlp_key_planes_need_the_a_minus_b_planes(model):
    planes = _planes(model, "blocks.0.mlp.hook_post")
    by_var = planes.r2_by_variable()
    assert planes.key_r2_total >= 0.9
    assert by_var["a-b"] >= 0.02
    assert min(by_var["a"], by_var["b"]) >= 0.2


@pytest.mark.slow
def test_retraining_the_default_reproduces_the_committed_bits(tmp_path):
    cfg = ExperimentConfig.from_yaml(
        ROOT / "configs/models/default.yaml", ["tracking.mode=disabled"]
    )
    run = train_model(cfg, tmp_path, progress=False)
    assert sha256_file(run / "model.safetensors") == sha256_file(RUN / "model.safetensors")
