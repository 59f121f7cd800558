"""Benchmark: a consensus SAE of n seeds against its seeds on a planted dictionary.

Song et al. 2025's synthetic setting (:mod:`husai.tasks.synthetic`: x = s @ A, ``features``
true unit directions in ``dims`` dimensions, ``k`` active per sample). Trains ``seeds``
TopK SAEs of ``width`` latents in one batched group, builds their consensus
(:func:`husai.metrics.consensus_sae.build_consensus`, TopK at the same k) and prints, per
data seed:

- GT-MCC (strict: Hungarian on signed cosine, mean over the true directions, 0 for one
  left unmatched) of every seed, of the consensus, and of a *same-width baseline*: a fresh
  TopK SAE with as many latents as the consensus kept, trained from scratch with the same
  recipe (is the consensus better than simply training a narrower SAE?);
- explained variance and L0 of each on the same activations;
- how well trust's per-latent stability (:mod:`husai.metrics.trust`, tau 0.7) separates the
  seeds' true latents (decoder cosine >= 0.9 to a true direction) from spurious ones, as a
  Mann-Whitney AUC over the latents that fire (chance 0.5);
- wall time of the seeds' training and of build_consensus.

``--scale`` only times :func:`~husai.metrics.consensus.cluster_latents` at the trust
benchmark's size: 5 noisy permuted copies of 16,384 random directions in 768-d (pairwise
cosine ~0.86), plus 4,096 random latents each.

    python benchmarks/consensus.py            # 32-d, 128 features, k 8, width 192, 5 seeds
    python benchmarks/consensus.py --quick    # the unit test's size (12-d, 24 features, k 3)
    python benchmarks/consensus.py --dims 64 --features 256 --k 4 --width 384 --steps 3000

The default is a hard regime (8 of 128 features active in 32-d, 1,000 steps) where seeds
disagree; in easy ones (the last line) every seed recovers the dictionary and the consensus
can only tie.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from husai.config import SAETrainConfig, TopKSAEConfig
from husai.metrics.consensus import cluster_latents
from husai.metrics.consensus_sae import build_consensus, consensus_report
from husai.metrics.matching import match, unit_rows
from husai.metrics.trust import trust_table
from husai.saes import evaluate, load_sae, save_sae, train_group
from husai.tasks.synthetic import make_synthetic


def gt_mcc(truth: torch.Tensor, dec: torch.Tensor) -> float:
    return float(match(truth, dec).per_a(0.0).mean())


def auc(positive: np.ndarray, score: np.ndarray) -> float:
    ranks = rankdata(score)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_cfg(args: argparse.Namespace, seeds: list[int]) -> SAETrainConfig:
    return SAETrainConfig(
        init_seeds=seeds,
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup_steps=min(50, args.steps // 10),
        plateau_tol=0.0,
        n_snapshots=0,
        dead_window=max(5000, 4 * args.batch),
    )


def stability_auc(seeds: list, data) -> tuple[float, int, int]:
    table = trust_table(seeds, tau=0.7)
    truth = unit_rows(data.truth)
    best = torch.cat([(unit_rows(s.W_dec) @ truth.T).max(1).values for s in seeds]).numpy()
    alive = torch.cat([(s.encode(data.x) > 0).any(0) for s in seeds]).numpy()
    true = best[alive] >= 0.9
    return auc(true, table.stability[alive]), int(true.sum()), int((~true).sum())


def run(args: argparse.Namespace, data_seed: int, root: Path) -> dict[str, float]:
    data = make_synthetic(args.dims, args.features, args.k, args.samples, seed=data_seed)
    t0 = time.perf_counter()
    cfg = TopKSAEConfig(d_sae=args.width, k=args.k)
    group = train_group(data.x, [cfg], train_cfg(args, list(range(args.seeds))))
    t_train = time.perf_counter() - t0
    dirs = [
        save_sae(root / f"d{data_seed}_seed{i}", group, i, hook_name="synthetic")
        for i in range(args.seeds)
    ]
    t0 = time.perf_counter()
    result = build_consensus(
        dirs, data.x, root / f"d{data_seed}_consensus", tau=args.tau, k=args.k,
        steps=args.steps, batch_size=args.batch, lr=args.lr,
    )  # fmt: skip
    t_cons = time.perf_counter() - t0
    print(consensus_report(result))
    seeds = [load_sae(d) for d in dirs]
    narrow = train_group(
        data.x, [TopKSAEConfig(d_sae=result.n_kept, k=args.k)], train_cfg(args, [1000])
    )
    narrow_ev = evaluate(narrow.sae, data.x, index=0)
    seed_gt = [gt_mcc(data.truth, s.W_dec) for s in seeds]
    the_auc, n_true, n_spur = stability_auc(seeds, data)
    return {
        "seed_gt_mean": float(np.mean(seed_gt)),
        "seed_gt_min": min(seed_gt),
        "seed_gt_max": max(seed_gt),
        "consensus_gt": gt_mcc(data.truth, load_sae(result.out_dir).W_dec),
        "narrow_gt": gt_mcc(data.truth, narrow.sae.W_dec[0]),
        "seed_ev": float(np.mean([e["explained_variance"] for e in result.seed_eval])),
        "consensus_ev": result.consensus_eval["explained_variance"],
        "narrow_ev": narrow_ev["explained_variance"],
        "consensus_l0": result.consensus_eval["l0"],
        "kept": result.n_kept,
        "auc": the_auc,
        "n_true": n_true,
        "n_spurious": n_spur,
        "t_train": t_train,
        "t_consensus": t_cons,
    }


def clustering_at_scale(n: int, latents: int, d: int, noise: float) -> None:
    """Time cluster_latents on n noisy permuted copies of one random dictionary (the trust
    benchmark's size), each copy also holding ``latents // 4`` random extra latents."""
    gen = torch.Generator().manual_seed(0)
    base = unit_rows(torch.randn(latents, d, generator=gen))
    decs = []
    for _ in range(n):
        perm = torch.randperm(latents, generator=gen)
        copy = base[perm] + noise * torch.randn(latents, d, generator=gen) / d**0.5
        decs.append(torch.cat([copy, torch.randn(latents // 4, d, generator=gen)]))
    t0 = time.perf_counter()
    clusters = cluster_latents(decs, tau=0.7)
    elapsed = time.perf_counter() - t0
    full = int((clusters.support == n).sum())
    print(
        f"cluster_latents: {n} x {latents + latents // 4:,} latents at d {d} (noise {noise}): "
        f"{elapsed:.1f} s; {full:,} clusters of {n} (planted {latents:,}), "
        f"{len(clusters.members):,} clusters in all"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the unit test's size")
    p.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tau", type=float, default=0.7)
    for name in ("dims", "features", "k", "samples", "width", "seeds", "steps", "batch"):
        p.add_argument(f"--{name}", type=int, default=None, help="override the preset")
    p.add_argument("--lr", type=float, default=None, help="override the preset")
    p.add_argument(
        "--scale", action="store_true", help="only time the clustering: 5 x 20,480 at d 768"
    )
    args = p.parse_args()
    if args.scale:
        torch.set_num_threads(args.threads)
        clustering_at_scale(5, 16_384, 768, noise=0.4)
        return
    size = (
        dict(dims=12, features=24, k=3, samples=8000, width=36, seeds=5, steps=600, batch=256, lr=1e-2)
        if args.quick
        else dict(dims=32, features=128, k=8, samples=50_000, width=192, seeds=5, steps=1000, batch=512, lr=3e-3)
    )  # fmt: skip
    vars(args).update({k: v for k, v in size.items() if getattr(args, k) is None})
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} at {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    print({k: v for k, v in vars(args).items() if k != "quick"})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ds in args.data_seeds:
            rows.append(run(args, ds, Path(tmp)))
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()})
    head = (
        "data seed | seeds GT-MCC mean [min, max] | consensus | same-width fresh | ratio cons/mean"
    )
    print("\n" + head)
    for ds, r in zip(args.data_seeds, rows, strict=True):
        print(
            f"{ds} | {r['seed_gt_mean']:.4f} [{r['seed_gt_min']:.4f}, {r['seed_gt_max']:.4f}] | "
            f"{r['consensus_gt']:.4f} | {r['narrow_gt']:.4f} | "
            f"{r['consensus_gt'] / r['seed_gt_mean']:.4f}; EV seeds {r['seed_ev']:.4f} "
            f"consensus {r['consensus_ev']:.4f} fresh {r['narrow_ev']:.4f}; kept {r['kept']}; "
            f"AUC {r['auc']:.3f} ({r['n_true']} true, {r['n_spurious']} spurious); "
            f"train {r['t_train']:.1f} s, consensus {r['t_consensus']:.1f} s"
        )


if __name__ == "__main__":
    main()
