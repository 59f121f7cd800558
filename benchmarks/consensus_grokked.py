"""Benchmark: consensus SAEs and per-latent trust on the grokked model (issue 14, 3b and 3c).

The committed grokked transformer (``artifacts/default_model``, p = 113 addition) at its
final checkpoint; activations of all 12,769 inputs at ``blocks.0.hook_resid_post`` and
``blocks.0.hook_mlp_out`` (:func:`husai.activations.extract_to_dirs`, d = 128 each). For every
configuration (hook, architecture, width, sparsity) ten SAEs, init seeds 0-9, are trained with
the default study's ``sae_train`` (``configs/studies/default.yaml``: 800 steps at most, batch
512, lr 3e-3, plateau stop; snapshots off), one batched :func:`husai.saes.train_group` per
(hook, architecture, width), and saved in SAELens format. Then:

**3(b) two consensus SAEs from disjoint seeds.** :func:`husai.metrics.consensus_sae.build_consensus`
on seeds 0-4 (A) and on seeds 5-9 (B), with the same tau, ``min_seeds`` (default: 3 of 5)
and refit sparsity, and the seeds' steps, batch and lr for the encoder fit (no fine-tuning).
TopK seeds are refitted as TopK at their k; ReLU seeds twice: as ReLU at their L1
coefficient (here that comes out markedly denser than the seeds) and as TopK at the seeds'
mean L0, rounded (build_consensus's default, so L0 is comparable by construction).
Reported per configuration and refit: the alive-only PW-MCC between
A and B (:func:`husai.metrics.stability.stability_pair`; Hungarian on signed decoder cosine
over the latents that fire on the activations) beside its hardest random baseline (same alive
counts; :mod:`husai.metrics.data_baselines`), EV and L0 of A and B beside the ten seeds'
means, and the single-seed alive-only PW-MCC of the same configuration over seeds 0-4
(:func:`~husai.metrics.stability.stability_set`: the mean of 10 pairs, 95% CI resampling
seeds). The goal (issue 14) is met when A and B agree at PW-MCC >= 0.9 and each keeps EV >=
0.9 at a comparable L0, read here as at most 1.25x the seeds' mean L0.

**3(c) does stability predict held-out reappearance?** Each latent of seeds 0-4 that fires on
the activations gets its stability among seeds 0-4 (:func:`husai.metrics.trust.trust_table`
at tau: the share of the 4 other seeds holding a latent at signed decoder cosine >= tau, so
one of 0, 1/4, ..., 1). The outcome: for each held-out seed 5-9, does it hold such a partner
(the same test, from trust's partner cosines over all ten seeds)? One observation per
(latent, held-out seed): the AUC of stability for that outcome (Mann-Whitney U / (n+ n-),
ties counted half; chance 0.5), per configuration and pooled, and a calibration table:
per stability value, the latents, the observed held-out partner rate and the share of
latents with a partner in at least one held-out seed. A calibrated stability s has rate s.

    python benchmarks/consensus_grokked.py                  # 2 hooks x widths 64, 128 x
                                                            # TopK k 2, 4 and ReLU l1 2
    python benchmarks/consensus_grokked.py --quick          # one hook, width 32, 200 steps
    python benchmarks/consensus_grokked.py --out results.md --acts-dir /tmp/acts
    python benchmarks/consensus_grokked.py --k 1 2 4 --l1 2 4   # a larger grid

``--acts-dir`` keeps the activations between runs (reused while the model is unchanged). CPU
training is deterministic, so every metric is the same on a rerun; only the times move with
the machine's load.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from husai.activations import extract_to_dirs, load_activations
from husai.config import ReluSAEConfig, SAETrainConfig, StudyConfig, TopKSAEConfig
from husai.errors import UserError
from husai.metrics.consensus import default_min_seeds
from husai.metrics.consensus_sae import build_consensus
from husai.metrics.data_baselines import data_reference
from husai.metrics.stability import stability_pair, stability_set
from husai.metrics.trust import TAU_SLACK, trust_table
from husai.resources import DEFAULT_MODEL, data_root
from husai.saes import evaluate, load_sae, save_sae, train_group

HOOKS = ["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"]
SEEDS_A, SEEDS_B = list(range(5)), list(range(5, 10))
GOAL_MCC, GOAL_EV, L0_FACTOR = 0.9, 0.9, 1.25
TRIALS = 8
"""Monte Carlo draws per random baseline (the default study's ``metrics.baseline_trials``)."""


@dataclass
class ConfigResult:
    """Everything measured for one configuration (hook, arch, width, sparsity)."""

    hook: str
    label: str
    seeds: dict[str, Any] = field(default_factory=dict)
    """The ten seeds' mean EV and L0, single-seed PW-MCC of seeds 0-4 and its CI."""
    refits: list[dict[str, Any]] = field(default_factory=list)
    """One consensus pair (A, B) per refit sparsity (:func:`refits`)."""
    stab_S: np.ndarray | None = None
    """Stability among seeds 0-4 of every alive latent of seeds 0-4."""
    held_SN: np.ndarray | None = None
    """Whether each held-out seed 5-9 holds a partner at tau, same rows."""


def study_train_cfg(steps: int | None) -> SAETrainConfig:
    """The default study's sae_train for seeds 0-9, without snapshots (``steps`` overrides)."""
    study = StudyConfig.from_yaml(data_root() / "configs" / "studies" / "default.yaml")
    update: dict[str, Any] = {"init_seeds": SEEDS_A + SEEDS_B, "n_snapshots": 0}
    if steps is not None:
        update |= {"steps": steps, "warmup_steps": min(50, steps // 10)}
    return study.sae_train.model_copy(update=update)


def activations(hooks: list[str], acts_dir: Path) -> dict[str, torch.Tensor]:
    """All p^2 activations of the committed model's final checkpoint at each hook."""
    dirs = extract_to_dirs(data_root() / DEFAULT_MODEL, hooks, acts_dir, checkpoint="final")
    return {hook: load_activations(d).acts for hook, d in zip(hooks, dirs, strict=True)}


def groups(args: argparse.Namespace) -> list[tuple[str, int, list[Any]]]:
    """(arch, width, sparsity configs) of each batched group, per hook."""
    out = []
    for width in args.widths:
        if args.k:
            out.append(("topk", width, [TopKSAEConfig(d_sae=width, k=k) for k in args.k]))
        if args.l1:
            relu = [ReluSAEConfig(d_sae=width, l1_coefficient=c) for c in args.l1]
            out.append(("relu", width, relu))
    return out


def label(cfg: Any) -> str:
    if cfg.arch == "topk":
        return f"TopK w{cfg.d_sae} k={cfg.k}"
    return f"ReLU w{cfg.d_sae} l1={cfg.l1_coefficient:g}"


def run_group(
    hook: str, acts_RD: torch.Tensor, cfgs: list[Any], args: argparse.Namespace, root: Path
) -> tuple[list[ConfigResult], dict[str, float]]:
    """Train one batched group of 10 seeds per sparsity, then measure each configuration."""
    t0 = time.perf_counter()
    group = train_group(acts_RD, cfgs, args.train_cfg)
    times = {"train": time.perf_counter() - t0, "consensus": 0.0, "metrics": 0.0}
    ev = evaluate(group.sae, acts_RD)
    n_seeds = len(args.train_cfg.init_seeds)
    results = []
    for c, cfg in enumerate(cfgs):
        idx = list(range(c * n_seeds, (c + 1) * n_seeds))
        name = f"{hook.replace('.', '_')}_{label(cfg).replace(' ', '_')}"
        dirs = [
            save_sae(root / f"{name}_seed{s}", group, i, hook_name=hook) for s, i in enumerate(idx)
        ]
        seeds = {
            "W_dec": [group.sae.W_dec[i].detach() for i in idx],
            "alive": [ev["alive_mask"][i] for i in idx],
            "ev": float(np.mean([ev["explained_variance"][i] for i in idx])),
            "l0": float(np.mean([ev["l0"][i] for i in idx])),
        }
        result = ConfigResult(hook, label(cfg))
        t0 = time.perf_counter()
        for r, sparsity in enumerate(refits(cfg)):
            out = root / f"{name}_consensus{r}"
            result.refits.append(consensus_pair(sparsity, dirs, acts_RD, args, out))
        times["consensus"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        result.seeds = seed_agreement(seeds, acts_RD, args) | {"ev": seeds["ev"], "l0": seeds["l0"]}
        result.stab_S, result.held_SN = held_out(seeds, args.tau)
        times["metrics"] += time.perf_counter() - t0
        results.append(result)
    return results, times


def refits(cfg: Any) -> list[dict[str, Any]]:
    """The consensus refits of a configuration: TopK at the seeds' k; for ReLU both ReLU at
    the seeds' L1 coefficient and TopK at the seeds' mean L0, rounded (build_consensus's
    default), whose L0 is comparable by construction."""
    if cfg.arch == "topk":
        return [{"k": cfg.k}]
    return [{"l1": cfg.l1_coefficient}, {}]


def consensus_pair(
    sparsity: dict[str, Any],
    dirs: list[Path],
    acts_RD: torch.Tensor,
    args: argparse.Namespace,
    out: Path,
) -> dict[str, Any]:
    """Consensus A (seeds 0-4) and B (seeds 5-9), their EV, L0 and alive-only agreement."""
    fit = {
        "steps": args.train_cfg.steps,
        "batch_size": args.train_cfg.batch_size,
        "lr": args.train_cfg.lr,
    }
    try:
        built = [
            build_consensus(
                [dirs[s] for s in seeds], acts_RD, out.with_name(f"{out.name}_{part}"),
                min_seeds=args.min_seeds, tau=args.tau, **sparsity, **fit,
            )
            for part, seeds in (("A", SEEDS_A), ("B", SEEDS_B))
        ]  # fmt: skip
    except UserError as err:  # no cluster kept: reported in the table, the run goes on
        return {"error": str(err), "refit": refit_label(sparsity, None)}
    saes = [load_sae(r.out_dir) for r in built]
    alive = [evaluate(s, acts_RD)["alive_mask"] for s in saes]
    pair = stability_pair(
        saes[0].W_dec, saes[1].W_dec, alive_a=alive[0], alive_b=alive[1],
        tau=args.tau, trials=TRIALS, data=data_reference(acts_RD),
    )["pw_mcc_alive"]  # fmt: skip
    return {
        "refit": refit_label(sparsity, [r.sparsity for r in built]),
        "kept": [r.n_kept for r in built],
        "alive": list(pair.n_latents),
        "mcc": pair.value,
        "mcc_base": pair.baseline_hardest,
        "ev": [r.consensus_eval["explained_variance"] for r in built],
        "l0": [r.consensus_eval["l0"] for r in built],
    }


def refit_label(asked: dict[str, Any], used: list[dict[str, Any]] | None) -> str:
    if "l1" in asked:
        return f"ReLU l1={asked['l1']:g}"
    if "k" in asked:
        return f"TopK k={asked['k']}"
    ks = "-" if used is None else " / ".join(f"{u['k']:g}" for u in used)
    return f"TopK k={ks} (seeds' L0)"


def seed_agreement(seeds: dict[str, Any], acts_RD: torch.Tensor, args: argparse.Namespace) -> dict:
    """Alive-only PW-MCC of single seeds 0-4: mean of 10 pairs, seed-bootstrap 95% CI."""
    n = len(SEEDS_A)
    mv = stability_set(
        seeds["W_dec"][:n], alive=seeds["alive"][:n], tau=args.tau, trials=TRIALS,
        data=data_reference(acts_RD), n_boot=args.boot,
    )["pw_mcc_alive"]  # fmt: skip
    ci = mv.ci if mv.ci is not None else (float("nan"), float("nan"))
    return {"mcc": mv.value, "ci": ci, "base": mv.baseline_hardest}


def held_out(seeds: dict[str, Any], tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Stability among seeds 0-4 and held-out partners in seeds 5-9, alive latents of 0-4."""
    inner = trust_table(seeds["W_dec"][: len(SEEDS_A)], tau=tau)
    every = trust_table(seeds["W_dec"], tau=tau)
    rows = every.sae < len(SEEDS_A)
    held_SN = every.partner_cos[rows][:, SEEDS_B] >= tau - TAU_SLACK
    alive = torch.cat(seeds["alive"][: len(SEEDS_A)]).numpy()
    return inner.stability[alive], held_SN[alive]


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half; NaN with one class only."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def pooled(results: list[ConfigResult]) -> tuple[np.ndarray, np.ndarray]:
    """Latent-level stability and held-out partners, all configurations stacked."""
    return (
        np.concatenate([r.stab_S for r in results]),
        np.concatenate([r.held_SN for r in results]),
    )


def observations(stab_S: np.ndarray, held_SN: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (score, outcome) per (latent, held-out seed)."""
    return np.repeat(stab_S, held_SN.shape[1]), held_SN.reshape(-1)


def goal(b: dict[str, Any], seed_l0: float) -> str:
    """'met' or what misses the goal of 3(b)."""
    if "error" in b:
        return f"not met: {b['error']}"
    misses = []
    if b["mcc"] < GOAL_MCC:
        misses.append(f"PW-MCC {b['mcc']:.2f} < {GOAL_MCC}")
    if min(b["ev"]) < GOAL_EV:
        misses.append(f"EV {min(b['ev']):.2f} < {GOAL_EV}")
    if max(b["l0"]) > L0_FACTOR * seed_l0:
        misses.append(f"L0 {max(b['l0']):.1f} > {L0_FACTOR}x seeds'")
    return "**met**" if not misses else "not met: " + "; ".join(misses)


def table_b(results: list[ConfigResult]) -> list[str]:
    lines = [
        "| hook | configuration | consensus refit | kept A / B (alive) | consensus A-B PW-MCC "
        "alive (hardest baseline) | single-seed PW-MCC alive, seeds 0-4 [95% CI] (baseline) "
        "| EV A / B | seeds' EV | L0 A / B | seeds' L0 | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sd = r.seeds
        seed_mcc = f"{sd['mcc']:.3f} [{sd['ci'][0]:.3f}, {sd['ci'][1]:.3f}] ({sd['base']:.3f})"
        for b in r.refits:
            head = f"| {short(r.hook)} | {r.label} | {b['refit']} |"
            if "error" in b:
                lines.append(
                    f"{head} 0 | - | {seed_mcc} | - | {sd['ev']:.3f} | - | {sd['l0']:.2f} | "
                    f"{goal(b, sd['l0'])} |"
                )
                continue
            lines.append(
                f"{head} {b['kept'][0]} / {b['kept'][1]} ({b['alive'][0]} / {b['alive'][1]}) | "
                f"{b['mcc']:.3f} ({b['mcc_base']:.3f}) | {seed_mcc} | "
                f"{b['ev'][0]:.3f} / {b['ev'][1]:.3f} | {sd['ev']:.3f} | "
                f"{b['l0'][0]:.2f} / {b['l0'][1]:.2f} | {sd['l0']:.2f} | {goal(b, sd['l0'])} |"
            )
    return lines


def table_c(results: list[ConfigResult]) -> list[str]:
    lines = [
        "| hook | configuration | alive latents, seeds 0-4 | mean stability | "
        "held-out partner rate | AUC |",
        "|---|---|---:|---:|---:|---:|",
    ]
    rows = [(short(r.hook), r.label, [r]) for r in results]
    for hook in dict.fromkeys(r.hook for r in results):
        rows.append((short(hook), "**pooled**", [r for r in results if r.hook == hook]))
    rows.append(("all", "**pooled**", results))
    for hook, name, part in rows:
        stab_S, held_SN = pooled(part)
        lines.append(
            f"| {hook} | {name} | {len(stab_S)} | {stab_S.mean():.3f} | {held_SN.mean():.3f} | "
            f"{auc(*observations(stab_S, held_SN)):.3f} |"
        )
    return lines


def calibration(results: list[ConfigResult], n_inner: int = len(SEEDS_A)) -> list[str]:
    stab_S, held_SN = pooled(results)
    level_S = np.round(stab_S * (n_inner - 1)).astype(int)
    lines = [
        "| stability among seeds 0-4 | latents | observed held-out partner rate "
        "(per held-out seed) | share with a partner in >= 1 held-out seed |",
        "|---:|---:|---:|---:|",
    ]
    for level in range(n_inner):
        in_bin = level_S == level
        n = int(in_bin.sum())
        rate = f"{held_SN[in_bin].mean():.3f}" if n else "-"
        anyone = f"{held_SN[in_bin].any(1).mean():.3f}" if n else "-"
        lines.append(f"| {level / (n_inner - 1):.2f} | {n} | {rate} | {anyone} |")
    return lines


def short(hook: str) -> str:
    return hook.removeprefix("blocks.0.hook_")


def machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__} at "
        f"{torch.get_num_threads()} thread(s)"
    )


def report(
    results: list[ConfigResult], times: dict[str, float], args: argparse.Namespace, load0: float
) -> str:
    tc = args.train_cfg
    lines = [
        "# Consensus SAEs on the grokked model (issue 14, 3b and 3c)",
        "",
        f"Machine: {machine()}; load average {load0:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.",
        f"Time: {times['total']:.0f} s wall (activations {times['acts']:.0f} s, seed training "
        f"{times['train']:.0f} s, consensus builds {times['consensus']:.0f} s, metrics "
        f"{times['metrics']:.0f} s).",
        "",
        f"Seeds: 0-9 per configuration, trained with the default study's sae_train (steps "
        f"{tc.steps}, batch {tc.batch_size}, lr {tc.lr:g}, warmup {tc.warmup_steps}, plateau_tol "
        f"{tc.plateau_tol:g}, dead_window {tc.dead_window}). Consensus: tau {args.tau:g}, "
        f"min_seeds {args.min_seeds} of 5, refit at the seeds' k or l1 with the same steps, "
        f"batch and lr, no fine-tuning. Goal: A-B PW-MCC alive >= {GOAL_MCC}, EV >= {GOAL_EV} "
        f"for A and B, L0 <= {L0_FACTOR}x the seeds' mean. Baselines: the hardest of the random "
        "baselines (unit sphere, principal subspace, activation rows) at the same alive counts.",
        "",
        "## 3(b) Two consensus SAEs from disjoint seeds (A: 0-4, B: 5-9)",
        "",
        *table_b(results),
        "",
        f"## 3(c) Stability among seeds 0-4 (tau {args.tau:g}) vs a partner in held-out seeds 5-9",
        "",
        "AUC over (alive latent of seeds 0-4, held-out seed) pairs; chance 0.5.",
        "",
        *table_c(results),
        "",
        "Calibration, all configurations pooled:",
        "",
        *calibration(results),
    ]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one hook, width 32, 200 steps")
    p.add_argument("--hooks", nargs="+", default=None, help=f"default {HOOKS}")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="default 64 128")
    p.add_argument("--k", type=int, nargs="*", default=None, help="TopK k; default 2 4")
    p.add_argument("--l1", type=float, nargs="*", default=None, help="ReLU L1; default 2")
    p.add_argument("--steps", type=int, default=None, help="override sae_train.steps")
    p.add_argument("--tau", type=float, default=0.7)
    p.add_argument("--min-seeds", type=int, default=default_min_seeds(len(SEEDS_A)))
    p.add_argument("--boot", type=int, default=1000, help="bootstrap draws of the seed CI")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--acts-dir", type=Path, default=None, help="keep activations here")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = p.parse_args()
    preset = (
        dict(hooks=HOOKS[:1], widths=[32], k=[2], l1=[2.0], steps=200)
        if args.quick
        else dict(hooks=HOOKS, widths=[64, 128], k=[2, 4], l1=[2.0], steps=None)
    )
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.train_cfg = study_train_cfg(args.steps)
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load0, t_start = os.getloadavg()[0], time.perf_counter()
    print(machine(), flush=True)
    times = {"train": 0.0, "consensus": 0.0, "metrics": 0.0}
    results: list[ConfigResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        acts = activations(args.hooks, args.acts_dir or Path(tmp) / "acts")
        times["acts"] = time.perf_counter() - t0
        for hook in args.hooks:
            for arch, width, cfgs in groups(args):
                part, spent = run_group(hook, acts[hook], cfgs, args, Path(tmp) / "saes")
                results += part
                times = {k: v + spent.get(k, 0.0) for k, v in times.items()}
                print(
                    f"{hook} {arch} w{width}: train {spent['train']:.0f} s, consensus "
                    f"{spent['consensus']:.0f} s, metrics {spent['metrics']:.0f} s",
                    flush=True,
                )
    times["total"] = time.perf_counter() - t_start
    text = report(results, times, args, load0)
    print("\n" + text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
