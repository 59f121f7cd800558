"""SAELens splices every SAE HUSAI writes into the committed model (issue 16, item 9).

The SAE directories come from the two writers a user runs: a study unit (what ``husai
run`` stores, byte for byte) and ``husai train-saes``, both trained on activations of
the committed model. Each one is loaded with ``sae_lens.SAE.load_from_disk`` and
attached with ``HookedSAETransformer.add_sae``; the spliced logits must differ from the
clean ones and equal the committed model run with HUSAI's own reconstruction at that hook.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, HookedSAETransformer
from safetensors.torch import save_file

from husai.activations import extract
from husai.config import ExperimentConfig, SAETrainConfig, StudyConfig, TopKSAEConfig
from husai.experiments.grid import expand_grid
from husai.experiments.unit import UnitPayload, execute_unit
from husai.model import load_model
from husai.model.store import load_run_config
from husai.saes import load_sae, save_sae, train_group
from husai.saes.api import train_saes_from_config
from husai.tasks import make_dataset

MODEL_DIR = Path(__file__).resolve().parents[2] / "artifacts" / "default_model"
HOOKS = ("blocks.0.hook_resid_post", "blocks.0.attn.hook_z")  # hook_z: SAELens reshapes
SAE_TRAIN = {"init_seeds": [0, 1], "steps": 20, "batch_size": 256, "n_snapshots": 0}


@pytest.fixture(scope="module")
def committed() -> tuple[HookedSAETransformer, torch.Tensor, dict[str, torch.Tensor]]:
    """The committed model as a HookedSAETransformer, a batch of inputs, and activations."""
    model = load_model(MODEL_DIR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        hooked = HookedSAETransformer(model.cfg)
    hooked.load_state_dict(model.state_dict(), strict=True)
    tokens = make_dataset(load_run_config(MODEL_DIR).task).tokens
    rows = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(0))
    acts = extract(model, tokens[rows[:2048]], list(HOOKS))  # a subset keeps training cheap
    return hooked.eval(), tokens[rows[-512:]], acts


@pytest.fixture(scope="module")
def study_sae_dirs(committed, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The SAE directories of one study unit per hook, as the run store writes them."""
    _, _, acts = committed
    run = load_run_config(MODEL_DIR)
    study = StudyConfig(
        name="splice",
        task=run.task,
        model=run.model,
        train=run.train,
        sae_train=SAETrainConfig(**SAE_TRAIN),
        grid={"archs": ["topk"], "widths": [16], "k": [4], "hooks": list(HOOKS)},
        metrics={"baseline_trials": 1, "bootstrap": 0, "loss_recovered": False},
    )
    out, dirs = tmp_path_factory.mktemp("splice_study"), []
    for unit in expand_grid(study):
        payload = UnitPayload(
            unit=unit,
            unit_id=f"u-{unit.hook}",
            acts_ND=acts[unit.hook],
            metrics=study.metrics,
            model_cfg=study.model_experiment(),
        )
        result = execute_unit(payload)
        assert result.status == "ok", result.error
        for record in result.saes:
            sae_dir = out / payload.unit_id / record.sae_id
            sae_dir.mkdir(parents=True)
            for name, blob in record.files.items():
                (sae_dir / name).write_bytes(blob)
            dirs.append(sae_dir)
    assert len(dirs) == len(HOOKS) * len(SAE_TRAIN["init_seeds"])
    return dirs


@pytest.fixture(scope="module")
def train_saes_dirs(committed, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The SAE directories of ``husai train-saes`` on resid_post of the committed model."""
    _, _, acts = committed
    tmp = tmp_path_factory.mktemp("splice_train_saes")
    (tmp / "acts").mkdir()
    save_file({"acts": acts[HOOKS[0]]}, str(tmp / "acts" / "acts.safetensors"))
    cfg = ExperimentConfig(
        name="default_model",
        sae=TopKSAEConfig(d_sae=16, k=4),
        sae_train=SAETrainConfig(**SAE_TRAIN),
        hook=HOOKS[0],
    )
    return train_saes_from_config(cfg, tmp / "acts", tmp / "saes")


def _husai_spliced_logits(
    model: HookedSAETransformer, tokens: torch.Tensor, sae_dir: Path, hook: str
) -> torch.Tensor:
    """Logits with HUSAI's own reconstruction at every position of ``hook``."""
    ours = load_sae(sae_dir)

    def replace(act: torch.Tensor, hook: object) -> torch.Tensor:
        flat = act.reshape(-1, ours.d_in)  # hook_z: (heads, d_head) -> heads * d_head
        return ours.decode(ours.encode(flat)).reshape(act.shape)

    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(hook, replace)])


def _check_splice(sae_dir: Path, committed) -> dict:
    """add_sae attaches the SAE at its hook and splices exactly HUSAI's reconstruction."""
    model, tokens, _ = committed
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    hook = cfg["metadata"]["hook_name"]
    assert hook in HOOKS, cfg["metadata"]
    assert cfg["metadata"]["prepend_bos"] is False
    assert cfg["metadata"]["context_size"] == tokens.shape[1]
    assert cfg["reshape_activations"] == ("hook_z" if hook.endswith("hook_z") else "none")
    sae = SAE.load_from_disk(str(sae_dir))
    assert sae.cfg.metadata.hook_name == hook
    assert sae.cfg.metadata.model_name == cfg["metadata"]["model_name"]
    model.reset_saes()
    with torch.no_grad():
        clean = model(tokens)
        model.add_sae(sae)
        try:
            assert list(model.acts_to_saes) == [hook]  # attached, not skipped
            spliced = model(tokens)
        finally:
            model.reset_saes()
    expected = _husai_spliced_logits(model, tokens, sae_dir, hook)
    assert not torch.allclose(spliced, clean, atol=1e-3)
    assert torch.allclose(spliced, expected, atol=1e-4), (spliced - expected).abs().max()
    return cfg


def test_study_saes_splice_into_the_committed_model(study_sae_dirs, committed) -> None:
    hooks = set()
    for sae_dir in study_sae_dirs:
        cfg = _check_splice(sae_dir, committed)
        assert cfg["metadata"]["model_name"] == "splice-model"
        assert cfg["husai"]["checkpoint"] == "final"
        hooks.add(cfg["metadata"]["hook_name"])
    assert hooks == set(HOOKS)


def test_train_saes_dirs_splice_into_the_committed_model(train_saes_dirs, committed) -> None:
    assert len(train_saes_dirs) == len(SAE_TRAIN["init_seeds"])
    for sae_dir in train_saes_dirs:
        cfg = _check_splice(sae_dir, committed)
        assert cfg["metadata"]["model_name"] == "default_model"


def test_an_sae_without_hook_name_is_skipped_by_saelens(tmp_path: Path, committed) -> None:
    """What the metadata prevents: SAELens skips an SAE with no hook_name, silently."""
    model, _, acts = committed
    group = train_group(acts[HOOKS[0]], [TopKSAEConfig(d_sae=16, k=4)], SAETrainConfig(**SAE_TRAIN))
    sae_dir = save_sae(tmp_path / "bare", group, 0)
    assert "hook_name" not in json.loads((sae_dir / "cfg.json").read_text())["metadata"]
    model.reset_saes()
    model.add_sae(SAE.load_from_disk(str(sae_dir)))
    assert not model.acts_to_saes
