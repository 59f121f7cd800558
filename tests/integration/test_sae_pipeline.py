"""train_saes_from_config end to end on a small activation dir (seconds)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from husai.config import ExperimentConfig
from husai.io import atomic_save_safetensors
from husai.saes import load_sae
from husai.saes.api import stack_snapshots, train_saes_from_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture
def acts_dir(tmp_path):
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(24, 16, generator=gen)
    coef = torch.rand(400, 24, generator=gen) * (torch.rand(400, 24, generator=gen) < 0.15)
    atomic_save_safetensors(tmp_path / "acts" / "acts.safetensors", {"acts": coef @ basis * 5})
    return tmp_path / "acts"


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_train_saes_writes_loadable_dirs(arch, acts_dir, tmp_path) -> None:
    sae = {"arch": arch, "d_sae": 48} | ({"k": 4} if arch == "topk" else {})
    cfg = ExperimentConfig.model_validate(
        {
            "sae": sae,
            "sae_train": {
                "init_seeds": [0, 1, 2],
                "steps": 120,
                "batch_size": 64,
                "warmup_steps": 5,
                "dead_window": 2000,
                "plateau_tol": 0.0,
                "lr": 1e-2,
            },
        }
    )
    dirs = train_saes_from_config(cfg, acts_dir, tmp_path / "out")
    knob = {"topk": "k4", "relu": "l1_coefficient0.001", "jumprelu": "l0_coefficient1"}[arch]
    assert [d.name for d in dirs] == [f"{arch}_w48_{knob}_seed{s}" for s in range(3)]
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
