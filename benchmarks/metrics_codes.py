"""Code-based metrics at wide widths: activation frequency purity and activation correlation.

Old against new, in one process, on codes shaped like a wide SAE's over all p^2 = 12769
inputs of the default task (p = 113):

- purity: the full 2-D FFT per latent (written out here, as the code did it before)
  against ``husai.metrics.ground_truth.activation_frequency_purity`` (the grid's sums over
  b, a, a + b and a - b and their 1-D DFTs, dead latents skipped);
- correlation: every latent (``similarity._correlation`` on the whole code matrices, as
  before) against ``correlation_matrix`` (dead latents skipped).

Prints seconds per call (median of rounds), the ratio old / new and the largest difference.

    python benchmarks/metrics_codes.py            # widths 64, 256, 512; 50% dead
    python benchmarks/metrics_codes.py --quick    # seconds-long smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from husai.metrics.ground_truth import activation_frequency_purity
from husai.metrics.similarity import _SCATTER_COST, _Codes, _correlation, correlation_matrix

P = 113


def _codes(width: int, k: int, dead: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.zeros(P * P, width)
    idx = torch.randint(0, width, (P * P, k), generator=gen)
    codes.scatter_(1, idx, torch.rand(P * P, k, generator=gen) + 0.1)
    return codes * (torch.rand(width, generator=gen) >= dead)


def _purity_fft2(codes_NS: torch.Tensor) -> np.ndarray:
    grid = codes_NS.double().reshape(P, P, -1)
    grid = grid - grid.mean(dim=(0, 1), keepdim=True)
    power = torch.fft.fft2(grid, dim=(0, 1)).abs().pow(2)
    ks = torch.minimum(torch.arange(P), P - torch.arange(P))
    ka, kb = torch.meshgrid(ks, ks, indexing="ij")
    label = torch.where(kb == 0, ka, torch.zeros_like(ka))
    label = torch.where(ka == 0, kb, label)
    label = torch.where(ka == kb, ka, label).flatten()
    by_freq = torch.zeros(P // 2 + 1, power.shape[-1], dtype=torch.float64)
    by_freq.index_add_(0, label, power.reshape(P * P, -1) * (label > 0)[:, None])
    total = power.sum(dim=(0, 1))
    ok = total > 1e-12 * max(1.0, float(total.max()))
    return torch.where(ok, by_freq.max(dim=0).values / torch.where(ok, total, 1.0), 0.0).numpy()


def _timed(fn, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dead", type=float, default=0.5, help="share of dead latents (0.5)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    widths, rounds = ([64], 2) if args.quick else ([64, 256, 512], args.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dead {args.dead:.0%}")
    for width in widths:
        a, b = _codes(width, 16, args.dead, 1), _codes(width, 16, args.dead, 2)
        t_old, old = _timed(lambda a=a: _purity_fft2(a), rounds)
        t_new, new = _timed(lambda a=a: activation_frequency_purity(a, P)["purity"], rounds)
        diff = float(np.abs(old - new).max())
        print(
            f"purity      width {width:4d}: fft2 {t_old:.3f} s, sums {t_new:.3f} s, "
            f"ratio {t_old / t_new:.2f}x, max |diff| {diff:.1e}"
        )
        n = P * P
        ka, kb = _Codes(a).k, _Codes(b).k
        sparse = ka * kb * _SCATTER_COST < width * width  # the choice correlation_matrix makes

        def every_latent(a=a, b=b, sparse=sparse):
            return _correlation(_Codes(a), _Codes(b), sparse)

        t_old, old = _timed(every_latent, rounds)
        t_new, new = _timed(lambda a=a, b=b: correlation_matrix(a, b), rounds)
        diff = float((old - new).abs().max())
        print(
            f"correlation width {width:4d}: all latents {t_old:.3f} s, alive {t_new:.3f} s, "
            f"ratio {t_old / t_new:.2f}x, max |diff| {diff:.1e} ({n} inputs)"
        )


if __name__ == "__main__":
    main()
