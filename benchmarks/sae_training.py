"""SAE training speed: HUSAI's batched trainer vs SAELens' SAETrainer, same activations.

Both train the same configurations on the same in-memory activations (default:
d_in 128, d_sae 1024, batch 4096, 8 seeds; TopK k=32 and ReLU-L1). SAELens trains one
SAE per ``SAETrainer`` (its ``MultiSAETrainer`` loops over SAEs one after another, so
this is its batched cost too); HUSAI trains all seeds in one group. Rounds alternate
between the two to share the noise of a busy machine; the median step time of each
is reported as SAE-steps per second, with the ratio HUSAI / SAELens (and the ratio of
mean step times). Each round times one HUSAI group step and one step of each SAELens
trainer, so load bursts on a shared machine hit both sides alike.

Neither run has dead latents in these short timings (dead windows are longer than the
run), so the AuxK loss is off on both sides.

    python benchmarks/sae_training.py            # full sizes
    python benchmarks/sae_training.py --quick    # seconds-long smoke test
    python benchmarks/sae_training.py --gemm     # per-model mm vs batched bmm, same step
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

os.environ.setdefault("WANDB_MODE", "disabled")


def _acts(n_rows: int, d_in: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(4 * d_in, d_in, generator=gen)
    coef = torch.rand(n_rows, 4 * d_in, generator=gen) * (
        torch.rand(n_rows, 4 * d_in, generator=gen) < 0.05
    )
    return coef @ basis + 0.1 * torch.randn(n_rows, d_in, generator=gen)


def _grokked_acts(hook: str = "blocks.0.hook_resid_post") -> torch.Tensor:
    """The committed grokked model's final-position activations at ``hook`` over all p^2
    inputs (the default study's data: low rank, so latents die and AuxK runs), scaled to
    mean squared norm d_in as the trainer normalises it."""
    from pathlib import Path

    from husai.activations import extract
    from husai.model.store import load_model, load_run_config
    from husai.tasks import make_dataset

    model_dir = Path(__file__).resolve().parents[1] / "artifacts" / "default_model"
    data = make_dataset(load_run_config(model_dir).task)
    acts = extract(load_model(model_dir), data.tokens, [hook])[hook]
    return acts * (acts.shape[1] / acts.pow(2).sum(-1).mean()).sqrt()


def _saelens_trainer(kind: str, args, seed: int, acts: torch.Tensor):
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    if kind == "topk":
        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(
                d_in=args.d_in, d_sae=args.d_sae, k=args.k, aux_loss_coefficient=1 / 32
            )
        )
    else:
        sae = StandardTrainingSAE(
            StandardTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, l1_coefficient=args.l1)
        )
    total = 10**9
    cfg = SAETrainerConfig(
        total_training_samples=total,
        train_batch_size_samples=args.batch,
        lr=1e-3,
        lr_end=1e-3,
        device="cpu",
        dead_feature_window=10**6,
        feature_sampling_window=10**6,
        logger=LoggingConfig(log_to_wandb=False),
    )
    gen = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            yield acts[torch.randint(0, acts.shape[0], (args.batch,), generator=gen)]

    return SAETrainer(cfg=cfg, sae=sae, data_provider=batches())


def _husai_trainer(kind: str, args, acts: torch.Tensor):
    from husai.config import ReluSAEConfig, SAETrainConfig, TopKSAEConfig
    from husai.saes.trainer import _GroupTrainer

    cfg = (
        TopKSAEConfig(d_sae=args.d_sae, k=args.k)
        if kind == "topk"
        else ReluSAEConfig(d_sae=args.d_sae, l1_coefficient=args.l1)
    )
    train_cfg = SAETrainConfig(
        init_seeds=list(range(args.seeds)),
        batch_size=args.batch,
        steps=10**6,
        lr=1e-3,
        warmup_steps=0,
        dead_window=10**9,
        n_snapshots=0,
        plateau_tol=0.0,
    )
    return _GroupTrainer(acts, [cfg], train_cfg, None)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _measure(kind: str, args, acts: torch.Tensor) -> tuple[list[float], list[float]]:
    """Seconds per SAE-step: SAELens (one sample per SAE per round) and HUSAI (one group
    step per round, divided by the number of models). Rounds interleave the two, so a
    burst of load on the shared machine hits both."""
    lens = [_saelens_trainer(kind, args, seed, acts) for seed in range(args.seeds)]
    ours = _husai_trainer(kind, args, acts)

    def lens_step(trainer) -> None:
        trainer.step(next(trainer.data_provider))
        trainer.n_training_steps += 1

    def our_step() -> None:
        ours.train_step()
        ours.step += 1

    for trainer in lens:  # warm-up
        lens_step(trainer)
    our_step()
    t_lens, t_ours = [], []
    for _ in range(args.rounds):
        t_ours.append(_timed(our_step) / args.seeds)
        t_lens += [_timed(lambda tr=tr: lens_step(tr)) for tr in lens]
    return t_lens, t_ours


def _measure_gemm(kind: str, args, acts: torch.Tensor) -> tuple[list[float], list[float]]:
    """Seconds per SAE-step of HUSAI's group step with one ``mm`` per model (what it runs)
    and with the batched ``bmm`` it ran before (not bit-stable across group sizes),
    interleaved in one process."""
    from husai.saes import base

    def bmm_apply(A, B):
        return torch.bmm(A, B)

    per_model = _husai_trainer(kind, args, acts)
    batched = _husai_trainer(kind, args, acts)
    real_apply = base.ModelMM.apply

    def step(trainer, apply) -> None:
        base.ModelMM.apply = apply
        try:
            trainer.train_step()
            trainer.step += 1
        finally:
            base.ModelMM.apply = real_apply

    step(per_model, real_apply)
    step(batched, bmm_apply)
    t_mm, t_bmm = [], []
    for _ in range(args.rounds):
        t_mm.append(_timed(lambda: step(per_model, real_apply)) / args.seeds)
        t_bmm.append(_timed(lambda: step(batched, bmm_apply)) / args.seeds)
    return t_bmm, t_mm


SMALL = dict(d_in=128, batch=512, seeds=5, ks=(1, 2, 4, 8), l1s=(1.0, 2.0, 4.0, 8.0))


def _naive_group(kind: str, width: int, acts: torch.Tensor, dead_window: int = 10**9):
    """The reference: a plain dense loop (baddbmm, topk, scatter, bmm, autograd, torch Adam)
    over the same models (sparsity values x seeds) and the same batches; for TopK with the
    AuxK loss of Gao et al. (App. A.2) on latents silent for ``dead_window`` samples."""
    values = SMALL["ks"] if kind == "topk" else SMALL["l1s"]
    n, d, batch = len(values) * SMALL["seeds"], SMALL["d_in"], SMALL["batch"]
    gen = torch.Generator().manual_seed(0)
    W_dec = torch.randn(n, width, d, generator=gen)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * (1.0 if kind == "topk" else 0.1)
    W_enc = W_dec.transpose(1, 2).clone().requires_grad_()
    W_dec.requires_grad_()
    b_enc, b_dec = torch.zeros(n, width, requires_grad=True), torch.zeros(n, d, requires_grad=True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-3)
    per_model = torch.tensor([v for v in values for _ in range(SMALL["seeds"])])
    keep = (torch.arange(max(SMALL["ks"]))[None, :] < per_model[:, None]).float()[:, None, :]
    state = {"step": 0, "since": torch.zeros(n, width)}

    def auxk(pre, x, recon):
        dead = state["since"] >= dead_window
        k_aux = min(d // 2, width)
        n_dead = dead.sum(-1)
        vals, idx = torch.where(dead[:, None, :], pre, -1.0).topk(k_aux, dim=-1)
        ranks = (torch.arange(k_aux)[None, :] < n_dead[:, None]).float()[:, None, :]
        codes = torch.zeros_like(pre).scatter(-1, idx, vals.relu() * ranks)
        e_hat = torch.bmm(codes, W_dec)
        scale = (n_dead.float() / (d // 2)).clamp(max=1.0) / 32
        return scale * (e_hat - (x - recon).detach()).pow(2).sum(-1).mean(-1)

    def step() -> None:
        rows = torch.arange(state["step"] * batch, (state["step"] + 1) * batch) % acts.shape[0]
        x = acts[rows].expand(n, batch, d)
        pre = torch.baddbmm(b_enc[:, None, :], x - b_dec[:, None, :], W_enc).relu()
        if kind == "topk":
            vals, idx = pre.topk(min(max(SMALL["ks"]), width), dim=-1)
            codes = torch.zeros_like(pre).scatter(-1, idx, vals * keep[..., : idx.shape[-1]])
        else:
            codes = pre
        recon = torch.baddbmm(b_dec[:, None, :], codes, W_dec)
        loss = (recon - x).pow(2).sum(-1).mean(-1)
        if kind == "relu":
            loss = loss + per_model * (codes * W_dec.norm(dim=-1)[:, None, :]).sum(-1).mean(-1)
        elif bool((state["since"] >= dead_window).any()):
            loss = loss + auxk(pre, x, recon)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        if kind == "topk":
            with torch.no_grad():
                W_dec.div_(W_dec.norm(dim=-1, keepdim=True))
        state["since"] += batch
        state["since"][(codes.detach() > 0).any(1)] = 0
        state["step"] += 1

    return step, n


def _husai_group(kind: str, width: int, acts: torch.Tensor, dead_window: int = 10**9):
    from husai.config import ReluSAEConfig, SAETrainConfig, TopKSAEConfig
    from husai.saes.trainer import _GroupTrainer

    cfgs = (
        [TopKSAEConfig(d_sae=width, k=k) for k in SMALL["ks"]]
        if kind == "topk"
        else [ReluSAEConfig(d_sae=width, l1_coefficient=v) for v in SMALL["l1s"]]
    )
    train_cfg = SAETrainConfig(
        init_seeds=list(range(SMALL["seeds"])),
        batch_size=SMALL["batch"],
        steps=10**6,
        lr=1e-3,
        warmup_steps=0,
        dead_window=dead_window,
        n_snapshots=0,
        plateau_tol=0.0,
    )
    trainer = _GroupTrainer(acts, cfgs, train_cfg, None)

    def step() -> None:
        trainer.train_step()
        trainer.step += 1

    return step, trainer.sae.n_models


def _measure_small(
    kind: str, width: int, rounds: int, dead_window: int = 10**9, grokked: bool = False
) -> tuple[list[float], list[float]]:
    """Seconds per SAE-step of the naive dense loop and of HUSAI, interleaved rounds of 10
    steps each, on the default study's shapes (d_in 128, batch 512, 4 sparsities x 5 seeds).
    With a short ``dead_window`` both sides train TopK with AuxK on the dead latents, as
    the studies do (the warm-up then runs until some latents are dead)."""
    acts = _grokked_acts() if grokked else _acts(8192, SMALL["d_in"])
    naive, n = _naive_group(kind, width, acts, dead_window)
    ours, _ = _husai_group(kind, width, acts, dead_window)
    warmup = 3 if dead_window >= 10**9 else 3 + 2 * dead_window // SMALL["batch"]
    for _ in range(warmup):
        naive()
        ours()
    t_naive, t_ours = [], []
    for _ in range(rounds):
        t_naive.append(_timed(lambda: [naive() for _ in range(10)]) / (10 * n))
        t_ours.append(_timed(lambda: [ours() for _ in range(10)]) / (10 * n))
    return t_naive, t_ours


KERNEL_UNITS = [  # (hook, arch, width): the default study's narrow units
    ("blocks.0.hook_resid_post", "topk", 16),
    ("blocks.0.hook_resid_post", "topk", 64),
    ("blocks.0.hook_resid_post", "batchtopk", 64),
    ("blocks.0.hook_resid_post", "matryoshka", 64),
    ("blocks.0.mlp.hook_post", "topk", 64),
    ("blocks.0.mlp.hook_post", "topk", 128),
    ("blocks.0.mlp.hook_post", "relu", 64),
]


def _measure_kernels(hook: str, arch: str, width: int, rounds: int, steps: int = 10):
    """Seconds per SAE-step of one default-study unit (its sae_train settings, k 1/4/16 or
    its l1, 5 seeds) with the Gram kernel and with it switched off (the dense and sparse
    kernels), two trainers stepped alternately on the same activations, AuxK on when
    latents die. Returns (other kernels, Gram)."""
    from pathlib import Path

    import yaml

    from husai.config import SAETrainConfig
    from husai.saes import gram
    from husai.saes.registry import get_architecture
    from husai.saes.trainer import _GroupTrainer

    root = Path(__file__).resolve().parents[1]
    study = yaml.safe_load((root / "configs" / "studies" / "default.yaml").read_text())
    train_cfg = SAETrainConfig(**study["sae_train"])
    cls = get_architecture(arch).config_class
    cfgs = (
        [cls(d_sae=width, l1_coefficient=2.0)]
        if arch == "relu"
        else [cls(d_sae=width, k=k) for k in (1, 4, 16)]
    )
    acts = _grokked_acts(hook)
    saved = gram.GRAM_MAX_WIDTH_RATIO, gram.GRAM_MAX_WIDTH_RATIO_L1
    trainers = {}
    for name, ratios in (("other", (0.0, 0.0)), ("gram", saved)):
        gram.GRAM_MAX_WIDTH_RATIO, gram.GRAM_MAX_WIDTH_RATIO_L1 = ratios
        trainers[name] = (_GroupTrainer(acts, cfgs, train_cfg, None), ratios)

    def run(name: str, n: int) -> None:
        trainer, ratios = trainers[name]
        gram.GRAM_MAX_WIDTH_RATIO, gram.GRAM_MAX_WIDTH_RATIO_L1 = ratios
        for _ in range(n):
            trainer.train_step()
            trainer.step += 1
            trainer._after_step_bookkeeping()

    try:
        for name in trainers:  # past warm-up, until latents have had a window to die in
            run(name, 60)
        times = {name: [] for name in trainers}
        for _ in range(rounds):
            for name in trainers:
                times[name].append(_timed(lambda n=name: run(n, steps)) / (steps * len(cfgs) * 5))
    finally:
        gram.GRAM_MAX_WIDTH_RATIO, gram.GRAM_MAX_WIDTH_RATIO_L1 = saved
    return times["other"], times["gram"]


def _summary(theirs: list[float], ours: list[float], rounds: int) -> dict[str, float]:
    s_theirs, s_ours = statistics.median(theirs), statistics.median(ours)
    return {
        "other_sae_steps_per_s": 1 / s_theirs,
        "husai_sae_steps_per_s": 1 / s_ours,
        "ratio": s_theirs / s_ours,
        "ratio_of_means": statistics.mean(theirs) / statistics.mean(ours),
        "other_ms_per_sae_step": 1000 * s_theirs,
        "husai_ms_per_sae_step": 1000 * s_ours,
        "rounds": rounds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    p.add_argument("--kinds", default="topk,relu")
    p.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument(
        "--small",
        action="store_true",
        help="instead: widths 16 and 64 vs a naive dense PyTorch loop (ratio = naive / HUSAI)",
    )
    p.add_argument(
        "--dead-window",
        type=int,
        default=10**9,
        help="with --small: latents silent this many samples are dead and TopK trains AuxK "
        "on them, on both sides (default: never, no AuxK)",
    )
    p.add_argument(
        "--grokked",
        action="store_true",
        help="with --small: train on the committed grokked model's residual stream (the "
        "default study's data) instead of synthetic sparse activations",
    )
    p.add_argument(
        "--kernels",
        action="store_true",
        help="instead: the default study's narrow units on the grokked model's activations, "
        "Gram kernel vs the dense/sparse kernels (ratio = other time / Gram time)",
    )
    p.add_argument(
        "--gemm",
        action="store_true",
        help="instead: HUSAI's per-model mm vs a batched bmm (ratio = bmm time / mm time)",
    )
    args = p.parse_args()
    sizes = (
        dict(d_in=16, d_sae=64, batch=256, seeds=2, k=4)
        if args.quick
        else dict(d_in=128, d_sae=1024, batch=4096, seeds=8, k=32)
    )
    for k, v in sizes.items():
        setattr(args, k, v)
    args.l1 = 5.0
    torch.set_num_threads(args.threads)
    acts = _acts(16 * args.batch if not args.quick else 2048, args.d_in)
    other = "bmm" if args.gemm else "naive" if args.small else "SAELens"
    results = {}
    if args.kernels:
        other = "dense/sparse kernels"
        for hook, arch, width in KERNEL_UNITS:
            theirs, ours = _measure_kernels(hook, arch, width, args.rounds)
            results[f"{arch}-w{width}-{hook}"] = r = _summary(theirs, ours, args.rounds)
            print(
                f"{arch:10s} w{width:<4d} {hook:26s} other {r['other_ms_per_sae_step']:.2f} ms  "
                f"Gram {r['husai_ms_per_sae_step']:.2f} ms per SAE-step  ratio {r['ratio']:.2f}x"
            )
        args.kinds = ""
    for kind in filter(None, args.kinds.split(",")):
        for width in (16, 64) if args.small else (args.d_sae,):
            if args.small:
                theirs, ours = _measure_small(
                    kind, width, args.rounds, args.dead_window, args.grokked
                )
            else:
                theirs, ours = (_measure_gemm if args.gemm else _measure)(kind, args, acts)
            results[f"{kind}-w{width}"] = r = _summary(theirs, ours, args.rounds)
            print(
                f"{kind:5s} w{width:<5d} {other} {r['other_sae_steps_per_s']:8.2f} SAE-steps/s "
                f"({r['other_ms_per_sae_step']:.2f} ms)  HUSAI {r['husai_sae_steps_per_s']:8.2f} "
                f"SAE-steps/s ({r['husai_ms_per_sae_step']:.2f} ms)  ratio {r['ratio']:.2f}x "
                f"(of means {r['ratio_of_means']:.2f}x)"
            )
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} torch threads, torch {torch.__version__}",
        "sizes": {"units": KERNEL_UNITS, "sae_train": "configs/studies/default.yaml"}
        if args.kernels
        else SMALL | {"dead_window": args.dead_window, "grokked": args.grokked}
        if args.small
        else sizes,
        "other": other,
    }
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
