#!/usr/bin/env python
"""Old-plan entry point, kept as a thin wrapper: ``python scripts/train_sae.py --config CFG``.

Equivalent to ``husai train-saes CFG`` (activations default to the committed model's, at the
config's hook). Extra arguments are passed through, e.g. ``--activations DIR --set sae.k=8``.
"""

import sys

from husai.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" in args:
        i = args.index("--config")
        args = [args[i + 1], *args[:i], *args[i + 2 :]]
    sys.argv = ["husai", "train-saes", *args]
    main()
