"""The study's consensus step: a consensus SAE per configuration, from its seeds.

With ``consensus: {min_seeds: m}`` in a study file, after the units every configuration
(arch, width, hook, checkpoint, sparsity: one group of seeds) gets the SAE of
:func:`husai.metrics.consensus_sae.build_consensus` (what ``husai consensus`` builds): the
seeds' latents clustered by decoder cosine >= tau, the clusters holding latents of >= m
seeds kept, their mean unit rows as the decoder, and a TopK encoder fitted at the seeds'
mean L0, rounded (every architecture, so that all consensus SAEs are refitted alike at an
L0 comparable to their seeds'). Kurochkin et al. 2026 pool cross-seed features this way.

"Stable by construction" is a claim to check, so with ``split: true`` and >= 4 seeds the
seeds are also cut into two disjoint halves (the first ``n // 2`` seeds, and the rest);
each half's clusters in >= ``min(m, n // 2)`` of its seeds give a consensus decoder (no
encoder is fitted: every kept row is a direction that several seeds learned), and the two
decoders are compared as two seeds are, by PW-MCC beside its hardest random baseline for
the same latent counts (:func:`husai.metrics.stability.stability_pair`). The report sets
that beside the single seeds' alive-only PW-MCC of the same configuration.

Files: ``consensus/<unit_id>/<tag>/all/`` (``tag``: :func:`husai.layout.config_tag`) is the
consensus SAE (SAELens format, with ``consensus.json``), reused on a rerun while that file
records the same seed SAEs (by unit id and SAE id, so a moved store still matches), tau,
min_seeds and fit; ``split.safetensors`` beside it holds the two half decoders (``W_dec_a``,
``W_dec_b``), recomputed on every run (clustering only, no fit). One row per configuration
of the current study's units goes to the store's ``consensus.parquet`` (schema
:data:`CONSENSUS_COLUMNS`). A configuration whose seeds share no cluster at the threshold
gets ``n_kept`` 0 and NaN measures; one whose seed SAEs cannot be read gets its ``error``
(one line) instead; neither stops the study. Without ``consensus`` in the study the table is
removed, and the SAEs under ``consensus/`` stay for a later run.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from rich.console import Console
from torch import Tensor

from husai import layout
from husai.activations import load_activations
from husai.config import ConsensusStudyConfig, StudyConfig
from husai.errors import UserError
from husai.io import atomic_save_safetensors, atomic_write_frame
from husai.metrics.consensus import cluster_latents, consensus_decoder
from husai.metrics.consensus_sae import CONSENSUS_FILE, NoClusterKept, build_consensus
from husai.metrics.data_baselines import data_reference
from husai.metrics.ground_truth import ground_truth_summary
from husai.metrics.inputs import as_decoder
from husai.metrics.stability import stability_pair
from husai.progress import progress_bar
from husai.saes import load_sae

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
SPLIT_FILE = "split.safetensors"

CONSENSUS_COLUMNS = {
    "group_id": "string",
    "arch": "string",
    "d_sae": "int64",
    "hook": "string",
    "checkpoint": "string",
    "sparsity_name": "string",
    "sparsity": "float64",
    "n_seeds": "int64",
    "min_seeds": "int64",
    "tau": "float64",
    "k": "Int64",
    "n_kept": "int64",
    "chance_kept": "float64",
    "seed_alive_mean": "float64",
    "explained_variance": "float64",
    "l0": "float64",
    "dead_fraction": "float64",
    "seed_explained_variance": "float64",
    "seed_l0": "float64",
    "gt_mcc": "float64",
    "seed_gt_mcc": "float64",
    "plane_coverage_mean": "float64",
    "seed_plane_coverage_mean": "float64",
    "split_min_seeds": "Int64",
    "split_kept_a": "Int64",
    "split_kept_b": "Int64",
    "split_pw_mcc": "float64",
    "split_baseline_hardest": "float64",
    "error": "string",
}
"""consensus.parquet: one row per configuration. ``seed_*``: the mean over its seed SAEs on
the same activations; ``k``: the refit's TopK k; ``split_*``: the two half-seed consensus
decoders, their kept rows and PW-MCC over all those rows (NaN / null without a split);
``error``: why the configuration has no consensus, if it could not be built (else null)."""

_HEAD = ("group_id", "arch", "d_sae", "hook", "checkpoint", "sparsity_name", "sparsity")
"""The columns that name a configuration, copied from its SAEs' records."""


