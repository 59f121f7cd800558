"""Grokking benchmark: how fast the default recipe reaches 99% test accuracy on this CPU.

Two measurements, both in this process:

1. Step time of one full-batch AdamW step with the plain HookedTransformer forward
   (all positions) against the final-position forward (``husai.model.build.final_logits``),
   interleaved, same parameters and data; prints the speed-up ratio.
2. The full recipe (``husai.model.train.train_model``, tracking off) for several model seeds:
   the step and wall time at which test accuracy first reached 99%, the final test
   accuracy, and the top-8 share of W_E's non-constant squared Fourier norm.

Usage: python benchmarks/grokking.py [--config configs/models/default.yaml]
       [--seeds 999 1 2] [--threads 2] [--set train.steps=1000 ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from husai.config import ExperimentConfig
from husai.model.build import build_model, final_logits
from husai.model.train import _freeze, train_model
from husai.tasks import make_dataset


def step_times(cfg: ExperimentConfig, reps: int = 5) -> dict[str, float]:
    """Mean seconds per full-batch step for each forward, interleaved to share the load."""
    data = make_dataset(cfg.task)
    model = build_model(cfg.task, cfg.model)
    params = _freeze(model, True)
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    x, y = data.train
    forwards = {"plain": lambda: model(x)[:, -1], "final_position": lambda: final_logits(model, x)}
    totals = dict.fromkeys(forwards, 0.0)
    for rep in range(reps + 1):
        for name, fwd in forwards.items():
            t0 = time.perf_counter()
            loss = F.cross_entropy(fwd().double(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rep:  # the first round warms up
                totals[name] += time.perf_counter() - t0
    return {k: v / reps for k, v in totals.items()}


def run_seed(cfg: ExperimentConfig, seed: int, out: Path) -> dict[str, object]:
    cfg = cfg.model_copy(
        update={
            "name": f"seed{seed}",
            "model": cfg.model.model_copy(update={"seed": seed}),
            "tracking": cfg.tracking.model_copy(update={"mode": "disabled"}),
        }
    )
    run_dir = train_model(cfg, out, progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    fourier = json.loads((run_dir / "fourier.json").read_text())
    return {
        "seed": seed,
        "grok_step": metrics["grok_step"],
        "grok_wall_s": metrics["grok_wall_s"],
        "steps": metrics["steps"],
        "wall_s": metrics["wall_s"],
        "test_acc": round(metrics["test_acc"], 4),
        "top8_share_we": round(fourier["top8_share_we"], 3),
        "key_freqs": fourier["key_freqs"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/models/default.yaml")
    ap.add_argument("--seeds", type=int, nargs="*", default=[999, 1, 2, 3])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", nargs="*", default=[])
    ap.add_argument("--skip-steps", action="store_true", help="skip the step-time comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ExperimentConfig.from_yaml(args.config, args.overrides)
    print(f"recipe: {json.dumps(cfg.task.model_dump())} {json.dumps(cfg.train.model_dump())}")
    if not args.skip_steps:
        t = step_times(cfg)
        print(
            f"step time (train fraction {cfg.task.train_fraction}): plain forward "
            f"{1e3 * t['plain']:.1f} ms, final-position forward {1e3 * t['final_position']:.1f} ms, "
            f"ratio {t['plain'] / t['final_position']:.2f}x"
        )
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            print(json.dumps(run_seed(cfg, seed, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
