"""Config validation: one-line errors naming the file and dotted field; overrides; examples."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from husai.config import (
    ConfigError,
    ExperimentConfig,
    TaskConfig,
    TopKSAEConfig,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "configs" / "examples").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_examples_exist_and_validate() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"baseline_relu.yaml", "topk_16x.yaml", "batchtopk_32x.yaml"} <= names
    for path in EXAMPLES:
        cfg = ExperimentConfig.from_yaml(path)
        assert cfg.sae.arch in ("relu", "topk", "batchtopk")


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = ExperimentConfig.from_yaml(ROOT / "configs/examples/topk_16x.yaml")
    out = tmp_path / "resolved.yaml"
    cfg.to_yaml(out)
    assert ExperimentConfig.from_yaml(out) == cfg


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("task:\n  modlus: 7\n", "task.modlus", "unknown key"),
        ("sae:\n  arch: topk\n  d_sae: 64\n  k: 100\n", "sae.k", "k <= d_sae"),
        ("task:\n  modulus: 1\n", "task.modulus", "greater than or equal to 2"),
        ("task:\n  modulus: 2.5\n", "task.modulus", "valid integer"),
        ("task:\n  train_fraction: 1.0\n", "task.train_fraction", "less than 1"),
        ("task:\n  train_fraction: 0\n", "task.train_fraction", "greater than 0"),
        ("sae:\n  arch: relu\n  k: 4\n", "sae.k", "unknown key"),
        ("sae:\n  arch: nope\n", "sae", "arch"),
        ("sae_train:\n  init_seeds: 3\n", "sae_train.init_seeds", "list"),
        ("sae_train:\n  init_seeds: [0, 0, 1]\n", "sae_train.init_seeds", "distinct"),
        ("", "<root>", "empty config"),
        ("# nothing but a comment\n", "<root>", "empty config"),
    ],
)
def test_bad_config_gives_one_line(tmp_path: Path, text: str, field: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_yaml(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {field}:"), msg
    assert expected in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        ExperimentConfig.from_yaml(tmp_path / "nope.yaml")


def test_overrides_are_typed_and_validated() -> None:
    base = ROOT / "configs/examples/topk_16x.yaml"
    cfg = ExperimentConfig.from_yaml(base, ["sae.k=8", "sae_train.init_seeds=[7, 8]"])
    assert cfg.sae.k == 8 and cfg.sae_train.init_seeds == [7, 8]
    with pytest.raises(ConfigError, match=r"sae\.k: expected k <= d_sae"):
        ExperimentConfig.from_yaml(base, ["sae.k=4096"])
    with pytest.raises(ConfigError, match="valid integer"):
        ExperimentConfig.from_yaml(base, ["sae.k=many"])


def test_switching_arch_drops_the_old_fields() -> None:
    base = ExperimentConfig.from_yaml(ROOT / "configs/examples/topk_16x.yaml")
    for cfg in (
        ExperimentConfig.from_yaml(ROOT / "configs/examples/topk_16x.yaml", ["sae.arch=jumprelu"]),
        base.with_overrides(["sae.arch=jumprelu"]),
    ):
        assert cfg.sae.arch == "jumprelu" and cfg.sae.d_sae == base.sae.d_sae
    assert base.with_overrides(["sae.arch=batchtopk"]).sae.k == base.sae.k  # shared field kept


def test_configs_are_frozen() -> None:
    cfg = TaskConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.modulus = 7  # type: ignore[misc]


def test_seeds_are_separate_fields() -> None:
    cfg = ExperimentConfig()
    assert {"data_seed"} <= set(type(cfg.task).model_fields)
    assert "seed" in type(cfg.model).model_fields
    assert {"init_seeds", "data_seed"} <= set(type(cfg.sae_train).model_fields)


def test_derived_vocab() -> None:
    assert TaskConfig(modulus=113).d_vocab == 114 and TaskConfig().n_ctx == 3
    t = TaskConfig(modulus=7, token_format="a_op_b_eq")
    assert t.d_vocab == 12 and t.n_ctx == 4
    assert TopKSAEConfig(d_sae=8, k=8).k == 8


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("task:\n  modlus: 7\n", "task.modlus"),
        ("sae:\n  arch: topk\n  d_sae: 64\n  k: 100\n", "sae.k"),
    ],
)
def test_cli_exits_2_with_one_line(tmp_path: Path, text: str, field: str) -> None:
    path = _write(tmp_path, text)
    proc = subprocess.run(
        [sys.executable, "-m", "husai.cli", "validate", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