@dataclass(frozen=True)
class _Group:
    """One configuration's seed SAEs in a finished unit (their unit.json records, by seed)."""

    unit_id: str
    saes: list[dict[str, Any]]

    @property
    def head(self) -> dict[str, Any]:
        return {c: self.saes[0][c] for c in _HEAD}


@dataclass(frozen=True)
class _Built:
    """A consensus SAE on disk and its consensus.json."""

    out: Path
    summary: dict[str, Any]


def run_consensus(
    study: StudyConfig,
    root: Path,
    records: list[dict[str, Any]],
    acts_dirs: dict[tuple[str, str], Path],
    console: Console | None = None,
) -> pd.DataFrame | None:
    """Build (or reuse) every configuration's consensus SAEs; write and return the table.

    ``records``: the unit.json records of the current study's units (not every unit the
    store holds); ``acts_dirs``: the activation folder per (checkpoint, hook). A study
    without ``consensus`` gets no table (one left by an earlier run is removed): None."""
    import pandas as pd

    cfg = study.consensus
    if cfg is None:
        layout.table_path(root, layout.CONSENSUS).unlink(missing_ok=True)
        return None
    tau = study.metrics.shared_tau if cfg.tau is None else cfg.tau
    rows, cache, groups = [], {}, _groups(records)
    with progress_bar("consensus", len(groups), console=console) as bar:
        for group in groups:
            key = (group.head["checkpoint"], group.head["hook"])
            if key not in cache:
                cache.clear()
                acts = load_activations(acts_dirs[key])
                cache[key] = (acts, data_reference(acts.acts))
            acts, data = cache[key]
            try:
                rows.append(_group_row(root, group, cfg, tau, acts, data, study))
            except UserError as err:  # e.g. a seed SAE with NaN weights: this group only
                log.warning("consensus %s: %s", group.head["group_id"], err)
                rows.append({**group.head, "n_seeds": len(group.saes), "n_kept": 0})
                rows[-1] |= {"min_seeds": cfg.min_seeds, "tau": tau, "error": str(err)}
            bar.advance()
    frame = pd.DataFrame(rows, columns=list(CONSENSUS_COLUMNS))
    frame = frame.astype(CONSENSUS_COLUMNS).sort_values("group_id", kind="stable")
    frame = frame.reset_index(drop=True)
    atomic_write_frame(layout.table_path(root, layout.CONSENSUS), frame)
    return frame


def _groups(records: list[dict[str, Any]]) -> list[_Group]:
    """Every configuration of every finished unit, its SAEs in seed order."""
    out = []
    for rec in records:
        if rec.get("status") != "ok":
            continue
        by_group: dict[str, list[dict[str, Any]]] = {}
        for sae in rec["saes"]:
            by_group.setdefault(sae["group_id"], []).append(sae)
        for saes in by_group.values():
            out.append(_Group(rec["unit_id"], sorted(saes, key=lambda s: s["seed"])))
    return out


