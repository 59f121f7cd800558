"""The run store on its own (no training): the writer lock, and units that are all or nothing."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from husai.errors import DiskFullError, UserError
from husai.experiments.store import LOCK_NAME, RunStore
from husai.experiments.unit import UnitResult
from husai.schema import GroupKey, SaeRecord

HOLD_LOCK = (
    "import sys, time\n"
    "from husai.experiments.store import RunStore\n"
    "with RunStore(sys.argv[1]).lock():\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(300)\n"
)


def _result(unit_id: str = "u1", seeds: tuple[int, ...] = (0, 1), tag: bytes = b"a") -> UnitResult:
    group = GroupKey(f"{unit_id}/2", "topk", 8, "hook", "final", "k", 2.0)
    saes = [
        SaeRecord(
            f"k2-seed{s}",
            group,
            seed=s,
            steps=1,
            converged_step=None,
            n_alive=8,
            eval={"mse": 0.5},
            gt={},
            files={"cfg.json": b'{"d_in": 8}', "sae_weights.safetensors": tag * (10 + s)},
        )
        for s in seeds
    ]
    return UnitResult(unit_id, "ok", saes=saes, snapshots={"step_1": torch.ones(2, 3)}, steps=1)


# --- one writer -----------------------------------------------------------------------


def test_a_second_lock_in_this_process_is_refused_with_our_pid(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    with store.lock():
        owner = json.loads((tmp_path / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["host"]
        with pytest.raises(UserError, match=f"in use by PID {os.getpid()} on ") as err:
            with RunStore(tmp_path).lock():
                pytest.fail("took a lock that is held")
        assert "\n" not in str(err.value)
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: emptied, not deleted


@pytest.mark.parametrize("exc", [UserError("bad input"), KeyboardInterrupt()])
def test_the_lock_is_released_on_error_and_on_ctrl_c(tmp_path: Path, exc: BaseException) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(type(exc)):
        with store.lock():
            raise exc
    with store.lock():  # would raise UserError if still held
        pass


def test_a_live_lock_in_another_process_then_its_kill_9(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by PID {holder.pid} on "):
            with RunStore(tmp_path).lock():
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file keeps its PID
        holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger="husai.experiments.store"):
        with RunStore(tmp_path).lock():
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"recovered a stale lock left by PID {holder.pid}" in caplog.text


def test_a_stale_lock_file_is_recovered_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 4_000_000_001, "host": "gone"}))
    with caplog.at_level(logging.WARNING, logger="husai.experiments.store"):
        with RunStore(tmp_path).lock():
            pass
    assert "recovered a stale lock left by PID 4000000001 on gone" in caplog.text


# --- units: all or nothing ------------------------------------------------------------


def test_unit_json_lists_every_file_with_size_and_sha256(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.write_unit(_result(), {"arch": "topk"})
    udir = store.unit_dir("u1")
    files = store.unit_record("u1")["files"]
    on_disk = {p.relative_to(udir).as_posix() for p in udir.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {"unit.json"}
    assert "saes/k2-seed1/sae_weights.safetensors" in files and "snapshots.safetensors" in files
    assert files["saes/k2-seed1/sae_weights.safetensors"]["size"] == 11
    assert store.is_done("u1")
    assert not list(store.units_dir.glob(".*"))  # no staging dir left


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "saes/k2-seed0/sae_weights.safetensors").unlink(), "is missing"),
        (lambda d: (d / "saes/k2-seed0/cfg.json").write_text('{"d_in": 9}'), "fails its checksum"),
        (lambda d: (d / "snapshots.safetensors").write_bytes(b"short"), "fails its checksum"),
    ],
    ids=["missing", "changed", "truncated"],
)
def test_a_unit_with_a_missing_or_changed_file_is_not_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: object, reason: str
) -> None:
    store = RunStore(tmp_path)
    store.write_unit(_result(), {})
    damage(store.unit_dir("u1"))  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="husai.experiments.store"):
        assert not store.is_done("u1")
    assert "unit u1: " in caplog.text and reason in caplog.text


def test_a_unit_json_without_a_file_list_is_not_done(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RunStore(tmp_path)
    store.write_unit(_result(), {})
    path = store.unit_dir("u1") / "unit.json"
    record = json.loads(path.read_text())
    del record["files"]
    path.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="husai.experiments.store"):
        assert not store.is_done("u1")
    assert "lists no files" in caplog.text


def test_rewriting_a_unit_replaces_it_whole(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.write_unit(_result(seeds=(0, 1, 2)), {})
    store.write_unit(_result(seeds=(5,), tag=b"b"), {})
    saes = {p.name for p in (store.unit_dir("u1") / "saes").iterdir()}
    assert saes == {"k2-seed5"} and store.is_done("u1")
    assert [r["unit_id"] for r in store.records()] == ["u1"]


def test_leftovers_of_a_killed_writer_are_ignored_then_removed(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.write_unit(_result(), {})
    leftover = store.units_dir / ".u2.1234abcd.tmp"
    leftover.mkdir()
    (leftover / "unit.json").write_text(json.dumps({"unit_id": "u2", "status": "ok"}))
    assert [r["unit_id"] for r in store.records()] == ["u1"]
    with store.lock():
        store.remove_leftovers()
    assert not leftover.exists() and store.is_done("u1")


def test_a_full_disk_keeps_no_partial_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path)
    calls = []

    def full(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 3:  # after two files of the unit were written
            raise OSError(errno.ENOSPC, "No space left on device")
        Path(path).write_bytes(data)

    monkeypatch.setattr("husai.experiments.store.atomic_write_bytes", full)
    with pytest.raises(DiskFullError) as err:
        store.write_unit(_result(), {})
    assert str(err.value) == (
        f"disk full while writing {store.unit_dir('u1')}; no partial files were kept; "
        "free space and rerun to resume"
    )
    assert list(store.units_dir.iterdir()) == [] and not store.is_done("u1")


def test_peak_rss_is_at_least_the_current_resident_memory():
    from husai.experiments.runner import peak_rss_gb

    held = bytearray(200 * 2**20)  # 200 MiB, touched so that it is resident
    held[::4096] = b"\x01" * len(held[::4096])
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("no /proc/self/status on this platform to read the current RSS from")
    rss_kib = next(
        int(x.split()[1]) for x in status.read_text().splitlines() if x.startswith("VmRSS")
    )
    # ru_maxrss is the kernel's high-water mark, updated lazily: within 2% of the RSS now
    assert peak_rss_gb() >= 0.98 * rss_kib * 1024 / 1e9 >= 0.98 * 0.2
    del held
