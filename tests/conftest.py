"""Shared test setup: offline hubs and W&B. Tests run at the thread count torch picks:
nothing may pass only single-threaded or only on one CPU model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
