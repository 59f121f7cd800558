"""Provenance of a study: configs, package versions, git commit, machine."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from husai.config import StudyConfig

PACKAGES = (
    "husai",
    "torch",
    "transformer-lens",
    "sae-lens",
    "numpy",
    "scipy",
    "pandas",
    "pydantic",
    "wandb",
    "ray",
)


def provenance(study: StudyConfig, model_dir: Path | None) -> dict[str, Any]:
    """Configs, package versions, git commit and machine; ``model_dir`` None for a language model."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "study": study.model_dump(mode="json"),
        "model_dir": None if model_dir is None else str(model_dir),
        "packages": versions,
        "git_commit": _git_commit(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cpu_count": _cpu_count(),
        },
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()
