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
def test_freed_steps_are_reused_without_faults_then_returned() -> None:
    """Eight 8 MiB blocks (under the mmap threshold, so from the heap) allocated and freed round after round, as
    steps do: inside the block the later rounds fault in almost nothing (the first may still move blocks
    around); after it, the pages are back with the kernel."""
    pages = 64 * MIB // resource.getpagesize()
    heap.glibc().malloc_trim(0)  # what earlier tests freed in this process goes back: the first round must fault
    with heap.kept_heap():
        faults = []
        for _ in range(4):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            blocks = [torch.ones(2 * MIB) for _ in range(8)]  # float32: 8 MiB each, every page written
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            del blocks
        held = _rss_bytes()
    released = held - _rss_bytes()
    assert faults[0] > pages // 2, faults  # the first round did fault the memory in
    assert max(faults[2:]) < pages // 10, faults  # the later ones reused it
    assert released > 48 * MIB, released / MIB


def test_a_run_trains_inside_the_kept_heap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    records = tiny_run(tmp_path / "run", ("naive",))
    tasks = {r["task"] for r in records if r["type"] == "accuracy" and r["row"] > 0}
    phase = [("mallopt", -3, 32 * MIB), ("mallopt", -1, 2**31 - 1), ("mallopt", -1, 64 * MIB), ("malloc_trim", 0)]
    assert libc.calls == phase * len(tasks)  # each task's training, and nothing else, in a kept heap
