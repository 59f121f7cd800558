"""An architecture is one module plus a registry entry: a toy one, defined only in this file,
trains, saves, loads in HUSAI and in SAELens, and goes through ``husai analyze``.

The toy is a ReLU SAE with a plain (not decoder-norm-weighted) L1 penalty, unit-norm
decoder rows and an autograd forward; it saves as a SAELens 'standard' SAE.
"""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import torch
from pydantic import Field
from torch import Tensor

import husai.config
from cli_helpers import invoke_husai
from husai.config import SAETrainConfig
from husai.experiments.grid import Unit
from husai.saes import (
    ARCHITECTURES,
    BatchedSAE,
    get_architecture,
    load_sae,
    register_architecture,
    save_sae,
    train_group,
)
from husai.saes.base import Architecture, TrainOut, model_mm, mse_per_model
from husai.saes.config_base import SAEConfigBase
from husai.saes.registry import BUILT_IN, reading_saelens

D, S = 8, 16
HOOK = "blocks.0.hook_resid_post"


class ToyReluConfig(SAEConfigBase):
    """A ReLU SAE with a plain L1 penalty."""

    arch: Literal["toy_relu"] = "toy_relu"
    l1_coefficient: Annotated[float, Field(ge=0)] = 1e-2
    """Weight of the L1 penalty on the codes."""


class ToyReluArch(Architecture):
    name = "toy_relu"
    config_class = ToyReluConfig
    sparsity_name = "l1_coefficient"
    normalize_decoder = True
    decoder_init_norm = 1.0
    saelens_architecture = "standard"

    def encode(self, sae: BatchedSAE, x_NBD: Tensor) -> Tensor:
        return torch.relu(sae.pre_acts(x_NBD))

    def train_forward(self, sae: BatchedSAE, x_NBD: Tensor, dead_NS: Tensor) -> TrainOut:
        codes_NBS = torch.relu(sae.pre_acts(x_NBD))
        recon_NBD = model_mm(codes_NBS, sae.W_dec, sae.b_dec)
        active_NBS = codes_NBS.detach() > 0
        losses = {
            "mse": mse_per_model(recon_NBD, x_NBD),
            "l1": self.hp("l1_coefficient") * codes_NBS.sum(-1).mean(-1),
        }
        return TrainOut(losses, active_NBS.any(1), active_NBS.sum(-1, dtype=torch.float32).mean(-1))

    def husai_fields(self, cfg: Any) -> dict[str, Any]:
        return {"toy": True}


@pytest.fixture
def toy() -> Iterator[type[Architecture]]:
    register_architecture(ToyReluArch)
    yield ToyReluArch
    ARCHITECTURES.pop(ToyReluArch.name)


@pytest.fixture
def toy_dirs(toy: type[Architecture], tmp_path: Path) -> tuple[Any, list[Path]]:
    """A trained toy group (two sparsities x two seeds) and the saved dirs of its first two models."""
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(512, D, generator=gen) * 2 + 1
    train_cfg = SAETrainConfig(
        init_seeds=[0, 1], steps=100, lr=1e-2, batch_size=64, warmup_steps=2, n_snapshots=0
    )
    cfgs = [ToyReluConfig(d_sae=S, l1_coefficient=v) for v in (1e-3, 3e-2)]
    group = train_group(acts, cfgs, train_cfg)
    dirs = [
        save_sae(tmp_path / "saes" / f"seed{i}", group, i, hook_name=HOOK, model_name="m")
        for i in range(2)
    ]
    return group, dirs


def test_toy_trains_and_saves_with_the_facts_of_its_module(toy_dirs) -> None:
    group, dirs = toy_dirs
    assert group.sae.arch.name == "toy_relu" and group.sae.n_models == 4
    first, last = torch.tensor(group.history["loss"][0]), torch.tensor(group.history["loss"][-1])
    assert (last < 0.9 * first).all()  # every model learned
    assert torch.allclose(group.sae.W_dec.norm(dim=-1), torch.ones(4, S), atol=1e-5)
    cfg = json.loads((dirs[1] / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and "k" not in cfg
    husai_cfg = cfg["husai"]
    assert husai_cfg["arch"] == "toy_relu" and husai_cfg["init_seed"] == 1
    assert husai_cfg["sparsity_name"] == "l1_coefficient" and husai_cfg["sparsity"] == 1e-3
    assert husai_cfg["toy"] is True


def test_toy_loads_in_husai_and_in_saelens_and_both_agree(toy_dirs) -> None:
    group, dirs = toy_dirs
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1)) * 2 + 1
    for index, path in enumerate(dirs):
        ours = load_sae(path)
        assert ours.arch == "toy_relu" and (ours.d_in, ours.d_sae) == (D, S)
        assert torch.allclose(ours.encode(x), group.sae.encode(x)[index], atol=1e-5)
        assert torch.allclose(ours.decode(ours.encode(x)), group.sae.forward(x)[index], atol=1e-4)
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.SAE.load_from_disk(str(dirs[0]))
    assert theirs.cfg.metadata.hook_name == HOOK
    ours = load_sae(dirs[0])
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-5)
        assert torch.allclose(theirs(x), ours.decode(ours.encode(x)), atol=1e-4)


