"""``husai run`` on a language model: a tiny random GPT-2 over a small corpus, end to end.

The study extracts the residual stream, trains SAEs without planes or loss recovered, writes
the tables, and writes a report that names the model, has no ground-truth section, and shows
top-activating text whose marked token is the token of the row with the largest code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cli_helpers import invoke_husai
from husai.activations import load_activations
from husai.config import ConfigError, StudyConfig
from husai.io import load_safetensors
from husai.lm.extract import load_token_strings
from husai.saes.io import load_sae


def lm_study(tmp_path: Path, model: Path, text: Path, **changes: object) -> Path:
    cfg = {
        "name": "tiny_lm",
        "language_model": {"model": str(model), "text": [str(text)], "context": 16},
        "sae_train": {
            "init_seeds": [0, 1, 2],
            "steps": 40,
            "batch_size": 64,
            "n_snapshots": 2,
            "warmup_steps": 5,
            "dead_window": 200,
        },
        "grid": {
            "hooks": ["blocks.1.hook_resid_post"],
            "archs": ["topk", "relu"],
            "widths": [64],
            "k": [2, 4],
            "l1_coefficient": [0.001, 0.01],
        },
        "metrics": {"baseline_trials": 2, "bootstrap": 50, "loss_recovered": False},
        "tracking": {"mode": "disabled"},
        **changes,
    }
    path = tmp_path / "lm_study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def lm_store(tiny_gpt2, corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm_run")
    study = lm_study(root, tiny_gpt2, corpus)
    code, stdout, stderr = invoke_husai("run", str(study), "--out", str(root / "store"))
    assert code == 0, stderr
    return root / "store"


def test_lm_study_runs_every_stage_without_ground_truth(lm_store):
    assert json.loads((lm_store / "model" / "language_model.json").read_text())["n_layers"] == 2
    acts_dir = lm_store / "activations" / "final" / "blocks.1.hook_resid_post"
    acts = load_activations(acts_dir)
    assert acts.planes is None and acts.meta["source"] == "language_model"
    results = pd.read_parquet(lm_store / "results.parquet")
    assert len(results) == 2 * 2 * 3 and (results.status == "ok").all()
    summary = pd.read_parquet(lm_store / "summary.parquet")
    assert {"pw_mcc_alive"} <= set(summary.metric)
    latents = pd.read_parquet(lm_store / "latents.parquet")
    assert len(latents) == 12 * 64 and latents.plane_purity.isna().all()


def test_lm_report_shows_the_model_and_the_text_of_its_top_tokens(lm_store):
    md = (lm_store / "report.md").read_text()
    assert "1. The language model" in md and "Features in text" in md
    assert "Ground truth" not in md and "Task:" not in md
    assert "0 of 4 configurations are stable" in md and "All 4 fail first on" in md
    assert "layer 1 over" in md.splitlines()[0]
    # every section is numbered in order
    numbers = [
        int(line[3:].split(".")[0])
        for line in md.splitlines()
        if line[:3] == "## " and line[3].isdigit()
    ]
    assert numbers == list(range(1, len(numbers) + 1))
    # the first text row: its marked token is the token of the row where that latent fires most
    row = next(line for line in md.splitlines() if line.startswith("| most stable |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    latent, activation, text = int(cells[1]), float(cells[5]), cells[6]
    marked = text[text.index("«") + 1 : text.index("»")]
    latents = pd.read_parquet(lm_store / "latents.parquet")
    acts_dir = lm_store / "activations" / "final" / "blocks.1.hook_resid_post"
    acts = load_activations(acts_dir).acts
    shown = [line for line in md.splitlines() if line.startswith("Configuration d_sae")]
    assert shown, md
    sae_id = shown[0].split("SAE ")[1].split(",")[0]
    unit_id = latents[latents.sae_id == sae_id].unit_id.iloc[0]
    sae = load_sae(lm_store / "units" / unit_id / "saes" / sae_id)
    codes = sae.encode(acts)[:, latent]
    top = int(codes.argmax())
    assert float(codes[top]) == pytest.approx(activation, rel=1e-2)
    ids = load_safetensors(acts_dir / "inputs.safetensors")["token_ids"]
    strings = load_token_strings(acts_dir)
    assert marked == strings[int(ids[top])].replace("\n", "⏎")


def test_rerun_is_up_to_date(lm_store, tiny_gpt2, corpus, tmp_path):
    study = lm_study(tmp_path, tiny_gpt2, corpus)
    before = (
        (lm_store / "activations" / "final" / "blocks.1.hook_resid_post" / "acts.safetensors")
        .stat()
        .st_mtime_ns
    )
    code, stdout, stderr = invoke_husai("run", str(study), "--out", str(lm_store))
    assert code == 0, stderr
    assert "2 unit(s) already done, 0 to run" in stderr
    after = (
        (lm_store / "activations" / "final" / "blocks.1.hook_resid_post" / "acts.safetensors")
        .stat()
        .st_mtime_ns
    )
    assert before == after


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "grid": {
                    "hooks": ["blocks.0.hook_mlp_out"],
                    "archs": ["topk"],
                    "widths": [8],
                    "k": [2],
                }
            },
            "a language model study reads blocks.L.hook_resid_post",
        ),
        ({"transformer_run": "artifacts/default_model"}, "remove transformer_run"),
    ],
)
def test_config_errors_are_one_line(tmp_path, tiny_gpt2, corpus, changes, message):
    study = lm_study(tmp_path, tiny_gpt2, corpus, **changes)
    with pytest.raises(ConfigError, match=message) as err:
        StudyConfig.from_yaml(study)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("hook", "text", "message"),
    [
        ("blocks.5.hook_resid_post", None, "--layer 5"),
        ("blocks.1.hook_resid_post", "missing.txt", "missing.txt"),
    ],
)
def test_bad_layer_or_text_exits_2_and_writes_nothing(
    tmp_path, tiny_gpt2, corpus, hook, text, message
):
    source = {
        "model": str(tiny_gpt2),
        "text": [str(tmp_path / text) if text else str(corpus)],
        "context": 16,
    }
    grid = {"hooks": [hook], "archs": ["topk"], "widths": [16], "k": [2]}
    study = lm_study(tmp_path, tiny_gpt2, corpus, language_model=source, grid=grid)
    out = tmp_path / "store"
    code, stdout, stderr = invoke_husai("run", str(study), "--out", str(out))
    assert code == 2 and message in stderr and "language_model" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not out.exists()


def test_token_strings_cover_every_row(lm_store):
    acts_dir = lm_store / "activations" / "final" / "blocks.1.hook_resid_post"
    ids = load_safetensors(acts_dir / "inputs.safetensors")["token_ids"]
    strings = load_token_strings(acts_dir)
    assert set(torch.unique(ids).tolist()) == set(strings)
