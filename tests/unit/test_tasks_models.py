"""The committed sub and mul models (artifacts/) load, generalise and carry their ground truth."""

import json
from pathlib import Path

import pytest
import torch

from husai.config import ExperimentConfig
from husai.io import sha256_file
from husai.model import final_logits, load_model, load_run_config
from husai.model.fourier import fit_planes, task_group
from husai.tasks import make_dataset

ROOT = Path(__file__).resolve().parents[2]
RUNS = {"sub": ROOT / "artifacts" / "sub_model", "mul": ROOT / "artifacts" / "mul_model"}


def _run(op: str) -> Path:
    run = RUNS[op]
    if not (run / "metrics.json").is_file():
        pytest.skip(f"no committed {op} model")
    return run


@pytest.mark.parametrize("op", ["sub", "mul"])
def test_committed_model_reaches_99_percent_test_accuracy(op: str) -> None:
    run = _run(op)
    cfg = load_run_config(run)
    assert cfg.task.op == op
    for section in ("task", "model", "train"):
        shipped = ExperimentConfig.from_yaml(ROOT / f"configs/models/{op}.yaml")
        assert getattr(cfg, section) == getattr(shipped, section), section
    data = make_dataset(cfg.task)
    with torch.no_grad():
        pred = final_logits(load_model(run), data.tokens).argmax(-1)
    test = ~data.train_mask
    assert (pred[test] == data.labels[test]).float().mean() >= 0.99
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model_sha256"] == sha256_file(run / "model.safetensors")
    assert metrics["test_acc"] >= 0.99


@pytest.mark.parametrize("op", ["sub", "mul"])
def test_restricted_loss_is_low_along_the_answer(op: str) -> None:
    """Keeping only the key cos/sin(w_k s) logit components (s = a-b, log a + log b) still solves it."""
    fourier = json.loads((_run(op) / "fourier.json").read_text())
    progress = fourier["progress"]
    assert progress["restricted_loss"][-1] < 0.05
    assert progress["excluded_loss"][-1] > 4.0  # removing them destroys the answer
    assert fourier["group"]["op"] == op


@pytest.mark.slow
@pytest.mark.parametrize(("op", "answer"), [("sub", "a-b"), ("mul", "ab")])
def test_key_planes_carry_the_final_residual_stream(op: str, answer: str) -> None:
    run = _run(op)
    cfg, model = load_run_config(run), load_model(run)
    data = make_dataset(cfg.task)
    hook = "blocks.0.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(data.tokens, names_filter=[hook])
    key = json.loads((run / "fourier.json").read_text())["key_freqs"]
    group = task_group(cfg.task.op, cfg.task.modulus)
    planes = fit_planes(cache[hook][:, -1], data.pairs, cfg.task.modulus, key, group=group)
    assert planes.key_r2_total >= 0.9
    assert planes.r2_by_variable()[answer] >= 0.85
