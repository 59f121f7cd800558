#!/usr/bin/env python
"""Old-plan entry point, kept as a thin wrapper:
``python scripts/run_experiments.py --experiment modular_arithmetic_sweep``.

Runs ``husai run configs/studies/<experiment>.yaml``; other arguments pass through.
"""

import sys
from pathlib import Path

from husai.cli import main

STUDIES = Path(__file__).resolve().parents[1] / "configs" / "studies"

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--experiment" in args:
        i = args.index("--experiment")
        args = [str(STUDIES / f"{args[i + 1]}.yaml"), *args[:i], *args[i + 2 :]]
    sys.argv = ["husai", "run", *args]
    main()
