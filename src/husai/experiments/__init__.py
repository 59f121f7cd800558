"""Studies: grid expansion, batched units, resumable run store, executors, tracking.

``run_study`` is imported on first use, so that the grid (``husai.experiments.grid``) stays
importable with the light core alone (e.g. on a GPU machine with only torch and a few wheels:
``benchmarks/device_bench.py``)."""

from typing import Any

from husai.experiments.grid import Unit, estimate_cost, expand_grid

__all__ = ["Unit", "estimate_cost", "expand_grid", "run_study"]


def __getattr__(name: str) -> Any:
    if name == "run_study":
        from husai.experiments.runner import run_study

        return run_study
    raise AttributeError(f"module 'husai.experiments' has no attribute {name!r}")
