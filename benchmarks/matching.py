"""Benchmark: PW-MCC between two random SAEs, HUSAI's certified sparse solver vs plain scipy.

Both solve the same cosine matrix (computed once, float32; scipy reads it as float64).
Random unit directions are the worst case for the sparse candidate graph. Prints both
times, the ratio, and asserts the two optima agree to 1e-6 in mean cosine.

    python benchmarks/matching.py            # 16,384 latents, d=512 (the issue's size)
    python benchmarks/matching.py --quick    # 2,048 latents, d=128 (seconds)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from husai.metrics import cosine_matrix, linear_assignment, random_unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,048 latents at d=128")
    parser.add_argument("--n", type=int, default=None, help="latents per SAE")
    parser.add_argument("--d", type=int, default=None, help="input width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--similar",
        type=float,
        default=None,
        help="B = A permuted plus this much noise (a trained-seeds-like case) instead of random",
    )
    args = parser.parse_args()
    n = args.n or (2048 if args.quick else 16_384)
    d = args.d or (128 if args.quick else 512)
    torch.set_num_threads(2)

    gen = torch.Generator().manual_seed(args.seed)
    dec_a, dec_b = random_unit(n, d, gen), random_unit(n, d, gen)
    if args.similar is not None:
        dec_b = dec_a[torch.randperm(n, generator=gen)] + args.similar * dec_b
    t0 = time.perf_counter()
    sim = cosine_matrix(dec_a, dec_b)
    t_cos = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows, cols = linear_assignment(sim, method="sparse")
    t_ours = time.perf_counter() - t0
    ours = float(sim[torch.from_numpy(rows), torch.from_numpy(cols)].double().mean())

    sim64 = sim.double().numpy()
    t0 = time.perf_counter()
    r_s, c_s = linear_sum_assignment(sim64, maximize=True)
    t_scipy = time.perf_counter() - t0
    ref = float(sim64[r_s, c_s].mean())

    case = "random" if args.similar is None else f"B = permuted A + {args.similar} x noise"
    print(f"PW-MCC matching, two SAEs ({case}): n={n} latents, d={d}, seed={args.seed}")
    print(f"  cosine matrix (shared):        {t_cos:8.2f} s")
    print(f"  husai certified sparse solver: {t_ours:8.2f} s   PW-MCC {ours:.9f}")
    print(f"  scipy linear_sum_assignment:   {t_scipy:8.2f} s   PW-MCC {ref:.9f}")
    print(f"  end to end (cosine + solve):   {t_cos + t_ours:8.2f} s vs {t_cos + t_scipy:.2f} s")
    print(f"  RATIO scipy / husai (solver):  {t_scipy / t_ours:8.1f}x")
    print(f"  |difference| in mean cosine:   {abs(ours - ref):.2e}")
    assert abs(ours - ref) <= 1e-6, "solvers disagree on the optimum"
    assert np.unique(cols).size == cols.size == n


if __name__ == "__main__":
    main()
