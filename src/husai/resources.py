"""Files shipped with husai: the example and study configs and the committed model run.

In the repository they are ``configs/`` and ``artifacts/default_model/``. The package
reaches them as ``husai/_data/configs`` and ``husai/_data/artifacts``: symlinks to those
folders in a source checkout (so an editable install reads the repository's own files),
copies inside a wheel (``[tool.setuptools.package-data]`` in pyproject.toml). So
``husai run`` works from any directory, installed with ``pip install .`` or ``-e``.

:func:`locate` is the one rule for a relative path given on the command line or in a
study (``transformer_run``): the current directory first, then the shipped data.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "artifacts/default_model"
"""The committed grokked model run, relative to the repository root (and to :func:`data_root`)."""


def data_root() -> Path:
    """The folder that holds the shipped ``configs/`` and ``artifacts/``."""
    return Path(str(files("husai").joinpath("_data")))


def shipped(path: str | Path) -> Path | None:
    """The shipped copy of a repository-relative ``path``, or None (absolute, or not shipped)."""
    path = Path(path)
    if path.is_absolute():
        return None
    candidate = data_root() / path
    return candidate if candidate.exists() else None


def locate(path: str | Path) -> Path:
    """``path`` if it exists here, else its shipped copy if there is one, else ``path``
    unchanged (so that a not-found error names what the user wrote)."""
    path = Path(path)
    if path.exists():
        return path
    copy = shipped(path)
    if copy is None:
        return path
    log.info(
        "%s is not in the current directory; using the copy shipped with husai: %s", path, copy
    )
    return copy
