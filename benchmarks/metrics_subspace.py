"""Benchmark: subspace and span overlap of every seed pair, one SVD per decoder vs one per call.

The case of the language-model study: 5 seeds of decoders [1536, 384] and their init
decoders, 10 seed pairs, subspace overlap at every default rank plus span overlap, each
with its init baseline and its three random baselines (unit sphere, activations'
principal subspace, activation rows; ``trials`` draws each, cached across pairs as the
metrics do). The old path, written out below, decomposes a decoder afresh for every rank,
every pair and every baseline draw; the new one is ``stability_pair``'s own. Prints both
times and the ratio, and asserts that every value is the same float.

    python benchmarks/metrics_subspace.py            # 1536 x 384, 5 seeds (about a minute)
    python benchmarks/metrics_subspace.py --quick    # 256 x 64 (seconds)
"""

from __future__ import annotations

import argparse
import os
import time
from itertools import combinations

import torch

from husai.metrics import baselines as bl
from husai.metrics import data_baselines as db
from husai.metrics.stability import _Ctx, _subspaces
from husai.metrics.subspace import default_ranks, principal_cosines, row_basis


def old_overlap(a: torch.Tensor, b: torch.Tensor, r: int | None) -> float:
    """Subspace overlap at rank ``r`` (span overlap for None), two fresh SVDs per call."""
    q_a, q_b = row_basis(a)[:r], row_basis(b)[:r]
    cos = principal_cosines(q_a, q_b)
    if r is None:
        return float((cos**2).mean()) if cos.numel() else 0.0
    return float((cos**2).sum() / max(q_a.shape[0], q_b.shape[0], 1))


def old_baselines(r: int | None, n: int, ref: db.DataReference, trials: int, memo: dict) -> list:
    """Unit-sphere, subspace and acts baselines of one metric: a Monte Carlo pass each."""
    d = ref.d
    out = []
    for kind, sampler in (("sphere", bl.sphere_sampler(d)), *db.SAMPLERS.items()):
        if (kind, r) not in memo:
            sample = sampler if kind == "sphere" else sampler(ref)

            def one(gen: torch.Generator, sample=sample) -> float:
                return old_overlap(sample(n, gen), sample(n, gen), r)

            memo[kind, r] = bl.monte_carlo(one, trials, 0)[0]
        out.append(memo[kind, r])
    return out


def old_pair(a, b, init_a, init_b, ranks, ref, trials, memo) -> list[float]:
    vals = []
    for r in [*ranks, None]:
        vals += [old_overlap(a, b, r), old_overlap(init_a, init_b, r)]
        vals += old_baselines(r, a.shape[0], ref, trials, memo)
    return vals


def new_pair(a, b, init_a, init_b, ranks, ref, trials) -> list[float]:
    ctx = _Ctx(True, trials, 0, a.shape[1], ref)
    out = _subspaces(ctx, a, b, init_a, init_b, ranks)
    fields = ("value", "baseline_init", "baseline", "baseline_subspace", "baseline_acts")
    return [getattr(out[name], f) for name in out if name != "subspace_overlap" for f in fields]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 latents at d=64")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=2, help="baseline draws per kind")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    n, d = (256, 64) if args.quick else (1536, 384)
    torch.set_num_threads(args.threads)
    os.environ["HUSAI_CACHE_DIR"] = "off"
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(4096, 24, generator=gen) @ torch.randn(24, d, generator=gen)
    ref = db.data_reference(acts + 0.05 * torch.randn(4096, d, generator=gen))
    decs = [torch.randn(n, d, generator=gen) for _ in range(2 * args.seeds)]
    pairs = [
        (decs[i], decs[j], decs[args.seeds + i], decs[args.seeds + j])
        for i, j in combinations(range(args.seeds), 2)
    ]
    ranks = default_ranks(d, n, n)

    t0 = time.perf_counter()
    memo: dict = {}
    old = [old_pair(*p, ranks, ref, args.trials, memo) for p in pairs]
    t1 = time.perf_counter()
    new = [new_pair(*p, ranks, ref, args.trials) for p in pairs]
    t2 = time.perf_counter()
    print(f"{len(pairs)} pairs of [{n}, {d}] decoders, ranks {ranks}, trials {args.trials}")
    print(f"old (SVD per call): {t1 - t0:.2f} s")
    print(f"new (SVD per decoder): {t2 - t1:.2f} s")
    print(f"ratio old/new: {(t1 - t0) / (t2 - t1):.1f}x")
    assert old == new, "the new path changed a value"
    print(f"all {sum(map(len, old))} values identical")


if __name__ == "__main__":
    main()
