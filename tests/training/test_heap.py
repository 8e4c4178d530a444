"""The training phase keeps glibc's heap between steps and returns it when the phase ends (clbench.training.heap)."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
import torch
from runs_util import tiny_run

from clbench.training import heap

MIB = 2**20


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_thresholds_raised_inside_and_everything_returned_after(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    with pytest.raises(RuntimeError), heap.kept_heap():  # a phase that fails still gives its heap back
        assert libc.calls == [("mallopt", -3, 32 * MIB), ("mallopt", -1, 2**31 - 1)]
        raise RuntimeError("diverged")
    assert libc.calls[2:] == [("mallopt", -1, 64 * MIB), ("malloc_trim", 0)]


@pytest.mark.parametrize("name, value", [("MALLOC_TRIM_THRESHOLD_", "0"), ("MALLOC_MMAP_MAX_", "0"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")])
def test_the_users_allocator_settings_are_left_alone(monkeypatch: pytest.MonkeyPatch, name: str, value: str
                                                     ) -> None:
    monkeypatch.setenv(name, value)
    assert heap.glibc.__wrapped__() is None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.skipif(heap.glibc() is None, reason="glibc's malloc only")
def test_freed_memory_is_kept_inside_and_returned_after() -> None:
    """64 MiB in 8 MiB blocks (under the mmap threshold, so from the heap), freed inside the block as a step's
    activations are: the pages stay with the process until the block ends, then go back to the kernel."""
    heap.glibc().malloc_trim(0)  # what earlier tests freed in this process goes back first
    start = _rss_bytes()
    with heap.kept_heap():
        blocks = [torch.ones(2 * MIB) for _ in range(8)]  # float32: 8 MiB each, every page written
        del blocks
        held = _rss_bytes()
    assert held - start > 48 * MIB, (held - start) / MIB  # freed, yet kept for the next step
    assert held - _rss_bytes() > 48 * MIB, (held - _rss_bytes()) / MIB  # returned when the phase ended


def test_a_run_trains_inside_the_kept_heap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    records = tiny_run(tmp_path / "run", ("naive",))
    tasks = {r["task"] for r in records if r["type"] == "accuracy" and r["row"] > 0}
    phase = [("mallopt", -3, 32 * MIB), ("mallopt", -1, 2**31 - 1), ("mallopt", -1, 64 * MIB), ("malloc_trim", 0)]
    assert libc.calls == phase * len(tasks)  # each task's training, and nothing else, in a kept heap
