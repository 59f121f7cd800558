"""A tiny synthetic study run store (the run store's columns) for the report tests.

``make_run_store(root, scenario)`` writes model curves, two activation dirs with
Fourier planes, SAE dirs whose decoders are built inside those planes, and the four
parquet tables, all from seeded random numbers. Two scenarios give different
result tables:

- ``"topk_stable"``: topk at k=8 reaches alive-only PW-MCC ~0.85 with EV ~0.93, far
  above its random baseline; the other architectures sit just above baseline and
  their seeds' latents are rotated copies of each other inside each plane.
- ``"nothing_beats"``: every configuration is within noise of its random baseline.

Baselines: ``baseline`` is the unit-sphere one; the data-aware ``baseline_subspace`` and
``baseline_acts`` sit 0.10 and 0.15 above it, so the hardest is the activation-row one.
In ``"topk_stable"``, topk w=32 k=4 reaches both thresholds but is 60% dead, so the
verdict must not call it stable.

Nothing here runs a model: it only fabricates files in the agreed layout.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

HOOKS = ("blocks.0.hook_resid_post", "blocks.0.mlp.hook_post")
ARCHS = {"relu": ("l1_coefficient", [1e-4, 1e-3, 1e-2]), "topk": ("k", [4, 8, 16])}
ARCHS["batchtopk"] = ("k", [4, 8, 16])
WIDTHS = (16, 32)
SEEDS = (0, 1, 2)
D_IN = 24
MODULUS = 13
KEY_FREQS = (1, 3, 5)
METRICS = ("pw_mcc", "pw_mcc_alive", "mmcs", "shared_fraction", "activation_mcc")
METRICS = (*METRICS, "subspace_overlap")


def make_run_store(
    root: Path,
    scenario: str = "topk_stable",
    *,
    seed: int = 0,
    hooks: tuple[str, ...] = HOOKS,
    archs: tuple[str, ...] = tuple(ARCHS),
    checkpoints: tuple[str, ...] = ("final",),
) -> Path:
    """Write a complete tiny run store under ``root`` and return it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    _write_model(root / "model", rng)
    bases = {
        (hook, ck): _write_activations(root / "activations" / ck / _slug(hook), hook, ck, rng)
        for hook in hooks
        for ck in checkpoints
    }
    groups = list(_groups(hooks, archs, checkpoints))
    stats = {g: _group_stats(g, scenario, rng) for g in groups}
    results = _results(root, groups, stats, bases, rng)
    pairs = _pairs(groups, stats, rng)
    pd.DataFrame(results).to_parquet(root / "results.parquet")
    pd.DataFrame(pairs).to_parquet(root / "pairs.parquet")
    pd.DataFrame(_summary(groups, stats, pairs)).to_parquet(root / "summary.parquet")
    pd.DataFrame(_dynamics(groups, stats)).to_parquet(root / "dynamics.parquet")
    _write_json(root / "failures.json", [_FAILURE])
    _write_json(root / "provenance.json", _PROVENANCE)
    (root / "study.yaml").write_text("name: tiny\nseeds: [0, 1, 2]\n")
    return root


_FAILURE = {
    "unit_id": "u-failed-relu",
    "arch": "relu",
    "error": "TrainingDivergedError: loss became NaN at step 17",
}
_PROVENANCE = {
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "packages": {"torch": "2.13.0", "sae-lens": "6.54.0", "numpy": "2.4.6"},
    "machine": {"platform": "Linux-x86_64", "cpu_count": 2, "gpu": None},
    "study": {"name": "tiny", "seeds": [0, 1, 2]},
}


