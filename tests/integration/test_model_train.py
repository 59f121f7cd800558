"""Training pipeline on a small task: layout, bit-identity, resume/skip, errors."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from husai.config import ExperimentConfig
from husai.errors import TrainingDivergedError, UserError
from husai.io import sha256_file
from husai.model import load_model, train_model
from husai.model.build import final_logits
from husai.model.store import list_checkpoints
from husai.tasks import make_dataset

os.environ.setdefault("WANDB_MODE", "offline")


def small_cfg(name="small", tracking="disabled", **train):
    train = {"steps": 30, "lr": 3e-3, "n_checkpoints": 5, "log_every": 5, **train}
    return ExperimentConfig.model_validate(
        {
            "name": name,
            "task": {"modulus": 17, "train_fraction": 0.5},
            "model": {"d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64},
            "train": train,
            "tracking": {"mode": tracking},
        }
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_model(small_cfg(), tmp_path_factory.mktemp("runs"), progress=False)


def test_run_dir_layout(run_dir):
    for name in ("config.yaml", "model.safetensors", "curves.json", "fourier.json", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert list_checkpoints(run_dir) == [0, 1, 3, 10, 30]
    curves = json.loads((run_dir / "curves.json").read_text())
    assert curves["step"] == [0, 5, 10, 15, 20, 25, 30]
    assert curves["train_loss"][-1] < curves["train_loss"][0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model_sha256"] == sha256_file(run_dir / "model.safetensors")
    assert metrics["steps"] == 30 and metrics["train_acc"] == curves["train_acc"][-1]
    fourier = json.loads((run_dir / "fourier.json").read_text())
    assert len(fourier["we_norms"]) == 17 // 2 + 1 and fourier["key_freqs"]
    assert fourier["progress"]["step"] == [0, 1, 3, 10, 30]
    assert all(v is not None for v in fourier["progress"]["restricted_loss"])
    weights = load_file(str(run_dir / "model.safetensors"))
    assert all(v.dtype == torch.float32 for k, v in weights.items() if v.is_floating_point())
    assert (run_dir / "model.safetensors").read_bytes() == (
        run_dir / "checkpoints/step_000030.safetensors"
    ).read_bytes()


def test_load_model_gives_the_trained_hooked_transformer(run_dir):
    model = load_model(run_dir)
    data = make_dataset(small_cfg().task)
    with torch.no_grad():
        logits = model(data.tokens)[:, -1]
    acc = (logits.argmax(-1)[data.train_mask] == data.labels[data.train_mask]).float().mean().item()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert acc == pytest.approx(metrics["train_acc"], abs=1e-6)
    assert (final_logits(model, data.tokens) - logits).abs().max() < 1e-5
    early = load_model(run_dir, "step_0")
    assert not torch.equal(early.embed.W_E, model.embed.W_E)
    assert torch.all(model.blocks[0].attn.b_Q == 0)


def test_retraining_is_bit_identical(run_dir, tmp_path):
    again = train_model(small_cfg(), tmp_path, progress=False)
    assert sha256_file(again / "model.safetensors") == sha256_file(run_dir / "model.safetensors")
    other = train_model(
        small_cfg(name="s2").model_copy(
            update={"model": small_cfg().model.model_copy(update={"seed": 1})}
        ),
        tmp_path,
        progress=False,
    )
    assert sha256_file(other / "model.safetensors") != sha256_file(run_dir / "model.safetensors")


def test_finished_run_is_skipped_and_other_config_refused(run_dir):
    mtime = (run_dir / "model.safetensors").stat().st_mtime_ns
    assert train_model(small_cfg(), run_dir.parent, progress=False) == run_dir
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(UserError, match="another config"):
        train_model(small_cfg(lr=1e-2), run_dir.parent, progress=False)


def test_checkpoint_from_another_config_is_refused(run_dir, tmp_path):
    other = train_model(small_cfg(name="other", steps=5), tmp_path, progress=False)
    (other / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
    with pytest.raises(UserError, match=r"another config .*train.steps"):
        load_model(other)
    with pytest.raises(UserError, match="no such checkpoint .*step_0"):
        load_model(run_dir, "step_7")
    with pytest.raises(UserError, match="expected 'final' or 'step_<n>'"):
        load_model(run_dir, "latest")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(
        TrainingDivergedError,
        match=r"train loss is nan at step (\d+); last good checkpoint: .*step_0+\d",
    ):
        train_model(small_cfg(name="nan", lr=1e30, warmup_steps=0), tmp_path, progress=False)
    run = tmp_path / "nan"
    steps = list_checkpoints(run)
    assert steps, "a last good checkpoint is kept"
    last = load_file(str(run / f"checkpoints/step_{steps[-1]:06d}.safetensors"))
    params = {k: v for k, v in last.items() if k.split(".")[-1].startswith(("W_", "b_"))}
    assert len(params) == 16 and all(torch.isfinite(v).all() for v in params.values())


def test_early_stop(tmp_path):
    run = train_model(
        small_cfg(name="es", steps=200, early_stop_acc=0.01, early_stop_patience=10),
        tmp_path,
        progress=False,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 10


def test_wandb_offline_logs_into_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = train_model(small_cfg(name="wb", tracking="offline", steps=5), tmp_path, progress=False)
    assert any((run / "wandb").glob("offline-run-*"))
