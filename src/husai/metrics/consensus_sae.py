"""A consensus SAE from n SAEs of one input width: ``husai consensus``.

:func:`build_consensus` reads and checks the SAE directories (as ``husai trust`` does,
:func:`husai.metrics.analyze.load_sae_dirs`), clusters their latents and keeps the clusters
at least ``min_seeds`` SAEs share (:mod:`husai.metrics.consensus`, after Kurochkin et al.
2026), takes the kept clusters' mean unit rows as the decoder, fits the encoder with that
decoder fixed (:func:`husai.saes.refit.fit_encoder`: TopK at ``k`` or ReLU at L1 ``l1``;
neither: TopK at the seeds' mean L0, rounded; ``finetune_steps`` then train the decoder
too), and evaluates explained variance and L0 of the consensus and of every seed on the
same activations (:func:`husai.saes.evaluate`).

It writes one SAELens-format directory (:func:`husai.saes.save_sae`, so ``load_sae``,
``husai analyze`` and ``husai trust`` read it): ``cfg.json``, ``sae_weights.safetensors``,
``eval.json`` and ``consensus.json`` (the inputs, the settings, the seeds' and the
consensus' EV and L0, and per consensus latent its support, mean cosine and members as
``[sae_index, latent]``). Everything is written into a temporary sibling directory that is
renamed into place at the end, so an error leaves nothing; every user mistake found
(fewer than 2 SAEs, different d_in, NaN weights, ``min_seeds`` outside [1, n], ``tau``
outside (0, 1], activations of another width, no cluster kept, an ``out_dir`` that
:func:`husai.io.check_out_dir` refuses: an input SAE, a file, or a non-empty directory
without ``consensus.json``) is one :class:`~husai.errors.UserError` line, raised before
any training.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from pydantic import ValidationError
from torch import Tensor

from husai.config import ReluSAEConfig, SAETrainConfig, TopKSAEConfig
from husai.errors import UserError
from husai.io import atomic_write_json, check_out_dir
from husai.metrics.analyze import load_sae_dirs
from husai.metrics.consensus import (
    Clusters,
    chance_kept,
    cluster_latents,
    consensus_decoder,
    default_min_seeds,
)
from husai.metrics.inputs import as_decoder
from husai.metrics.trust import check_tau
from husai.saes import evaluate, load_sae, save_sae
from husai.saes.api import read_activations
from husai.saes.refit import fit_encoder

log = logging.getLogger(__name__)
CONSENSUS_FILE = "consensus.json"


class NoClusterKept(UserError):
    """No cluster holds latents of ``min_seeds`` SAEs: there is no consensus to build."""


@dataclass(frozen=True)
class ConsensusResult:
    """What :func:`build_consensus` wrote and measured."""

    out_dir: Path
    sae_dirs: list[Path]
    d_in: int
    sizes: list[int]
    tau: float
    min_seeds: int
    sparsity: dict[str, Any]
    """``{"arch": "topk", "k": 8}`` or ``{"arch": "relu", "l1_coefficient": 1e-3}``."""
    support: list[int]
    """Seeds behind each consensus latent, in decoder-row order."""
    support_counts: dict[int, int]
    """Clusters (kept or not) by support, support >= 2 only."""
    chance_kept: float
    """Bound on the kept count were decoders random (:func:`~husai.metrics.consensus.chance_kept`)."""
    seed_eval: list[dict[str, float]]
    """EV, MSE, L0 and dead fraction of each input SAE on the activations."""
    consensus_eval: dict[str, float]
    fit: dict[str, Any] = field(default_factory=dict)
    """steps, finetune_steps, batch_size, lr and seed of the encoder fit."""

    @property
    def n_kept(self) -> int:
        return len(self.support)


def build_consensus(
    sae_dirs: Sequence[str | Path],
    activations: str | Path | Tensor,
    out_dir: str | Path,
    *,
    min_seeds: int | None = None,
    tau: float = 0.7,
    k: int | None = None,
    l1: float | None = None,
    steps: int = 2000,
    finetune_steps: int = 0,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
) -> ConsensusResult:
    """Build, fit, evaluate and write the consensus SAE of ``sae_dirs`` (module docstring).

    ``activations``: an activation directory (``acts.safetensors``) or an ``[R, d_in]``
    tensor, those the SAEs read. ``min_seeds`` defaults to :func:`default_min_seeds`;
    ``seed`` is the fit's data-order seed (the fit has no other randomness).
    """
    check_tau(tau)
    if k is not None and l1 is not None:
        raise UserError("consensus: give k (TopK) or l1 (ReLU), not both")
    fit = {
        "steps": steps,
        "finetune_steps": finetune_steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    train_cfg = _train_config(fit)
    dirs, saes = load_sae_dirs([Path(p) for p in sae_dirs], "consensus")
    n, d_in = len(saes), saes[0].d_in
    min_seeds = default_min_seeds(n) if min_seeds is None else min_seeds
    if isinstance(min_seeds, bool) or not (isinstance(min_seeds, int) and 1 <= min_seeds <= n):
        raise UserError(
            f"min_seeds: expected an integer in [1, {n}] (the SAEs given), got {min_seeds}"
        )
    acts_RD = _read_acts(activations, d_in)
    out_dir = check_out_dir(out_dir, dirs, marker=CONSENSUS_FILE)
    decoders = [as_decoder(s) for s in saes]
    clusters = cluster_latents(decoders, tau)
    W_dec_CD, kept = consensus_decoder(decoders, clusters, min_seeds)
    if not kept:
        raise NoClusterKept(
            f"consensus: no cluster holds latents of >= {min_seeds} of the {n} SAEs at tau "
            f"{tau:g} (the largest holds {int(clusters.support.max())}); lower --min-seeds or --tau"
        )
    seed_eval = [_eval(s, acts_RD) for s in saes]
    sae_cfg = _sae_config(len(kept), k, l1, seed_eval)
    b_dec_D = torch.stack([s.b_dec.float() for s in saes]).mean(0)
    sae = fit_encoder(
        acts_RD, W_dec_CD, sae_cfg, train_cfg, b_dec_init_D=b_dec_D, finetune_steps=finetune_steps
    )
    sizes, support = [len(d) for d in decoders], clusters.support
    result = ConsensusResult(
        out_dir=out_dir,
        sae_dirs=dirs,
        d_in=d_in,
        sizes=sizes,
        tau=float(tau),
        min_seeds=min_seeds,
        sparsity={"arch": sae_cfg.arch, sae.arch.sparsity_name: sae.arch.sparsity(sae_cfg)},
        support=support[kept].tolist(),
        support_counts={m: int((support == m).sum()) for m in range(2, n + 1)},
        chance_kept=chance_kept(sizes, d_in, tau, min_seeds),
        seed_eval=seed_eval,
        consensus_eval={},
        fit=fit,
    )
    return _write(result, sae, clusters, kept, acts_RD, _source(saes))


def _train_config(fit: dict[str, Any]) -> SAETrainConfig:
    """The fit's SAETrainConfig; a bad value is one UserError line naming it."""
    if not (isinstance(fit["finetune_steps"], int) and fit["finetune_steps"] >= 0):
        raise UserError(f"finetune_steps: expected an integer >= 0, got {fit['finetune_steps']}")
    try:
        return SAETrainConfig(
            init_seeds=[fit["seed"]],
            data_seed=fit["seed"],
            batch_size=fit["batch_size"],
            steps=fit["steps"],
            lr=fit["lr"],
            warmup_steps=min(50, fit["steps"] // 10),
            dead_window=max(10_000, 4 * fit["batch_size"]),
            n_snapshots=0,
            plateau_tol=0.0,
        )
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"{first['loc'][0]}: {first['msg']}, got {first['input']!r}") from None


