"""Atomic writes: complete files only, no temporaries left behind, usual permissions."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from husai.io import atomic_save_safetensors, atomic_write_json, atomic_write_text, sha256_tensors


def test_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2, "t": torch.tensor(3.5)})
    assert json.loads(path.read_text()) == {"t": 3.5, "x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_tensor_checksum_depends_on_bits_not_storage(tmp_path: Path) -> None:
    t = torch.arange(6.0).reshape(2, 3)
    assert sha256_tensors({"t": t}) == sha256_tensors({"t": t.T.contiguous().T.contiguous()})
    assert sha256_tensors({"t": t}) != sha256_tensors({"t": t + 1e-7})
    atomic_save_safetensors(tmp_path / "w.safetensors", {"t": t.T})
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "w.safetensors"))["t"], t.T)


def test_corrupt_or_missing_safetensors_is_one_user_error(tmp_path: Path) -> None:
    from husai.errors import UserError
    from husai.io import load_safetensors

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="bad.safetensors: not a readable safetensors file"):
        load_safetensors(bad)
    with pytest.raises(UserError, match="file not found"):
        load_safetensors(tmp_path / "none.safetensors")


def test_cli_reports_a_corrupt_sae_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    sae, other = tmp_path / "sae", tmp_path / "other"
    for d in (sae, other):
        d.mkdir()
        (d / "cfg.json").write_text("{}")
        (d / "sae_weights.safetensors").write_bytes(b"\x00" * 16)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "husai.cli",
            "analyze",
            str(sae),
            str(other),
            "--out",
            str(tmp_path / "a.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "sae_weights.safetensors" in proc.stderr