def _group_row(
    root: Path,
    group: _Group,
    cfg: ConsensusStudyConfig,
    tau: float,
    acts: Any,
    data: Any,
    study: StudyConfig,
) -> dict[str, Any]:
    """One configuration's row: the full consensus SAE (built or reused) and the split."""
    dirs = [layout.sae_dir(root, group.unit_id, s["sae_id"]) for s in group.saes]
    head = group.head
    tag = layout.config_tag(head["sparsity_name"], head["sparsity"])
    where = layout.consensus_dir(root, group.unit_id, tag)
    n = len(dirs)
    row: dict[str, Any] = {**group.head, "n_seeds": n, "min_seeds": cfg.min_seeds, "tau": tau}
    row |= _seed_means(group.saes)
    full = _build(dirs, where / "all", acts.acts, cfg, tau)
    row |= _measures(full, acts, study)
    split_path = where / SPLIT_FILE
    if not (cfg.split and n >= 4):
        split_path.unlink(missing_ok=True)
        return row
    m = min(cfg.min_seeds, n // 2)
    dec_a, dec_b = _split_decoders([as_decoder(d) for d in dirs], n // 2, m, tau)
    atomic_save_safetensors(split_path, {"W_dec_a": dec_a, "W_dec_b": dec_b})
    row |= {"split_min_seeds": m, **_split(dec_a, dec_b, tau, data, study)}
    return row


def _build(
    dirs: list[Path], out: Path, acts: Tensor, cfg: ConsensusStudyConfig, tau: float
) -> _Built | None:
    """The consensus SAE at ``out``, built now unless one of these seeds and settings is
    there; None when no cluster holds latents of ``min_seeds`` seeds."""
    path = out / CONSENSUS_FILE
    want = {"tau": float(tau), "min_seeds": cfg.min_seeds}
    fit = {"steps": cfg.fit_steps, "lr": cfg.fit_lr}
    if path.is_file():
        have = json.loads(path.read_text())
        same_fit = {k: have.get("fit", {}).get(k) for k in fit} == fit
        same_saes = [_sae_key(p) for p in have.get("sae_dirs", [])] == [_sae_key(p) for p in dirs]
        if {k: have.get(k) for k in want} == want and same_fit and same_saes:
            return _Built(out, have)
    try:
        build_consensus(dirs, acts, out, min_seeds=cfg.min_seeds, tau=tau, **fit)
    except NoClusterKept as err:
        log.info("%s: %s", out, err)
        shutil.rmtree(out, ignore_errors=True)  # an earlier consensus with other settings
        return None
    return _Built(out, json.loads(path.read_text()))


def _sae_key(path: str | Path) -> tuple[str, ...]:
    """``(unit_id, "saes", sae_id)``: an SAE's identity in any copy of the store (unit ids
    are content hashes)."""
    return Path(path).parts[-3:]


def _seed_means(saes: list[dict[str, Any]]) -> dict[str, float]:
    """The seed SAEs' mean EV, L0, alive latents and ground truth (their unit.json records)."""

    def mean(values: list[Any]) -> float:
        ok = all(v is not None for v in values)
        return float(np.mean(values)) if ok and values else float("nan")

    return {
        "seed_explained_variance": mean([s["eval"]["explained_variance"] for s in saes]),
        "seed_l0": mean([s["eval"]["l0"] for s in saes]),
        "seed_alive_mean": mean([s["n_alive"] for s in saes]),
        "seed_gt_mcc": mean([s["gt"].get("gt_mcc") for s in saes]),
        "seed_plane_coverage_mean": mean([s["gt"].get("plane_coverage_mean") for s in saes]),
    }


def _measures(built: _Built | None, acts: Any, study: StudyConfig) -> dict[str, Any]:
    """Kept clusters, EV, L0, dead share and ground truth of one consensus SAE."""
    if built is None:
        return {"n_kept": 0}
    summary = built.summary
    out = {
        "n_kept": summary["n_kept"],
        "chance_kept": summary["chance_kept_bound"],
        "k": summary["sparsity"].get("k"),
        **{k: summary["consensus_eval"][k] for k in ("explained_variance", "l0", "dead_fraction")},
    }
    if acts.planes is not None:
        sae = load_sae(built.out)
        with torch.no_grad():
            codes = sae.encode(acts.acts)
        gt = ground_truth_summary(sae.W_dec, acts.planes, codes, study.task.modulus)
        out |= {"gt_mcc": gt["gt_mcc"], "plane_coverage_mean": gt["plane_coverage_mean"]}
    return out


def _split_decoders(
    decoders: list[Tensor], half: int, m: int, tau: float
) -> tuple[Float[Tensor, "A D"], Float[Tensor, "B D"]]:
    """The consensus decoders of the first ``half`` seeds and of the rest, at ``m`` seeds."""
    out = []
    for part in (decoders[:half], decoders[half:]):
        dec, _ = consensus_decoder(part, cluster_latents(part, tau), m)
        out.append(dec)
    return out[0], out[1]


def _split(
    dec_a: Tensor, dec_b: Tensor, tau: float, data: Any, study: StudyConfig
) -> dict[str, Any]:
    """PW-MCC between the two half-seed consensus decoders, with its hardest baseline."""
    out = {"split_kept_a": len(dec_a), "split_kept_b": len(dec_b)}
    if not len(dec_a) or not len(dec_b):
        return out
    vals = stability_pair(
        dec_a, dec_b, tau=tau, trials=study.metrics.baseline_trials, data=data, ranks=[]
    )
    mv = vals["pw_mcc"]
    return out | {
        "split_pw_mcc": float(mv.value),
        "split_baseline_hardest": float(mv.baseline_hardest),
    }