def test_husai_analyze_compares_two_toy_seeds(toy_dirs, tmp_path: Path) -> None:
    _, dirs = toy_dirs
    out = tmp_path / "analysis.json"
    code, stdout, stderr = invoke_husai("analyze", *dirs, "--out", out)
    assert code == 0, stderr
    assert "pw_mcc" in stdout
    result = json.loads(out.read_text())
    assert result["sae_dirs"] == [str(d) for d in dirs]
    pw_mcc = result["stability"]["pw_mcc"]
    assert 0 < pw_mcc["value"] <= 1 and pw_mcc["baseline"] > 0


def test_a_grid_unit_reads_the_sparsity_knob_from_the_registry(toy) -> None:
    cfgs = (ToyReluConfig(d_sae=S, l1_coefficient=0.1), ToyReluConfig(d_sae=S, l1_coefficient=0.2))
    unit = Unit("toy_relu", S, HOOK, "final", cfgs, SAETrainConfig(init_seeds=[0, 1]))
    assert unit.sparsity_name == "l1_coefficient" and unit.sparsities == [0.1, 0.2]
    assert unit.n_models == 4


def test_registration_is_undone_and_unknown_names_are_refused(toy) -> None:
    assert get_architecture("toy_relu") is ToyReluArch
    ARCHITECTURES.pop("toy_relu")
    with pytest.raises(KeyError, match="unknown SAE architecture 'toy_relu'"):
        get_architecture("toy_relu")
    register_architecture(ToyReluArch)  # the fixture removes it again


class _Clash(ToyReluArch):
    name = "relu"


class _WrongTag(ToyReluArch):
    name = "toy_other"


class _NoKnob(ToyReluArch):
    sparsity_name = "k"


class _ReadsStandard(ToyReluArch):
    saelens_reads = ("standard",)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        (_Clash, "the name 'relu' is taken by ReluArch"),
        (_WrongTag, "ToyReluConfig.arch must default to 'toy_other'"),
        (_NoKnob, "sparsity_name 'k' is not a field of ToyReluConfig"),
        (_ReadsStandard, r"SAELens \['standard'\] already loads as 'relu'"),
    ],
)
def test_registry_refuses_an_inconsistent_architecture(arch, message) -> None:
    with pytest.raises(ValueError, match=message):
        register_architecture(arch)
    assert arch.name not in ARCHITECTURES or ARCHITECTURES[arch.name] is not arch


def test_built_in_architectures_are_the_configs_union() -> None:
    assert husai.config.SAE_ARCHS == tuple(a.name for a in BUILT_IN)
    for arch in BUILT_IN:
        assert ARCHITECTURES[arch.name] is arch
        assert husai.config.SAE_CONFIGS[arch.name] is arch.config_class
        assert getattr(husai.config, arch.config_class.__name__) is arch.config_class
        assert arch.sparsity_name in husai.config.SweepConfig.model_fields  # a grid sweeps it
    assert [reading_saelens(n) for n in ("standard", "topk", "jumprelu", "batchtopk")] == [
        "relu",
        "topk",
        "jumprelu",
        "batchtopk",
    ]


def _compared_names(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) of every built-in architecture name compared against (==, in) in code,
    except where SAELens architectures are compared (``saelens_arch == "topk"``)."""
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and "saelens" not in ast.unparse(node):
            for side in [node.left, *node.comparators]:
                elts = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
                for elt in elts:
                    if isinstance(elt, ast.Constant) and elt.value in names:
                        hits.append((node.lineno, elt.value))
    return hits


def test_no_module_branches_on_a_built_in_architecture_name() -> None:
    """Facts about an architecture live in its module: nowhere else does code test for its name."""
    src = Path(husai.config.__file__).parent
    names = {a.name for a in BUILT_IN}
    own = {Path(sys.modules[a.__module__].__file__).resolve() for a in BUILT_IN}
    found = [
        f"{path.relative_to(src)}:{line} {name!r}"
        for path in sorted(src.rglob("*.py"))
        if path.resolve() not in own
        for line, name in _compared_names(ast.parse(path.read_text()), names)
    ]
    assert not found, "architecture names tested outside their module: " + ", ".join(found)
