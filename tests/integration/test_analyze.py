"""``analyze_dirs`` on real SAE directories (written by husai.saes) and a tiny activation dir."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from husai.config import SAETrainConfig, TopKSAEConfig
from husai.io import atomic_save_safetensors, atomic_write_json
from husai.metrics import pw_mcc
from husai.metrics.analyze import analyze_dirs

P, D = 7, 16


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUSAI_CACHE_DIR", "off")


def _sae_dirs(tmp_path: Path) -> list[Path]:
    saes = pytest.importorskip("husai.saes")
    train_cfg = SAETrainConfig(init_seeds=[0, 1, 2])
    group = saes.init_group(D, [TopKSAEConfig(d_sae=24, k=3)], train_cfg)
    return [saes.save_sae(tmp_path / f"sae_{i}", group, i) for i in range(3)]


def _acts_dir(tmp_path: Path) -> Path:
    q = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))[0].T
    basis = q[:4].reshape(2, 2, D).contiguous()
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    w = 2 * math.pi / P
    acts = torch.zeros(P * P, D)
    for plane, (freq, var) in enumerate([(1, a), (2, a + b)]):
        phase = (w * freq * var).flatten()
        acts += (
            torch.cos(phase)[:, None] * basis[plane, 0]
            + torch.sin(phase)[:, None] * basis[plane, 1]
        )
    out = tmp_path / "acts"
    atomic_save_safetensors(out / "acts.safetensors", {"acts": acts})
    atomic_save_safetensors(
        out / "planes.safetensors", {"basis": basis, "freq": torch.tensor([1, 2])}
    )
    atomic_write_json(out / "meta.json", {"modulus": P, "plane_variables": ["a", "a+b"]})
    return out


def test_analyze_dirs_stability_only(tmp_path: Path) -> None:
    dirs = _sae_dirs(tmp_path)
    table = analyze_dirs(dirs, None, tmp_path / "out.json", trials=3)
    data = json.loads((tmp_path / "out.json").read_text())
    stab = data["stability"]
    assert stab["pw_mcc"]["baseline_kind"] == "random_unit" and stab["pw_mcc"]["baseline"] > 0
    assert len(stab["pw_mcc"]["extra"]["pairs"]) == 3
    assert "pw_mcc_alive" not in stab  # no inputs given: alive latents are unknown
    assert "pw_mcc" in table and "baseline" in table
    assert pw_mcc(dirs[0], dirs[1]) == pytest.approx(stab["pw_mcc"]["extra"]["pairs"][0])


def test_analyze_dirs_with_ground_truth(tmp_path: Path) -> None:
    dirs = _sae_dirs(tmp_path)
    table = analyze_dirs(dirs, _acts_dir(tmp_path), tmp_path / "out.json", trials=3)
    data = json.loads((tmp_path / "out.json").read_text())
    assert {"pw_mcc_alive", "activation_mcc"} <= set(data["stability"])
    per_sae = data["ground_truth"]["per_sae"][str(dirs[0])]
    assert per_sae["gt_mcc"]["n_latents"] == [24, 4]
    assert len(per_sae["plane_coverage_per_plane"]) == 2
    assert len(per_sae["activation_purity"]["purity"]) == 24
    assert data["ground_truth"]["allocation"]["freqs"] == [1, 2]
    assert "ground truth" in table


def test_analyze_rejects_a_missing_dir(tmp_path: Path) -> None:
    from husai.errors import UserError

    with pytest.raises(UserError, match="not an SAE directory"):
        analyze_dirs([tmp_path / "nope"], None, tmp_path / "out.json")
