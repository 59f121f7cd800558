"""Study grids: expansion into batched units, content-hash ids, early validation."""

import pytest

from husai.config import ConfigError, StudyConfig
from husai.errors import UserError
from husai.experiments.grid import estimate_cost, expand_grid


def _study(**grid: object) -> StudyConfig:
    return StudyConfig.model_validate({"name": "t", "grid": grid})


def test_units_share_arch_width_hook_checkpoint() -> None:
    study = _study(
        archs=["topk", "relu"],
        widths=[32, 64],
        k=[2, 4, 8],
        l1_coefficient=[1e-3, 1e-2],
        hooks=["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post"],
        checkpoints=["final"],
    )
    units = expand_grid(study)
    assert len(units) == 2 * 2 * 2  # hooks x archs x widths
    topk = [u for u in units if u.arch == "topk"]
    assert all(u.sparsities == [2, 4, 8] and u.n_models == 3 * 5 for u in topk)
    relu = [u for u in units if u.arch == "relu"]
    assert all(u.sparsity_name == "l1_coefficient" and u.sparsities == [1e-3, 1e-2] for u in relu)
    ids = {u.unit_id("acts") for u in units}
    assert len(ids) == len(units)


def test_unit_id_is_a_content_hash() -> None:
    a = expand_grid(_study(widths=[32], k=[2]))[0]
    b = expand_grid(_study(widths=[32], k=[2]))[0]
    c = expand_grid(_study(widths=[32], k=[3]))[0]
    assert a.unit_id("x") == b.unit_id("x")
    assert a.unit_id("x") != c.unit_id("x") and a.unit_id("x") != a.unit_id("y")


def test_invalid_grid_value_fails_before_training() -> None:
    with pytest.raises(ConfigError, match=r"study.yaml: grid\.0: expected every k <= every width"):
        _validate({"archs": ["topk"], "widths": [8], "k": [16]})
    with pytest.raises(ConfigError, match=r"grid\.0\.l0_coefficient\.0"):
        _validate({"archs": ["jumprelu"], "l0_coefficient": [-1.0]})
    with pytest.raises(UserError, match=r"grid\.0\.k: expected at least one value"):
        expand_grid(_study(archs=["topk"], k=[]))


def _validate(grid: dict) -> None:
    from husai.config import validate_dict

    validate_dict(StudyConfig, {"grid": grid}, "study.yaml")


def test_cost_estimate_counts_sae_steps() -> None:
    study = StudyConfig.model_validate(
        {"grid": {"widths": [64], "k": [2, 4]}, "sae_train": {"steps": 100}}
    )
    cost = estimate_cost(expand_grid(study), {"blocks.0.hook_resid_post": 128})
    assert cost["saes"] == 2 * 5 and cost["sae_steps"] == 10 * 100 and cost["flops"] > 0


def test_repeated_sparsity_values_are_refused() -> None:
    study = _study(archs=["topk"], widths=[16], k=[4, 4])
    with pytest.raises(UserError, match=r"grid.0.k: expected distinct values"):
        expand_grid(study)
