"""The benchmarks' shared header line: a figure measured under a changed allocator says so."""

from __future__ import annotations

import pytest

from clbench.benchmarks._timing import machine


def test_machine_line_names_allocator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    assert ";" not in machine()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4294967296")
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    assert machine().endswith("; MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4294967296")
