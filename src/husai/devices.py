"""Where tensors live: ``device: auto | cpu | cuda`` in configs and ``--device`` on the CLI.

``auto`` means CUDA when this machine has it, else the CPU. Every stage keeps its seeded
parts on the CPU (model and SAE initialisation, data order), so a run draws the same
initial weights and batches on any device; only the arithmetic moves. CPU results are
bit-identical to a run without this option: on the CPU no code path changes. On CUDA the
trainers use dense, batched kernels (one ``bmm`` for all models, dense TopK) instead of the
CPU's per-model and sparse ones, so results agree with the CPU's to float32 rounding, not
bit for bit. Metrics take decoders and codes back on the CPU (the assignment solver runs
there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

from husai.errors import UserError

DeviceName = Literal["auto", "cpu", "cuda"]
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``; else a one-line UserError."""
    if isinstance(device, torch.device):
        return device
    device = "cpu" if device is None else str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device {device}: expected auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


def on_cpu(device: torch.device) -> bool:
    return device.type == "cpu"


@contextlib.contextmanager
def factory_device(device: torch.device) -> Iterator[None]:
    """Tensors made without an explicit device inside land on ``device``; on the CPU this
    enters nothing (no per-op dispatch cost, the very same calls as without it)."""
    if on_cpu(device):
        yield
        return
    with device:
        yield


def unit_device(device: str, executor: str) -> str:
    """The device the study's units train on, decided once by the driver: ``auto`` is CUDA
    when this machine has it; ``cuda`` is checked here, except for Ray, whose workers may
    hold GPUs that the driver lacks (they are asked for one each)."""
    if device == "cuda" and executor == "ray":
        return "cuda"
    return resolve_device(device).type
