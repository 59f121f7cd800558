"""``husai trust`` through the real CLI: SAELens-format directories in, table, page and
summary out; every bad input gets one line on stderr, exit 2, and nothing written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from cli_helpers import invoke_husai
from husai.metrics.baselines import random_unit
from husai.model.fourier import FourierPlanes
from husai.report.render import fmt

D, SHARED, OWN = 16, 12, 12


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # so the default --out would show up in tmp_path


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


def write_sae(path: Path, W_dec: torch.Tensor, cfg: dict | None = None) -> Path:
    """An SAE directory in SAELens' format (a 'standard' ReLU SAE with a tied encoder)."""
    d_sae, d_in = W_dec.shape
    path.mkdir(parents=True)
    weights = {
        "W_enc": W_dec.T.contiguous().clone(),
        "W_dec": W_dec.contiguous(),
        "b_enc": torch.full((d_sae,), -0.1),
        "b_dec": torch.zeros(d_in),
    }
    save_file(weights, str(path / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": d_in, "d_sae": d_sae} | (cfg or {})
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture
def saes(tmp_path: Path) -> list[Path]:
    """Three SAEs: latents 0..SHARED-1 shared (slightly perturbed), the rest random."""
    g = torch.Generator().manual_seed(0)
    common = random_unit(SHARED, D, g)
    return [
        write_sae(
            tmp_path / "saes" / f"seed{i}",
            torch.cat(
                [common + 0.01 * torch.randn(SHARED, D, generator=g), random_unit(OWN, D, g)]
            ),
        )
        for i in range(3)
    ]


def _acts(n: int = 200, d: int = D) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(1))


def test_trust_writes_the_table_the_page_and_the_summary(saes: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, err = invoke_husai("trust", *saes, "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["trust.csv", "trust.html", "trust.parquet"]
    table = pd.read_parquet(out / "trust.parquet")
    assert len(table) == 3 * (SHARED + OWN)
    assert table["sae"].tolist()[: SHARED + OWN] == [str(saes[0])] * (SHARED + OWN)
    shared = table["latent"] < SHARED
    assert (table.loc[shared, "stability"] == 1.0).all()
    first = table[shared & (table["sae_index"] == 0)]
    assert first["partner_in_2"].tolist() == list(range(SHARED))  # latent k <-> latent k
    assert (first["partner_in_0"] == -1).all() and first["cos_in_0"].isna().all()
    csv = pd.read_csv(out / "trust.csv")
    assert list(csv.columns) == list(table.columns)
    np.testing.assert_allclose(csv["stability"], table["stability"])
    assert "trust over 3 SAEs (72 latents, d_in 16, tau 0.7)" in stdout
    line = next(x for x in stdout.splitlines() if x.startswith("stable in all 2 other SAE(s)"))
    value, baseline = (float(v) for v in line.split()[6:8])
    assert value == pytest.approx((table["stability"] == 1.0).mean()) and baseline < value
    _check_page(out / "trust.html", len(table))


def _check_page(path: Path, n_rows: int) -> None:
    page = path.read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # self-contained
    assert "data:image/png;base64," in page and "<script>" in page
    data = json.loads(re.search(r'id="data">(.*?)</script>', page, re.S).group(1))
    assert data["cols"][:3] == ["sae_index", "latent", "stability"] and len(data["rows"]) == n_rows


def test_trust_takes_a_directory_of_saes_and_writes_the_default_out(
    saes: list[Path], tmp_path: Path
) -> None:
    code, _, err = invoke_husai("trust", tmp_path / "saes")
    assert code == 0, err
    assert (tmp_path / "trust" / "trust.parquet").is_file()


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors"])
def test_trust_reads_activation_files(saes: list[Path], tmp_path: Path, suffix: str) -> None:
    acts = _acts()
    path = tmp_path / f"acts{suffix}"
    if suffix == ".npy":
        np.save(path, acts.numpy())
    elif suffix == ".pt":
        torch.save(acts, path)
    else:
        save_file({"acts": acts}, str(path))
    code, _, err = invoke_husai("trust", *saes, "--activations", path, "--out", tmp_path / "out")
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "out" / "trust.parquet")
    assert table["fire_freq"].between(0, 1).all() and table["partner_corr"].between(-1, 1).all()
    shared = table["latent"] < SHARED
    assert (
        table.loc[shared, "partner_corr"].mean() > 0.9 > table.loc[~shared, "partner_corr"].mean()
    )


def _activation_dir(tmp_path: Path) -> Path:
    """A HUSAI activation directory with two Fourier planes, the first along e0, e1."""
    acts = _acts()
    out = tmp_path / "acts_dir"
    out.mkdir()
    save_file({"acts": acts}, str(out / "acts.safetensors"))
    inputs = {
        "pairs": torch.zeros(len(acts), 2, dtype=torch.long),
        "train_mask": torch.ones(len(acts), dtype=torch.bool),
    }
    save_file(inputs, str(out / "inputs.safetensors"))
    basis = torch.zeros(2, 2, D)
    basis[0, 0, 0] = basis[0, 1, 1] = basis[1, 0, 2] = basis[1, 1, 3] = 1.0
    planes = FourierPlanes(
        basis,
        torch.tensor([3, 5]),
        ["a", "a+b"],
        torch.tensor([0.4, 0.3]),
        torch.tensor([True, True]),
    )
    save_file(planes.to_tensors(), str(out / "planes.safetensors"))
    meta = {"n_inputs": len(acts), "d": D, "plane_variables": planes.variable}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def test_trust_names_each_latents_plane_from_a_husai_activation_dir(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    dirs = []
    for i in range(2):
        dec = random_unit(8, D, g)
        dec[0] = torch.nn.functional.normalize(torch.tensor([1.0, 1.0] + [0.0] * (D - 2)), dim=0)
        dirs.append(write_sae(tmp_path / f"s{i}", dec))
    code, _, err = invoke_husai(
        "trust", *dirs, "--activations", _activation_dir(tmp_path), "--out", tmp_path / "o"
    )
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "o" / "trust.parquet")
    first = table[table["latent"] == 0]
    assert (first["plane"] == "a k=3").all() and np.allclose(first["plane_purity"], 1.0)
    assert "fire_freq" in table
    held = table[(table["plane"] == "a k=3") & (table["plane_purity"] >= 0.5)]
    per_sae = held.groupby("sae_index").size().reindex([0, 1], fill_value=0)
    page = (tmp_path / "o" / "trust.html").read_text()
    row = (
        f"<tr><td>a k=3</td><td>{per_sae.min()}-{per_sae.max()}</td><td>{len(held)}</td>"
        f"<td>{fmt(held['stability'].mean())}</td></tr>"
    )
    assert "By ground-truth plane" in page and row in page
    assert held["latent"].eq(0).sum() == 2  # the planted latent, in both SAEs


def test_trust_reads_husai_train_saes_output(tmp_path: Path) -> None:
    """HUSAI's own SAE directories (``husai train-saes --out``, as in a run store's
    ``units/<id>/saes/``) and a bare activation directory (acts.safetensors only)."""
    acts_dir = tmp_path / "acts"
    acts_dir.mkdir()
    save_file({"acts": _acts(256)}, str(acts_dir / "acts.safetensors"))
    experiment = {
        "name": "tiny",
        "sae": {"arch": "topk", "d_sae": 32, "k": 2},
        "sae_train": {"init_seeds": [0, 1, 2], "steps": 4, "batch_size": 32, "warmup_steps": 1},
        "tracking": {"mode": "disabled"},
    }
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(experiment))
    code, _, err = invoke_husai(
        "train-saes", cfg, "--activations", acts_dir, "--out", tmp_path / "saes"
    )
    assert code == 0, err
    code, stdout, err = invoke_husai(
        "trust", tmp_path / "saes", "--activations", acts_dir, "--out", tmp_path / "out"
    )
    assert code == 0, err
    assert "trust over 3 SAEs (96 latents, d_in 16, tau 0.7)" in stdout
    table = pd.read_parquet(tmp_path / "out" / "trust.parquet")
    assert table["sae"].nunique() == 3 and table["fire_freq"].between(0, 1).all()


# --- bad input: one line, exit 2, nothing written ------------------------------------


def _refused(tmp_path: Path, args: list[object], *expected: str) -> None:
    before = _files(tmp_path)
    code, _, err = invoke_husai("trust", *args, "--out", tmp_path / "out")
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    assert _files(tmp_path) == before


def test_mismatched_d_in_is_refused(saes: list[Path], tmp_path: Path) -> None:
    wide = write_sae(tmp_path / "wide", random_unit(8, D + 1, torch.Generator().manual_seed(3)))
    _refused(
        tmp_path,
        [*saes[:2], wide],
        "trust: SAEs read different input widths",
        f"{wide} d_in={D + 1}",
    )


def test_a_single_sae_is_refused(saes: list[Path], tmp_path: Path) -> None:
    _refused(tmp_path, [saes[0]], "trust: expected at least 2 SAE directories", "got 1")


def test_an_sae_with_nan_weights_is_refused(saes: list[Path], tmp_path: Path) -> None:
    weights = saes[1] / "sae_weights.safetensors"
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    tensors["W_dec"][2, 3] = float("nan")
    save_file(tensors, str(weights))
    _refused(tmp_path, saes, f"{weights}: W_dec: expected finite values")


@pytest.mark.parametrize("tau", ["0", "-0.5", "1.01", "nan"])
def test_tau_outside_zero_one_is_refused(saes: list[Path], tmp_path: Path, tau: str) -> None:
    _refused(tmp_path, [*saes, "--tau", tau], "tau: expected a decoder cosine in (0, 1]")


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".safetensors", "dir"])
def test_activations_of_the_wrong_width_are_refused(
    saes: list[Path], tmp_path: Path, suffix: str
) -> None:
    acts = _acts(d=D + 2)
    path = tmp_path / ("acts_dir" if suffix == "dir" else f"acts{suffix}")
    if suffix == ".npy":
        np.save(path, acts.numpy())
    elif suffix == ".pt":
        torch.save(acts, path)
    else:
        target = path / "acts.safetensors" if suffix == "dir" else path
        target.parent.mkdir(exist_ok=True)
        save_file({"acts": acts}, str(target))
    _refused(
        tmp_path,
        [*saes, "--activations", path],
        f"activations have width {D + 2}, the SAEs read d_in {D}",
    )


