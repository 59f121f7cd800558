"""Activation extraction from a small trained run: layout, validation, errors, ground truth."""

import json

import pytest
import torch

from husai.activations import extract_to_dirs, hook_slug, load_activations
from husai.config import ExperimentConfig
from husai.errors import UserError
from husai.model import load_model, train_model
from husai.tasks import make_dataset

HOOKS = ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post", "blocks.0.attn.hook_z"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cfg = ExperimentConfig.model_validate(
        {
            "name": "acts",
            "task": {"modulus": 13, "train_fraction": 0.5},
            "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
            "train": {"steps": 10, "n_checkpoints": 3, "log_every": 5},
            "tracking": {"mode": "disabled"},
        }
    )
    return train_model(cfg, tmp_path_factory.mktemp("runs"), progress=False)


@pytest.fixture(scope="module")
def acts_dirs(run_dir, tmp_path_factory):
    return extract_to_dirs(run_dir, HOOKS, tmp_path_factory.mktemp("acts"))


def test_layout_shapes_and_order(run_dir, acts_dirs):
    assert [d.name for d in acts_dirs] == HOOKS
    resid, post, z = (load_activations(d) for d in acts_dirs)
    assert (
        resid.acts.shape == (169, 16) and post.acts.shape == (169, 32) and z.acts.shape == (169, 16)
    )
    assert resid.acts.dtype == torch.float32
    assert resid.pairs[14].tolist() == [1, 1]  # row-major (a, b)
    meta = resid.meta
    sha = json.loads((run_dir / "metrics.json").read_text())["model_sha256"]
    assert (
        meta["model_sha256"] == sha
        and meta["position"] == -1
        and meta["input_order"] == "row-major (a, b)"
    )
    model = load_model(run_dir)
    data = make_dataset(model_cfg_task(run_dir))
    _, cache = model.run_with_cache(data.tokens)
    assert torch.equal(resid.acts, cache["blocks.0.hook_resid_post"][:, -1])
    assert torch.equal(z.acts, cache["blocks.0.attn.hook_z"][:, -1].reshape(169, -1))
    assert torch.equal(resid.train_mask, data.train_mask)


def model_cfg_task(run_dir):
    from husai.model import load_run_config

    return load_run_config(run_dir).task


def test_planes_are_stored_and_consistent(acts_dirs):
    acts = load_activations(acts_dirs[0])
    planes = acts.planes
    assert planes.basis.shape == (4 * 6, 2, 16)
    assert planes.variable[:4] == ["a", "b", "a+b", "a-b"]
    assert acts.meta["key_r2_total"] == pytest.approx(planes.key_r2_total)
    assert acts.meta["key_freqs"] == planes.key_freqs
    assert 0 < planes.r2.sum() <= 1 + 1e-5


def test_other_position_and_skip(run_dir, acts_dirs, tmp_path):
    (d0,) = extract_to_dirs(run_dir, [HOOKS[0]], tmp_path, position=0)
    assert d0.name == hook_slug(HOOKS[0], 0) == "blocks.0.hook_resid_post_pos0"
    a0 = load_activations(d0)
    assert a0.meta["position"] == 0
    assert not torch.equal(a0.acts, load_activations(acts_dirs[0]).acts)
    mtime = (d0 / "acts.safetensors").stat().st_mtime_ns
    extract_to_dirs(run_dir, [HOOKS[0]], tmp_path, position=0)
    assert (d0 / "acts.safetensors").stat().st_mtime_ns == mtime


def test_bad_input_errors(run_dir, acts_dirs, tmp_path):
    with pytest.raises(UserError, match="valid hooks: .*blocks.0.hook_resid_post"):
        extract_to_dirs(run_dir, ["blocks.0.hook_resid_postt"], tmp_path)
    with pytest.raises(UserError, match=r"position: expected an integer in \[-3, 2\], got 3"):
        extract_to_dirs(run_dir, [HOOKS[0]], tmp_path, position=3)
    with pytest.raises(UserError, match="activations come from model"):
        load_activations(acts_dirs[0], expected_model_sha256="0" * 64)
    meta_path = acts_dirs[1] / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "d": 7}))
    with pytest.raises(
        UserError, match=r"acts is torch.float32 \(169, 32\), expected torch.float32 \(169, 7\)"
    ):
        load_activations(acts_dirs[1])
    meta_path.write_text(json.dumps(meta))


def _tiny_run(tmp_path, op: str, modulus: int):
    cfg = ExperimentConfig.model_validate(
        {
            "name": f"acts_{op}",
            "task": {"modulus": modulus, "op": op, "train_fraction": 0.5},
            "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
            "train": {"steps": 5, "n_checkpoints": 2, "log_every": 5},
            "tracking": {"mode": "disabled"},
        }
    )
    return train_model(cfg, tmp_path, progress=False)


def test_mul_planes_are_discrete_log_planes(tmp_path):
    run = _tiny_run(tmp_path, "mul", 13)
    (d,) = extract_to_dirs(run, [HOOKS[0]], tmp_path / "acts")
    acts = load_activations(d)
    assert acts.acts.shape == (144, 16) and int(acts.pairs.min()) == 1
    assert acts.planes.variable[:4] == ["a", "b", "ab", "a/b"]
    assert acts.planes.basis.shape == (4 * 5, 2, 16)  # k = 1..5 for the group of order 12
    assert acts.meta["group"] == {"op": "mul", "order": 12, "generator": 2}
    assert acts.meta["answer_variable"] == "ab"
    fourier = json.loads((run / "fourier.json").read_text())
    assert len(fourier["we_norms"]) == 12 // 2 + 1


def test_a_task_without_ground_truth_is_a_one_line_error(tmp_path):
    run = _tiny_run(tmp_path, "div", 13)
    with pytest.raises(UserError, match="task.op: 'div' mod 13: no Fourier ground truth") as err:
        extract_to_dirs(run, [HOOKS[0]], tmp_path / "acts")
    assert "\n" not in str(err.value)
