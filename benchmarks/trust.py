"""Benchmark: ``husai trust`` on 5 random SAEs of 16,384 latents at d_in 768, against 60 s.

Writes the SAEs as SAELens-format directories (random unit decoder rows, tied encoders;
not timed), then times :func:`husai.report.trust_page.trust_report` end to end (reading
and checking the directories, every cosine, the subspaces, the parquet, CSV and HTML)
and, separately, the two phases of :func:`husai.metrics.trust.trust_table` on the same
decoders in memory. Random directions are the worst case for nothing here (every pair
costs one full float32 matmul whatever the decoders), so the time holds for trained SAEs.
Prints each time and its ratio to the 60 s budget, with the threads and the load, and
one pair's products through numpy's BLAS (used) and torch's (the alternative).

    python benchmarks/trust.py              # 5 x 16,384 latents, d_in 768 (the issue's size)
    python benchmarks/trust.py --quick      # 3 x 2,048 latents, d_in 128 (seconds)
    python benchmarks/trust.py --acts 4096  # also time the activation measures on 4,096 rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from husai.metrics.baselines import random_unit
from husai.metrics.trust import best_partners, stability, subspace_shares, trust_table
from husai.report.trust_page import trust_report

BUDGET_S = 60.0


def write_random_saes(root: Path, n: int, latents: int, d: int, seed: int) -> list[Path]:
    gen = torch.Generator().manual_seed(seed)
    dirs = []
    for i in range(n):
        dec = random_unit(latents, d, gen)
        path = root / f"sae{i}"
        path.mkdir()
        weights = {"W_enc": dec.T.contiguous(), "W_dec": dec, "b_enc": torch.zeros(latents)}
        save_file(weights | {"b_dec": torch.zeros(d)}, str(path / "sae_weights.safetensors"))
        cfg = {"architecture": "standard", "d_in": d, "d_sae": latents}
        (path / "cfg.json").write_text(json.dumps(cfg))
        dirs.append(path)
    return dirs


def phases(dirs: list[Path]) -> dict[str, float]:
    """The compute phases of trust_table on the decoders, without any file I/O."""
    from husai.metrics.inputs import as_decoder
    from husai.metrics.matching import unit_rows

    units = [unit_rows(as_decoder(p)) for p in dirs]
    t0 = time.perf_counter()
    _, cos = best_partners(units)
    t1 = time.perf_counter()
    subspace_shares(units, [stability(c, 0.7) for c in cos], None)
    return {"partners (all pairs)": t1 - t0, "subspaces": time.perf_counter() - t1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 x 2,048 latents at d_in 128")
    parser.add_argument("--saes", type=int, default=None)
    parser.add_argument("--latents", type=int, default=None)
    parser.add_argument("--d", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--acts", type=int, default=0, help="also time activations of this many rows"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.saes or (3 if args.quick else 5)
    latents = args.latents or (2048 if args.quick else 16_384)
    d = args.d or (128 if args.quick else 768)
    torch.set_num_threads(args.threads)
    print(f"husai trust: {n} random SAEs x {latents:,} latents, d_in {d}, seed {args.seed}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        dirs = write_random_saes(Path(tmp), n, latents, d, args.seed)
        print(f"load average before: {_load()}")
        t0 = time.perf_counter()
        text = trust_report(dirs, Path(tmp) / "out")
        total = time.perf_counter() - t0
        print(f"load average after:  {_load()}")
        print(text)
        sizes = {p.name: p.stat().st_size for p in (Path(tmp) / "out").iterdir()}
        print("files: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(sizes.items())))
        print(
            f"end to end (trust_report): {total:.1f} s = {total / BUDGET_S:.2f} x the {BUDGET_S:.0f} s budget"
        )
        for name, secs in phases(dirs).items():
            print(f"  {name}: {secs:.1f} s = {secs / BUDGET_S:.2f} x budget")
        _compare_blas(dirs[:2])
        if args.acts:
            _time_acts(dirs, args.acts, d)


def _compare_blas(dirs: list[Path], chunk: int = 2048) -> None:
    """One pair's chunked products: numpy's BLAS (what trust uses) against torch's."""
    from husai.metrics.inputs import as_decoder

    a, b = (as_decoder(p).contiguous() for p in dirs)
    buf = torch.empty(chunk, len(b))
    for name, mm in (
        (
            "numpy (OpenBLAS)",
            lambda x: np.matmul(x.numpy(), b.numpy().T, out=buf.numpy()[: len(x)]),
        ),
        ("torch (MKL)", lambda x: torch.matmul(x, b.T, out=buf[: len(x)])),
    ):
        t0 = time.perf_counter()
        for start in range(0, len(a), chunk):
            mm(a[start : start + chunk])
        secs = time.perf_counter() - t0
        gflops = 2 * len(a) * len(b) * a.shape[1] / secs / 1e9
        print(f"one pair's products, {name}: {secs:.2f} s ({gflops:.0f} GFLOP/s)")


def _time_acts(dirs: list[Path], rows: int, d: int) -> None:
    from husai.metrics.inputs import load_sae_dir

    saes = [load_sae_dir(p) for p in dirs]
    acts = torch.randn(rows, d, generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    trust_table(saes, acts=acts)
    print(f"trust_table with {rows:,} activation rows: {time.perf_counter() - t0:.1f} s")


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