def test_missing_or_unreadable_activations_are_refused(saes: list[Path], tmp_path: Path) -> None:
    _refused(tmp_path, [*saes, "--activations", tmp_path / "none.npy"], "activations not found")
    (tmp_path / "bad.npy").write_text("not numpy")
    _refused(tmp_path, [*saes, "--activations", tmp_path / "bad.npy"], "not a readable tensor file")
    for name, content in (("garbage.pt", b"garbage"), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(content)
        _refused(tmp_path, [*saes, "--activations", tmp_path / name], "not a readable tensor file")
    (tmp_path / "acts.txt").write_text("1 2 3")
    _refused(
        tmp_path,
        [*saes, "--activations", tmp_path / "acts.txt"],
        "expected a .safetensors, .npy or .pt",
    )


def test_a_subspace_rank_below_one_is_refused(saes: list[Path], tmp_path: Path) -> None:
    _refused(tmp_path, [*saes, "--subspace-rank", "0"], "--subspace-rank: expected an integer >= 1")


_NODE_DOM = """
const fs = require('fs');
const page = fs.readFileSync(process.argv[2], 'utf8');
const data = page.match(/id="data">([\\s\\S]*?)<\\/script>/)[1];
const js = page.match(/<script>([\\s\\S]*?)<\\/script>/)[1];
const els = {data: {textContent: data}, lim: {value: '7'}, head: {}, body: {}, count: {}};
const document = {getElementById: (id) => els[id]};
const column = (i) => [...els.body.innerHTML.matchAll(/<tr>(.*?)<\\/tr>/g)].map(
  (m) => [...m[1].matchAll(/<td>(.*?)<\\/td>/g)][i][1]);
eval(js);
const out = {first: column(2), count: els.count.textContent};
els.head.onclick({target: {dataset: {i: '1'}}});
out.latentDesc = column(1);
els.head.onclick({target: {dataset: {i: '1'}}});
out.latentAsc = column(1);
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="runs the page's script with node")
def test_the_page_table_sorts_by_the_clicked_column(saes: list[Path], tmp_path: Path) -> None:
    code, _, err = invoke_husai("trust", *saes, "--out", tmp_path / "out")
    assert code == 0, err
    script = tmp_path / "dom.js"
    script.write_text(_NODE_DOM)
    proc = subprocess.run(
        ["node", script, tmp_path / "out" / "trust.html"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [float(x) for x in out["first"]] == [1.0] * 7  # default: stability, descending
    assert out["count"].startswith("showing 7 of 72 latents, sorted by stability")
    top = OWN + SHARED - 1
    assert [int(x) for x in out["latentDesc"]] == [top] * 3 + [top - 1] * 3 + [top - 2]
    assert [int(x) for x in out["latentAsc"]] == [0, 0, 0, 1, 1, 1, 2]


def _acts_dir(path: Path, d: int = D) -> Path:
    path.mkdir()
    save_file({"acts": _acts(d=d)}, str(path / "acts.safetensors"))
    return path


def test_consensus_builds_an_sae_from_the_shared_latents(saes: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cons"
    args = ["--activations", _acts_dir(tmp_path / "acts"), "--out", out, "--steps", 50]
    code, stdout, err = invoke_husai("consensus", *saes, *args, "--k", 4, "--min-seeds", 3)
    assert code == 0, err
    cfg = json.loads((out / "cfg.json").read_text())
    # the SHARED common latents are in all 3 SAEs; two random unit vectors in D = 16 rarely
    # reach cosine 0.7, and never in all three SAEs at once here
    assert cfg["d_sae"] == SHARED and cfg["d_in"] == D, cfg
    assert f"sae: {out}" in stdout


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--tau", "1.5"], "tau"),
        (["--min-seeds", "4"], "min_seeds"),
    ],
)
def test_consensus_bad_input_is_one_line(
    saes: list[Path], tmp_path: Path, extra: list[str], expected: str
) -> None:
    out = tmp_path / "cons"
    args = ["--activations", _acts_dir(tmp_path / "acts"), "--out", out, *extra]
    code, _, err = invoke_husai("consensus", *saes, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_consensus_refuses_activations_of_another_width(saes: list[Path], tmp_path: Path) -> None:
    acts = _acts_dir(tmp_path / "acts", d=D + 1)
    code, _, err = invoke_husai("consensus", *saes, "--activations", acts, "--out", tmp_path / "c")
    assert code == 2 and f"[n, {D}]" in err, err
    assert not (tmp_path / "c").exists()
