"""Studies: grid expansion, batched units, resumable run store, executors, tracking."""

from husai.experiments.grid import Unit, estimate_cost, expand_grid
from husai.experiments.runner import run_study

__all__ = ["Unit", "estimate_cost", "expand_grid", "run_study"]
