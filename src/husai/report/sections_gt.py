"""Sections 5 (ground truth) and 7 (geometry): SAE decoders against the Fourier planes.

Per-configuration numbers (GT-MCC, plane coverage, purity) come from
``results.parquet``. The angle panels, projections and purity heatmaps are computed
here from the SAE weights (``units/*/saes/*/sae_weights.safetensors``) and the
planes (``activations/**/planes.safetensors``), for two configurations per hook: the
most and the least stable by alive-only PW-MCC. A latent counts as lying in a plane
when at least 25% of its squared norm is inside it (in-plane norm >= 0.5).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from husai.model.fourier import FourierPlanes
from husai.report import figures, geometry, verdict
from husai.report.render import Block, Figure, Note, Para, Section, Table, fmt, fmt_param
from husai.report.store import RunView

IN_PLANE = 0.5
KEYS = ["arch", "d_sae", "hook", "checkpoint", "sparsity"]
GT_COLS = [
    ("gt_mcc", "gt_mcc_baseline", ""),
    ("plane_coverage_mean", "plane_coverage_baseline", "plane_coverage_mean_baseline_subspace"),
    (
        "plane_coverage_weighted",
        "plane_coverage_weighted_baseline",
        "plane_coverage_weighted_baseline_subspace",
    ),
]
"""(value, unit-sphere baseline, principal-subspace baseline) columns of results.parquet."""


def ok_results(store: RunView) -> Any:
    r = store.results
    if r is None or r.empty:
        return None
    r = r[r.status == "ok"] if "status" in r else r
    return r if {"arch", "d_sae", "hook", "sparsity"} <= set(r.columns) else None


def ground_truth_section(store: RunView) -> Section:
    sec = Section("5. Ground truth", "ground-truth")
    res = ok_results(store)
    if res is None:
        return sec.add(
            Note(
                store.missing.get(
                    "results.parquet", "results.parquet has no successful rows with config columns"
                )
            )
        )
    cols = [c for cols in GT_COLS for c in cols if c and c in res] + (
        ["purity_mean"] if "purity_mean" in res else []
    )
    if not cols:
        sec.add(
            Note(
                "results.parquet has no ground-truth columns (gt_mcc, plane_coverage_mean, purity_mean)."
            )
        )
    else:
        sec.subsections.append(_gt_table(res, cols))
    sec.subsections.append(_angle_panels(store, res))
    return sec


def _gt_table(res: Any, cols: list[str]) -> Section:
    sub = Section("GT-MCC and plane coverage per configuration", "gt-table")
    agg = res.groupby(KEYS + ["sparsity_name"], sort=True)[cols].mean().reset_index()
    n = res.groupby(KEYS).size().rename("n").reset_index()
    agg = agg.merge(n, on=KEYS)
    agg["label"] = [verdict.label(r) for r in agg.itertuples()]
    rows = [[r["label"], int(r["n"]), *(r[c] for c in cols)] for _, r in agg.iterrows()]
    sub.add(
        Para(
            "plane_coverage_mean averages the key planes equally, though most of them carry "
            "under 1% of the activations' variance; plane_coverage_weighted weights each key "
            "plane by its share of the variance (R^2). Baselines: random unit decoders of the "
            "same width (_baseline) and random directions in the principal subspace holding 95% "
            "of the activations' variance (_baseline_subspace), where the planes themselves lie."
        ),
        Table(
            ["configuration", "seeds", *cols],
            rows,
            "Mean over seeds (results.parquet); the columns containing _baseline are random-dictionary baselines.",
        ),
    )
    pairs = []
    for v, *bases in GT_COLS:
        have = [agg[b].to_numpy(dtype=float) for b in bases if b and b in agg]
        if v in agg and have:
            agg[f"{v}_hardest"] = np.fmax.reduce(have) if len(have) > 1 else have[0]
            pairs.append((v, f"{v}_hardest"))
        elif v in agg:
            pairs.append((v, ""))
    if not pairs:
        return sub.add(
            Note(
                "results.parquet has neither gt_mcc nor plane_coverage_mean, so no recovery figure."
            )
        )
    for hook, g in agg.groupby("hook", sort=True):
        name = f"gt_{hook}".replace(".", "_")
        sub.add(
            Figure(
                name,
                figures.per_config_bars(g, pairs, f"Ground-truth recovery, {hook}"),
                f"Ground-truth recovery per configuration at {hook}.",
            )
        )
    return sub


def chosen_configs(store: RunView) -> list[tuple[str, Any]]:
    """Per (hook, checkpoint): the most and the least stable config (primary summary rows)."""
    df, _ = verdict.primary_table(store.summary)
    if df is None:
        return []
    out = []
    for _, g in df.groupby(["hook", "checkpoint"], sort=True):
        best, worst = g.loc[g["mean"].idxmax()], g.loc[g["mean"].idxmin()]
        out.append(("most stable", best))
        if worst.group_id != best.group_id:
            out.append(("least stable", worst))
    return out


def seed_decoders(store: RunView, res: Any, cfg: Any, d_in: int) -> list[tuple[str, Any]]:
    """(seed label, W_dec [S, d]) for each seed of ``cfg`` whose weights can be read."""
    sel = res[
        np.logical_and.reduce(
            [res[k].astype(str) == str(cfg[k]) for k in ("arch", "hook", "checkpoint")]
        )
        & (res.d_sae == cfg["d_sae"])
        & np.isclose(res.sparsity.astype(float), float(cfg["sparsity"]))
    ]
    out = []
    for r in sel.sort_values("seed" if "seed" in sel else "sae_id").itertuples():
        dec = (
            store.decoder(r.unit_id, r.sae_id, d_in)
            if {"unit_id", "sae_id"} <= set(sel.columns)
            else None
        )
        if dec is not None:
            out.append((f"seed {getattr(r, 'seed', r.sae_id)}", dec))
    return out


def _strongest_key_planes(planes: FourierPlanes, per_freq: int) -> list[int]:
    """Indices of the ``per_freq`` key planes with the largest variance share per key frequency."""
    freq_P, key_P = planes.freq.tolist(), planes.is_key.tolist()
    r2 = planes.r2.tolist() if planes.r2 is not None else [0.0] * len(freq_P)
    out = []
    for f in planes.key_freqs:
        idx = [i for i in range(len(r2)) if key_P[i] and freq_P[i] == f]
        out += sorted(idx, key=lambda i: -r2[i])[:per_freq]
    return out


def _plane_label(planes: FourierPlanes, i: int) -> str:
    v = planes.variable[i] if i < len(planes.variable) else ""
    return f"k={int(planes.freq[i])}" + (f" ({v})" if v else "")


def _angle_panels(store: RunView, res: Any) -> Section:
    sub = Section("How each seed's latents tile the key planes", "gt-angles")
    configs = chosen_configs(store)
    if not configs:
        return sub.add(
            Note("No configuration to show: summary.parquet has no alive-only PW-MCC rows.")
        )
    sub.add(
        Para(
            f"For each key frequency, the plane with the largest variance share; each ring is one seed, each dot a latent with at least {IN_PLANE**2:.0%} of its squared norm in the plane (at its angle in the plane; larger dots lie more fully in it). Matching angles across rings mean the seeds learnt the same directions; equal counts at shifted angles mean the same plane in another rotation."
        )
    )
    for kind, cfg in configs:
        sub.add(*_config_angles(store, res, kind, cfg))
    return sub


def _config_angles(store: RunView, res: Any, kind: str, cfg: Any) -> list[Block]:
    planes = store.planes(cfg["hook"], str(cfg["checkpoint"]))
    title = f"{kind}: {cfg['label']} (alive PW-MCC {fmt(cfg['mean'])})"
    if planes is None:
        return [Note(f"{title}: no planes.safetensors for this hook.")]
    decs = seed_decoders(store, res, cfg, planes.basis.shape[-1])
    if not decs:
        return [Note(f"{title}: no readable SAE weights for its seeds.")]
    panels, rows = [], []
    for i in _strongest_key_planes(planes, per_freq=1):
        seeds = []
        for seed, dec in decs:
            xy_S2 = geometry.plane_coords(dec, planes.basis[i : i + 1].double().numpy())[:, 0]
            norm_S = np.linalg.norm(xy_S2, axis=1)
            keep = norm_S >= IN_PLANE
            seeds.append((seed, np.arctan2(xy_S2[keep, 1], xy_S2[keep, 0]), norm_S[keep]))
        panels.append((_plane_label(planes, i), seeds))
        gap, rot = _pair_gaps([a for _, a, _ in seeds])
        rows.append([_plane_label(planes, i), *(len(a) for _, a, _ in seeds), gap, rot])
    if not panels:
        return [Note(f"{title}: the planes file marks no key planes.")]
    name = f"angles_{kind}_{cfg['group_id']}".replace(" ", "_").replace("/", "_").replace(".", "_")
    cols = ["plane", *(s for s, _ in decs), "angle gap (deg)", "after best rotation (deg)"]
    cap = f"Latents in each plane per seed, and the mean nearest-angle gap between seeds' latents over seed pairs, as drawn and after the best common rotation of each pair: {title}"
    gaps = np.array([r[-2:] for r in rows], dtype=float)
    blocks: list[Block] = [
        Figure(name, figures.plane_angles(panels, title), title),
        Table(cols, rows, cap),
    ]
    if np.isfinite(gaps).all(axis=1).any():
        g0, g1 = np.nanmean(gaps[:, 0]), np.nanmean(gaps[:, 1])
        blocks.append(
            Para(
                f"{title}: averaged over planes, seeds' latents sit {fmt(g0, 1)} degrees from their nearest counterpart, {fmt(g1, 1)} degrees after rotating each seed pair by its best common angle."
            )
        )
    return blocks


def _pair_gaps(angle_sets: list[np.ndarray]) -> tuple[float, float]:
    """Mean over seed pairs of the angle gap and the rotated gap, in degrees (NaN if none)."""
    pairs = [
        (a, b) for i, a in enumerate(angle_sets) for b in angle_sets[i + 1 :] if len(a) and len(b)
    ]
    if not pairs:
        return float("nan"), float("nan")
    raw = np.mean([geometry.angle_gap(a, b) for a, b in pairs])
    rot = np.mean([geometry.rotated_gap(a, b)[0] for a, b in pairs])
    return float(np.degrees(raw)), float(np.degrees(rot))


def geometry_section(store: RunView) -> Section:
    sec = Section("7. Geometry", "geometry")
    res = ok_results(store)
    if res is None:
        return sec.add(
            Note(store.missing.get("results.parquet", "results.parquet has no successful rows"))
        )
    configs = [c for c in chosen_configs(store) if c[0] == "most stable"]
    if not configs:
        sec.add(Note("No configuration to show: summary.parquet has no alive-only PW-MCC rows."))
    for _, cfg in configs:
        sec.add(*_config_geometry(store, res, cfg))
    sec.subsections.append(_purity_table(store, res))
    return sec


def _config_geometry(store: RunView, res: Any, cfg: Any) -> list[Block]:
    planes = store.planes(cfg["hook"], str(cfg["checkpoint"]))
    if planes is None:
        return [Note(f"{cfg['label']}: no planes.safetensors for this hook.")]
    decs = seed_decoders(store, res, cfg, planes.basis.shape[-1])
    if not decs:
        return [Note(f"{cfg['label']}: no readable SAE weights.")]
    seed, dec = decs[0]
    idx = _strongest_key_planes(planes, per_freq=2)[:16]
    coords = geometry.plane_coords(dec, planes.basis[idx].double().numpy())
    panels = [(_plane_label(planes, i), coords[:, n]) for n, i in enumerate(idx)]
    title = f"{cfg['label']}, {seed}"
    freqs, share = geometry.frequency_shares(dec, planes)
    stats = geometry.purity_stats(share)
    order = geometry.dominant_order(share)
    name = f"{cfg['group_id']}".replace("/", "_").replace(".", "_")
    return [
        Figure(
            f"proj_{name}",
            figures.plane_projections(panels, f"Decoder directions in the key planes: {title}"),
            f"Every latent's unit decoder direction projected into the two key planes with the largest variance share per key frequency ({title}); the circle is norm 1.",
        ),
        Figure(
            f"purity_{name}",
            figures.purity_heatmap(share[order], freqs, title),
            f"Share of each latent's squared norm in each key frequency's planes ({title}).",
        ),
        Para(
            f"{title}: {fmt(stats['in_key_fraction'])} of latents have at least half their squared norm in key planes; of those, {fmt(stats['pure_fraction'])} put at least 80% of it in one frequency."
        ),
    ]


def _purity_table(store: RunView, res: Any) -> Section:
    sub = Section(
        "Cluster structure of latents by frequency, all configurations", "geometry-purity"
    )
    rows, missing = [], 0
    keys = KEYS + ["sparsity_name"]
    for key, g in res.groupby(keys, sort=True):
        cfg = dict(zip(keys, key, strict=True))
        planes = store.planes(cfg["hook"], str(cfg["checkpoint"]))
        decs = seed_decoders(store, res, cfg, planes.basis.shape[-1]) if planes is not None else []
        missing += len(g) - len(decs)
        if not decs:
            continue
        st = [geometry.purity_stats(geometry.frequency_shares(d, planes)[1]) for _, d in decs]
        name = cfg["sparsity_name"]
        rows.append(
            [
                cfg["arch"],
                cfg["hook"],
                int(cfg["d_sae"]),
                f"{name}={fmt_param(cfg['sparsity'])}",
                len(decs),
                np.mean([s["in_key_fraction"] for s in st]),
                np.nanmean([s["pure_fraction"] for s in st])
                if any(np.isfinite(s["pure_fraction"]) for s in st)
                else float("nan"),
            ]
        )
    if not rows:
        return sub.add(Note("No SAE weights and planes could be read, so no cluster statistics."))
    sub.add(
        Table(
            ["arch", "hook", "width", "sparsity", "seeds", "in key planes", "single-frequency"],
            rows,
            "Mean over seeds: fraction of latents with >= 50% of their squared norm in key planes; of those, the fraction with >= 80% of it in one frequency.",
        )
    )
    if missing:
        sub.add(
            Note(
                f"{missing} SAE(s) listed in results.parquet had no readable weights or planes and are left out."
            )
        )
    return sub
