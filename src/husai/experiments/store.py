"""The run store: one directory per study, one writer at a time, every file written atomically.

Layout (see README): ``study.yaml``, ``provenance.json``, ``model/``, ``activations/``,
``units/<unit_id>/`` and the tables ``results.parquet``, ``pairs.parquet``,
``summary.parquet``, ``dynamics.parquet``.

- **One writer.** ``RunStore.lock()`` holds an exclusive ``fcntl.flock`` on ``.lock``,
  which names the owner's PID and host. A second run is refused with one line naming
  that PID. The kernel drops the flock when its process dies, even by ``kill -9``, so a
  lock file left by a killed run is recovered (and logged) by the next one. The file is
  emptied, never deleted, on release: deleting it would let two later runs lock two
  different files.
- **A unit is all or nothing.** ``write_unit`` writes the unit's files into a hidden
  staging directory, lists them (relative path, size, sha256) in ``unit.json``, then
  renames the directory into place. A unit counts as done only while every listed file
  is present and intact, so a unit damaged by a crash, a race or a hand edit is redone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from husai import layout
from husai.errors import DiskFullError, UserError
from husai.experiments.unit import UnitResult
from husai.io import atomic_save_safetensors, atomic_write_bytes, atomic_write_json, sha256_file
from husai.schema import SaeRecord

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def units_dir(self) -> Path:
        return self.root / layout.UNITS

    def unit_dir(self, unit_id: str) -> Path:
        return layout.unit_dir(self.root, unit_id)

    def activations_dir(self, checkpoint: str, hook_slug: str) -> Path:
        return layout.activations_dir(self.root, checkpoint, hook_slug)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's writer lock for the ``with`` block; a held lock is a UserError."""
        path = self.root / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"{self.root}: run store in use by {_describe(_read_owner(fd))}; "
                    f"wait for that run to end or stop it (lock file {path})"
                ) from None
            stale = _read_owner(fd)
            if stale:
                log.warning(
                    "%s: recovered a stale lock left by %s (that run ended without releasing it)",
                    self.root,
                    _describe(stale),
                )
            _write_owner(fd)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def remove_leftovers(self) -> None:
        """Delete staging dirs of killed writers; call only while holding the lock."""
        if self.units_dir.is_dir():
            for path in self.units_dir.glob(".*"):
                shutil.rmtree(path, ignore_errors=True)

    def unit_record(self, unit_id: str) -> dict[str, Any] | None:
        path = self.unit_dir(unit_id) / layout.UNIT_RECORD
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def is_done(self, unit_id: str) -> bool:
        """Whether the unit finished and still holds every file its unit.json lists, intact."""
        rec = self.unit_record(unit_id)
        if rec is None or rec.get("status") != "ok":
            return False
        problem = _damage(self.unit_dir(unit_id), rec)
        if problem is not None:
            log.warning("unit %s: %s; redoing it", unit_id, problem)
        return problem is None

    def write_unit(self, result: UnitResult, content: dict[str, Any]) -> None:
        """Stage the unit's files, list them in unit.json, then swap the directory in."""
        stage = self.units_dir / f".{result.unit_id}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            stage.mkdir(parents=True)
            for sae in result.saes:
                _write_sae_dir(layout.sae_dir_in(stage, sae.sae_id), sae)
            if result.snapshots:
                atomic_save_safetensors(stage / layout.UNIT_SNAPSHOTS, result.snapshots)
            atomic_write_json(
                stage / layout.UNIT_RECORD, _record(result, content, _manifest(stage))
            )
            _swap_in(stage, self.unit_dir(result.unit_id))
        except BaseException as err:
            shutil.rmtree(stage, ignore_errors=True)
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                raise DiskFullError.writing(self.unit_dir(result.unit_id)) from None
            raise

    def records(self) -> list[dict[str, Any]]:
        if not self.units_dir.is_dir():
            return []
        out = [
            self.unit_record(p.name)
            for p in sorted(self.units_dir.iterdir())
            if p.is_dir() and not p.name.startswith(".")
        ]
        return [r for r in out if r is not None]


def _record(result: UnitResult, content: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """unit.json: the unit's results, and ``files`` (relative path -> size, sha256) it holds."""
    return {
        "unit_id": result.unit_id,
        "status": result.status,
        "error": result.error,
        "unit": content,
        "steps": result.steps,
        "wall_s": result.wall_s,
        "saes": [s.as_json() for s in result.saes],
        "pairs": [p.row() for p in result.pairs],
        "dynamics": [d.row() for d in result.dynamics],
        "history": result.history,
        "files": files,
    }


def _write_sae_dir(path: Path, sae: SaeRecord) -> None:
    """The SAE's own files (SAELens format, as the unit saved them) plus eval.json."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in sae.files.items():
        atomic_write_bytes(path / name, data)
    atomic_write_json(path / "eval.json", {**sae.eval, **{f"gt_{k}": v for k, v in sae.gt.items()}})


def _manifest(unit_dir: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``unit_dir`` but unit.json: relative path -> size and sha256."""
    return {
        p.relative_to(unit_dir).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(unit_dir.rglob("*"))
        if p.is_file() and p.name != layout.UNIT_RECORD
    }


def _damage(unit_dir: Path, record: dict[str, Any]) -> str | None:
    """Why a finished unit's files cannot be trusted (missing, changed), or None if intact."""
    files = record.get("files")
    if not isinstance(files, dict):
        return "unit.json lists no files (written by an older husai)"
    for rel, want in sorted(files.items()):
        path = unit_dir / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != want.get("size") or sha256_file(path) != want.get("sha256"):
            return f"{rel} fails its checksum"
    return None


def _swap_in(stage: Path, unit_dir: Path) -> None:
    """Rename ``stage`` to ``unit_dir``, first moving aside (and deleting) any older copy."""
    for _ in range(5):  # several tries only if another writer swaps in at the same moment
        if unit_dir.exists():
            old = unit_dir.with_name(f".{unit_dir.name}.{uuid.uuid4().hex[:8]}.old")
            try:
                os.rename(unit_dir, old)
            except FileNotFoundError:
                pass
            else:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(stage, unit_dir)
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    raise RuntimeError(f"{unit_dir}: another writer kept replacing this unit")


def _read_owner(fd: int) -> dict[str, Any] | None:
    """The lock file's owner record, or None if the file is empty (released cleanly)."""
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if not text:
        return None
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        owner = None
    return owner if isinstance(owner, dict) else {"pid": "?", "raw": text[:80]}


def _write_owner(fd: int) -> None:
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    data = (json.dumps(owner) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _describe(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "another process (it has not written its PID yet)"
    where = f" on {owner['host']}" if owner.get("host") else ""
    since = f" since {owner['since']}" if owner.get("since") else ""
    return f"PID {owner.get('pid', '?')}{where}{since}"
