"""train_saes_from_config end to end on a small activation dir (seconds), and beside a study
unit trained on the same activations with the same SAE config."""

from __future__ import annotations

import json
import os

import pytest
import torch

from husai import layout
from husai.config import ExperimentConfig, StudyMetricsConfig
from husai.experiments.grid import Unit
from husai.experiments.unit import UnitPayload, execute_unit
from husai.io import atomic_save_safetensors
from husai.saes import load_sae
from husai.saes.api import read_activations, stack_snapshots, train_saes_from_config
from husai.saes.io import CFG_FILE, WEIGHTS_FILE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture
def acts_dir(tmp_path):
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(24, 16, generator=gen)
    coef = torch.rand(400, 24, generator=gen) * (torch.rand(400, 24, generator=gen) < 0.15)
    atomic_save_safetensors(tmp_path / "acts" / "acts.safetensors", {"acts": coef @ basis * 5})
    return tmp_path / "acts"


def _experiment(arch: str, steps: int = 120) -> ExperimentConfig:
    sae = {"arch": arch, "d_sae": 48} | ({"k": 4} if arch == "topk" else {})
    return ExperimentConfig.model_validate(
        {
            "sae": sae,
            "sae_train": {
                "init_seeds": [0, 1, 2],
                "steps": steps,
                "batch_size": 64,
                "warmup_steps": 5,
                "dead_window": 2000,
                "plateau_tol": 0.0,
                "lr": 1e-2,
            },
        }
    )


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_train_saes_writes_loadable_dirs(arch, acts_dir, tmp_path) -> None:
    cfg = _experiment(arch)
    dirs = train_saes_from_config(cfg, acts_dir, tmp_path / "out")
    knob = {"topk": "k4", "relu": "l1_coefficient0.001", "jumprelu": "l0_coefficient1"}[arch]
    assert [d.name for d in dirs] == [f"{arch}_w48_{knob}-seed{s}" for s in range(3)]
    ev = json.loads((dirs[0] / "eval.json").read_text())
    assert ev["explained_variance"] > 0.5, ev
    assert 0 < ev["l0"] < 48 and len(ev["alive_mask"]) == 48
    loaded = load_sae(dirs[1])
    assert loaded.cfg["husai"]["init_seed"] == 1 and loaded.arch == arch
    snaps = stack_snapshots(tmp_path / "out" / f"snapshots_{arch}_w48.safetensors")
    assert min(snaps) == 0 and max(snaps) == 120 and snaps[0].shape == (3, 48, 16)
    # a second call resumes from the finished checkpoint and writes identical weights
    before = (dirs[0] / "sae_weights.safetensors").read_bytes()
    train_saes_from_config(cfg, acts_dir, tmp_path / "out")
    assert (dirs[0] / "sae_weights.safetensors").read_bytes() == before


def test_train_saes_and_a_study_unit_save_an_sae_alike(acts_dir, tmp_path) -> None:
    """Both pipelines save through ``save_member``: one SAE id (train-saes puts its group in
    front), the same weights, and the same cfg.json but for what each adds to ``husai``."""
    cfg = _experiment("topk", steps=40)
    dirs = train_saes_from_config(cfg, acts_dir, tmp_path / "out")
    unit = Unit("topk", 48, cfg.hook, "final", (cfg.sae,), cfg.sae_train)
    metrics = StudyMetricsConfig(baseline_trials=1, bootstrap=0, loss_recovered=False)
    acts_ND, _ = read_activations(acts_dir)
    result = execute_unit(UnitPayload(unit, "u", acts_ND, metrics, model_cfg=cfg))
    assert result.status == "ok", result.error
    ids = [rec.sae_id for rec in result.saes]
    assert (
        ids == [layout.sae_id("k", 4, s) for s in range(3)] == ["k4-seed0", "k4-seed1", "k4-seed2"]
    )
    assert [d.name for d in dirs] == [f"topk_w48_{i}" for i in ids]
    own = {"experiment", "activations_dir", "model_sha256", "checkpoint"}
    for path, rec in zip(dirs, result.saes, strict=True):
        assert (path / WEIGHTS_FILE).read_bytes() == rec.files[WEIGHTS_FILE]
        a, b = json.loads((path / CFG_FILE).read_text()), json.loads(rec.files[CFG_FILE])
        husai_a, husai_b = a.pop("husai"), b.pop("husai")
        assert a == b and a["metadata"]["hook_name"] == cfg.hook
        assert {k: v for k, v in husai_a.items() if k not in own} == {
            k: v for k, v in husai_b.items() if k not in own
        }