def _slug(hook: str) -> str:
    return hook.replace(".", "_")


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _write_model(mdir: Path, rng: np.random.Generator) -> None:
    steps = [0, 1, 3, 10, 30, 100, 300, 1000, 3000]
    grok = np.array([0 if s < 1000 else 1 for s in steps], dtype=float)
    curves = {
        "step": steps,
        "train_loss": [float(4.0 / (1 + s / 10) + 1e-3) for s in steps],
        "test_loss": [float(4.5 - 4.4 * g) for g in grok],
        "train_acc": [float(min(1.0, 0.1 + s / 100)) for s in steps],
        "test_acc": [float(0.05 + 0.95 * g) for g in grok],
    }
    norms = rng.uniform(0.1, 0.3, size=MODULUS // 2 + 1)
    norms[list(KEY_FREQS)] = [2.0, 1.6, 1.2]
    prog = {"step": steps[1:], "restricted_loss": [float(3.0 / math.sqrt(s)) for s in steps[1:]]}
    prog |= {"excluded_loss": [float(1 + math.log10(s)) for s in steps[1:]]}
    prog |= {"test_loss": curves["test_loss"][1:], "train_loss": curves["train_loss"][1:]}
    fourier = {"key_freqs": list(KEY_FREQS), "we_norms": norms.tolist(), "wl_norms": norms.tolist()}
    fourier |= {"gini_we": 0.71, "top8_share_we": 0.93, "progress": prog}
    _write_json(mdir / "curves.json", curves)
    _write_json(mdir / "fourier.json", fourier)
    _write_json(mdir / "metrics.json", {"test_acc": 1.0, "train_acc": 1.0, "grok_step": 1000})
    (mdir / "config.yaml").write_text("task:\n  modulus: 13\n")


def _write_activations(adir: Path, hook: str, ck: str, rng: np.random.Generator) -> torch.Tensor:
    """Planes: (a, b) for each key freq plus one non-key plane; returns basis [P, 2, d]."""
    q_DD, _ = np.linalg.qr(rng.normal(size=(D_IN, D_IN)))
    freqs = [f for f in KEY_FREQS for _ in range(2)] + [2]
    variables = ["a", "b"] * len(KEY_FREQS) + ["a+b"]
    basis_P2D = torch.tensor(
        np.ascontiguousarray(q_DD.T[: 2 * len(freqs)]).reshape(len(freqs), 2, D_IN),
        dtype=torch.float32,
    )
    is_key = torch.tensor([f in KEY_FREQS for f in freqs])
    r2 = torch.tensor([0.2, 0.18, 0.15, 0.14, 0.1, 0.09, 0.01])
    adir.mkdir(parents=True, exist_ok=True)
    save_file(
        {"basis": basis_P2D, "freq": torch.tensor(freqs), "r2": r2, "is_key": is_key},
        str(adir / "planes.safetensors"),
    )
    meta = {"hook": hook, "checkpoint": ck, "position": -1, "modulus": MODULUS, "op": "add"}
    meta |= {"d": D_IN}
    meta |= {"n_inputs": MODULUS**2, "effective_rank": 7.5 if "resid" in hook else 9.25}
    meta |= {"plane_variables": variables, "key_freqs": list(KEY_FREQS)}
    meta |= {"key_r2_total": float(r2[is_key].sum()), "r2_by_variable": {"a": 0.45, "b": 0.41}}
    _write_json(adir / "meta.json", meta)
    return basis_P2D


def _groups(hooks: tuple[str, ...], archs: tuple[str, ...], checkpoints: tuple[str, ...]):
    for arch in archs:
        sname, values = ARCHS[arch]
        for width, hook, sp, ck in itertools.product(WIDTHS, hooks, values, checkpoints):
            yield (arch, width, hook, sname, sp, ck)


def _group_stats(g: tuple, scenario: str, rng: np.random.Generator) -> dict:
    arch, width, _hook, _sname, sp, ck = g
    scenario = scenario if ck == "final" else "nothing_beats"  # earlier checkpoints: no structure
    base = 0.30 + 0.002 * width
    ev = (
        0.80
        + 0.05 * (width / 16)
        + (0.02 * math.log2(sp) if arch != "relu" else -0.01 * math.log10(sp))
    )
    ev = min(ev, 0.99)
    if scenario == "topk_stable" and arch == "topk":
        mean = 0.85 - 0.08 * abs(math.log2(sp / 8)) - 0.03 * (width == 32)
    elif scenario == "topk_stable":
        mean = base + 0.05 + 0.01 * rng.normal()
    else:
        mean = base - 0.01 + 0.002 * rng.normal()
    stable = scenario == "topk_stable" and arch == "topk"
    dead = 0.6 if stable and width == 32 and sp == 4 else 0.1
    return {
        "dead": dead,
        "base": base,
        "mean": mean,
        "ev": ev,
        "stable": stable,
        "l0": sp if arch != "relu" else 9.0,
        "cover": 0.95 if scenario == "topk_stable" else 0.25,
    }


def _decoder(basis_P2D: torch.Tensor, width: int, stable: bool, seed: int) -> torch.Tensor:
    """Latents 0..2*P_key-1 lie in the key planes; unstable seeds rotate them in-plane."""
    gen = torch.Generator().manual_seed(1000 + seed)
    dec_SD = torch.randn(width, D_IN, generator=gen)
    rot = 0.0 if stable else 0.9 * seed
    for i in range(min(width, 12)):
        plane, half = divmod(i, 2)
        angle = rot + half * math.pi / 2 + 0.3 * plane
        dec_SD[i] = math.cos(angle) * basis_P2D[plane, 0] + math.sin(angle) * basis_P2D[plane, 1]
        dec_SD[i] += 0.05 * torch.randn(D_IN, generator=gen)
    return dec_SD / dec_SD.norm(dim=1, keepdim=True)


def _unit_id(g: tuple) -> str:
    arch, width, hook, _s, _v, ck = g
    return f"{arch}-w{width}-{_slug(hook)}-{ck}"


def _results(root, groups, stats, bases, rng) -> list[dict]:
    rows = []
    for g in groups:
        arch, width, hook, sname, sp, ck = g
        st = stats[g]
        for seed in SEEDS:
            sae_id = f"{sname}{sp:g}-s{seed}"
            sdir = root / "units" / _unit_id(g) / "saes" / sae_id
            sdir.mkdir(parents=True, exist_ok=True)
            dec_SD = _decoder(bases[(hook, ck)], width, st["stable"], seed)
            w = {"W_dec": dec_SD, "W_enc": dec_SD.T.contiguous(), "b_enc": torch.zeros(width)}
            save_file(w | {"b_dec": torch.zeros(D_IN)}, str(sdir / "sae_weights.safetensors"))
            ev = st["ev"] + 0.005 * rng.normal()
            gt = 0.9 if st["stable"] else 0.45 + 0.05 * rng.normal()
            rows.append(
                {"study": "tiny", "unit_id": _unit_id(g), "sae_id": sae_id, "status": "ok"}
                | {"error": "", "arch": arch, "d_sae": width, "hook": hook, "checkpoint": ck}
                | {"sparsity_name": sname, "sparsity": float(sp), "seed": seed, "steps": 500}
                | {"converged_step": 420, "explained_variance": ev, "mse": 1 - ev, "l0": st["l0"]}
                | {"dead_fraction": st["dead"], "n_alive": int((1 - st["dead"]) * width)}
                | {"loss_recovered": ev, "gt_mcc": gt, "gt_mcc_baseline": 0.3}
                | {"plane_coverage_mean": st["cover"], "plane_coverage_baseline": 0.2}
                | {"plane_coverage_mean_baseline_subspace": 0.3}
                | {"plane_coverage_weighted": min(1.0, st["cover"] + 0.02)}
                | {"plane_coverage_weighted_baseline": 0.2}
                | {"plane_coverage_weighted_baseline_subspace": 0.35}
                | {"purity_mean": 0.8 if st["stable"] else 0.5}
            )
    bad = {k: (float("nan") if isinstance(v, float) else v) for k, v in rows[0].items()}
    rows.append(bad | {"status": "failed", "error": _FAILURE["error"], "sae_id": ""})
    return rows


def _pairs(groups, stats, rng) -> list[dict]:
    rows = []
    for g in groups:
        arch, width, hook, sname, sp, ck = g
        st = stats[g]
        for (sa, sb), metric in itertools.product(itertools.combinations(SEEDS, 2), METRICS):
            shift = -0.1 if metric == "pw_mcc" else 0.0
            value = st["mean"] + shift + 0.01 * rng.normal()
            base = st["base"] + shift + 0.002 * rng.normal()
            rows.append(
                {"group_id": _group_id(g), "arch": arch, "d_sae": width, "hook": hook}
                | {"checkpoint": ck, "sparsity_name": sname, "sparsity": float(sp)}
                | {"seed_a": sa, "seed_b": sb, "metric": metric, "value": value, "baseline": base}
                | {"baseline_kind": "random_unit", "baseline_init": base + 0.01}
                | {"baseline_subspace": base + 0.10, "baseline_acts": base + 0.15}
                | {"baseline_hardest": base + 0.15, "excess_hardest": value - base - 0.15}
                | {"excess": value - base, "ratio": value / base, "n_a": width, "n_b": width}
                | {"dead_included": metric == "pw_mcc"}
            )
    return rows


def _group_id(g: tuple) -> str:
    return f"{_unit_id(g)}/{g[4]:g}"


def _summary(groups, stats, pairs) -> list[dict]:
    df = pd.DataFrame(pairs)
    rows = []
    for g in groups:
        arch, width, hook, sname, sp, ck = g
        for metric in METRICS:
            sel = df[(df.group_id == _group_id(g)) & (df.metric == metric)]
            mean, half = float(sel.value.mean()), float(2 * sel.value.std() / math.sqrt(len(sel)))
            base, hard = float(sel.baseline.mean()), float(sel.baseline_hardest.mean())
            rows.append(
                {"group_id": _group_id(g), "arch": arch, "d_sae": width, "hook": hook}
                | {"checkpoint": ck, "sparsity_name": sname, "sparsity": float(sp)}
                | {"metric": metric, "mean": mean, "ci_lo": mean - half, "ci_hi": mean + half}
                | {"baseline": base, "baseline_init": base + 0.01, "excess": mean - base}
                | {
                    "ratio": mean / base,
                    "n_pairs": len(sel),
                    "explained_variance_mean": stats[g]["ev"],
                }
                | {"baseline_subspace": float(sel.baseline_subspace.mean())}
                | {"baseline_acts": float(sel.baseline_acts.mean()), "baseline_hardest": hard}
                | {"excess_hardest": mean - hard, "l0_mean": float(stats[g]["l0"])}
                | {"dead_fraction_mean": stats[g]["dead"]}
            )
    return rows


def _dynamics(groups, stats) -> list[dict]:
    rows = []
    for g in groups:
        arch, width, hook, _sname, sp, ck = g
        st = stats[g]
        for step, metric in itertools.product((1, 10, 100, 500), ("pw_mcc", "pw_mcc_alive")):
            frac = min(1.0, math.log10(step) / 2)
            value = st["base"] + (st["mean"] - st["base"]) * frac
            rows.append(
                {"group_id": _group_id(g), "arch": arch, "d_sae": width, "hook": hook}
                | {"checkpoint": ck, "sparsity": float(sp), "step": step}
                | {"metric": metric, "value": value}
                | {"baseline": st["base"], "baseline_hardest": st["base"] + 0.15}
            )
    return rows
