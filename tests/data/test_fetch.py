"""Extraction of pinned archives into the cache: on the cache's own file system, readable by a shared group."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import pytest

from clbench.data import fetch


def test_extraction_stays_inside_the_cache_and_is_group_readable(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLBENCH_CACHE", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))  # extraction must not use $TMPDIR
    archive = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("demo/data/a.txt", "alpha")
        zf.writestr("demo/other.txt", "not needed")
    monkeypatch.setitem(fetch.PINNED, "demo", fetch.Archive("demo", "demo==1.0", "0" * 64, False, "demo/data/"))
    monkeypatch.setattr(fetch, "archive_path", lambda key: archive)
    root = fetch.extracted("demo")
    assert root == cache / "extracted" / "demo"  # the cache did not exist: created, then extracted into
    assert (root / "demo/data/a.txt").read_text() == "alpha" and not (root / "demo/other.txt").exists()
    assert (root.stat().st_mode & 0o777) == fetch.SHARED_MODE
    assert [p.name for p in root.parent.iterdir()] == ["demo"]  # no temporary folder left beside it


def test_a_verified_folder_is_not_hashed_again_until_a_file_changes(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("demo/data/a.txt", "alpha")
        zf.writestr("demo/data/b.txt", "beta")
    monkeypatch.setitem(fetch.PINNED, "demo", fetch.Archive("demo", "demo==1.0", "0" * 64, False, "demo/data/"))
    monkeypatch.setattr(fetch, "archive_path", lambda key: archive)
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
