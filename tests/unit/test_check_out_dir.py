"""check_out_dir: the one check of an output directory (the CLI's --out, husai consensus).

Every refusal is one UserError line and nothing is created on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from husai.errors import UserError
from husai.io import check_out_dir


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def test_new_empty_and_nested_new_directories_pass(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty", tmp_path / "new" / "deeper"):
        assert check_out_dir(out, marker="done.json") == out
    assert _files(tmp_path) == [tmp_path / "empty"]


@pytest.mark.parametrize("below", [False, True])
def test_a_file_or_a_path_below_a_file_is_refused(tmp_path: Path, below: bool) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "x" if below else blocker
    with pytest.raises(UserError) as err:
        check_out_dir(out)
    assert str(err.value) == f"--out {out}: {blocker} is a file, not a directory"


def test_an_unwritable_directory_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(UserError, match=f"^--out {tmp_path / 'x'}: {tmp_path} is not writable$"):
        check_out_dir(tmp_path / "x")


def test_an_input_is_refused_however_it_is_spelt(tmp_path: Path, monkeypatch) -> None:
    sae = tmp_path / "sae"
    sae.mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="^--out sae/../sae: is one of the inputs; choose another"):
        check_out_dir(Path("sae/../sae"), [tmp_path / "other", sae])


def test_marker_refuses_a_directory_another_command_filled(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert check_out_dir(out) == out  # no marker: a resumable run store may be non-empty
    with pytest.raises(UserError) as err:
        check_out_dir(out, marker="consensus.json")
    assert str(err.value) == (
        f"--out {out}: exists and holds no consensus.json; choose an empty or new --out"
    )
    (out / "consensus.json").write_text("{}")
    assert check_out_dir(out, marker="consensus.json") == out


def test_consensus_refuses_its_input_and_a_foreign_directory_before_any_work(
    tmp_path: Path,
) -> None:
    import torch

    from husai.config import SAETrainConfig, TopKSAEConfig
    from husai.metrics.consensus_sae import build_consensus
    from husai.saes import init_group, save_sae

    dirs = []
    for i in range(2):
        sae = init_group(8, [TopKSAEConfig(d_sae=16, k=2)], SAETrainConfig(init_seeds=[i]))
        dirs.append(save_sae(tmp_path / f"r{i}", sae, 0, hook_name="x"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    before = _files(tmp_path)
    for out, expected in [(dirs[0], "is one of the inputs"), (foreign, "holds no consensus.json")]:
        with pytest.raises(UserError, match=expected):
            build_consensus(dirs, torch.randn(64, 8), out, k=2, steps=5)
    assert _files(tmp_path) == before