def _read_acts(activations: str | Path | Tensor, d_in: int) -> Float[Tensor, "R D"]:
    """The activations as float32 ``[R, d_in]``; one-line errors naming the source."""
    where = "activations"
    if isinstance(activations, Tensor):
        acts = activations
    else:
        where = str(activations)
        if not Path(activations).is_dir():
            raise UserError(f"{where}: not an activation directory (expected acts.safetensors)")
        acts, _ = read_activations(Path(activations))
    acts = acts.detach().float().cpu()
    if acts.dim() != 2 or acts.shape[1] != d_in or len(acts) == 0:
        raise UserError(
            f"{where}: expected activations of shape [n, {d_in}] (the SAEs' d_in), "
            f"got {tuple(acts.shape)}"
        )
    if not bool(torch.isfinite(acts).all()):
        raise UserError(f"{where}: activations contain NaN or inf values")
    return acts


def _sae_config(d_sae: int, k: int | None, l1: float | None, seed_eval: list[dict]) -> Any:
    """TopK at k, ReLU at l1, or (neither) TopK at the seeds' mean L0, rounded."""
    if l1 is not None:
        if not (isinstance(l1, (int, float)) and math.isfinite(l1) and l1 >= 0):
            raise UserError(f"l1: expected a finite coefficient >= 0, got {l1}")
        return ReluSAEConfig(d_sae=d_sae, l1_coefficient=float(l1))
    if k is None:
        k = max(1, round(float(np.mean([e["l0"] for e in seed_eval]))))
        log.info("consensus: k not given; using the seeds' mean L0, rounded: %d", k)
        k = min(k, d_sae)
    if not (isinstance(k, int) and 1 <= k <= d_sae):
        raise UserError(f"k: expected an integer in [1, {d_sae}] (the kept clusters), got {k}")
    return TopKSAEConfig(d_sae=d_sae, k=k)


def _eval(sae: Any, acts_RD: Tensor) -> dict[str, float]:
    out = evaluate(sae, acts_RD)
    keys = ("explained_variance", "mse", "l0", "dead_fraction")
    return {key: float(out[key]) for key in keys}


def _source(saes: Sequence[Any]) -> dict[str, Any]:
    """hook_name / model_name / context_size shared by every input SAE (else left out)."""
    found: dict[str, Any] = {}
    for key in ("hook_name", "model_name", "context_size"):
        values = {json.dumps(s.cfg.get("metadata", {}).get(key, s.cfg.get(key))) for s in saes}
        if len(values) == 1 and (value := json.loads(values.pop())) is not None:
            found[key] = value
    return found


def _write(
    result: ConsensusResult,
    sae: Any,
    clusters: Clusters,
    kept: list[int],
    acts_RD: Tensor,
    source: dict[str, Any],
) -> ConsensusResult:
    """Save into a temporary sibling of ``out_dir``, evaluate the reloaded SAE, rename."""
    out_dir = result.out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        info = {
            "consensus_of": [str(p) for p in result.sae_dirs],
            "tau": result.tau,
            "min_seeds": result.min_seeds,
            **result.fit,
        }
        save_sae(tmp, sae, 0, **source, extra={"consensus": info})
        loaded = load_sae(tmp)
        metrics = evaluate(loaded, acts_RD)
        alive = metrics.pop("alive_mask")
        metrics |= {
            "n_alive": int(alive.sum()),
            "alive_mask": alive.tolist(),
            "n_inputs": len(acts_RD),
        }
        atomic_write_json(tmp / "eval.json", metrics)
        result = replace(result, consensus_eval={k: float(metrics[k]) for k in result.seed_eval[0]})
        atomic_write_json(tmp / CONSENSUS_FILE, _summary_json(result, clusters, kept))
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _replace(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an earlier consensus there is removed after the rename."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name[-8:]}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _summary_json(result: ConsensusResult, clusters: Clusters, kept: list[int]) -> dict[str, Any]:
    return {
        "sae_dirs": [str(p) for p in result.sae_dirs],
        "d_in": result.d_in,
        "sizes": result.sizes,
        "tau": result.tau,
        "min_seeds": result.min_seeds,
        "sparsity": result.sparsity,
        "n_kept": result.n_kept,
        "support_counts": {str(m): c for m, c in result.support_counts.items()},
        "chance_kept_bound": result.chance_kept,
        "seed_eval": result.seed_eval,
        "consensus_eval": result.consensus_eval,
        "fit": result.fit,
        "latents": [
            {
                "support": len(clusters.members[c]),
                "mean_cos": float(clusters.mean_cos[c]),
                "members": [[s, i] for s, i in sorted(clusters.members[c].items())],
            }
            for c in kept
        ],
    }


def consensus_report(result: ConsensusResult) -> str:
    """The terminal summary: kept clusters beside chance, EV and L0 beside the seeds'."""
    n = len(result.sae_dirs)
    by_support = ", ".join(
        f"{m} seeds: {c}" for m, c in sorted(result.support_counts.items(), reverse=True) if c
    )
    arch, (knob, value) = result.sparsity["arch"], list(result.sparsity.items())[1]
    sparsity = f"{arch} {knob}={value:g}"
    lines = [
        f"consensus of {n} SAEs (d_in {result.d_in}, {sum(result.sizes)} latents pooled), "
        f"tau {result.tau:g}, min_seeds {result.min_seeds}",
        f"clusters of >= 2 seeds by support: {by_support or 'none'}",
        f"kept {result.n_kept} clusters (random-decoder bound: {result.chance_kept:.3g}); "
        f"fitted as {sparsity}",
        "",
        f"{'SAE':<40} {'latents':>8} {'EV':>8} {'L0':>8} {'dead':>6}",
    ]
    rows = [
        (str(p), s, e)
        for p, s, e in zip(result.sae_dirs, result.sizes, result.seed_eval, strict=True)
    ]
    mean = {k: float(np.mean([e[k] for e in result.seed_eval])) for k in result.seed_eval[0]}
    rows += [("seed mean", round(float(np.mean(result.sizes))), mean)]
    rows += [(f"consensus: {result.out_dir}", result.n_kept, result.consensus_eval)]
    for name, size, e in rows:
        name = name if len(name) <= 40 else "..." + name[-37:]
        lines.append(
            f"{name:<40} {size:>8} {e['explained_variance']:>8.4f} {e['l0']:>8.2f} "
            f"{e['dead_fraction']:>6.1%}"
        )
    return "\n".join(lines)
