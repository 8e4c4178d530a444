"""The training phase keeps glibc's heap between steps and returns it when the phase ends (clbench.training.heap)."""

from __future__ import annotations

import gc
import resource
import weakref
from pathlib import Path

import pytest
import torch
from runs_util import tiny_run

from clbench.training import heap

MIB = 2**20


INSIDE = [("mallopt", -3, 32 * MIB), ("mallopt", -4, 0), ("mallopt", -1, 2**31 - 1)]
AFTER = [("mallopt", -4, 65536), ("mallopt", -1, 64 * MIB), ("malloc_trim", 0)]


def optimizers() -> list[torch.optim.Optimizer]:
    return [o for o in gc.get_objects() if issubclass(type(o), torch.optim.Optimizer)]


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.optimizer_states_at_trim: list[int] = []
        self.earlier = weakref.WeakSet(optimizers())  # an earlier test's, waiting in a cycle for the collector

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        self.optimizer_states_at_trim.append(sum(len(o.state) for o in optimizers() if o not in self.earlier))
        return 1


def test_thresholds_raised_inside_and_everything_returned_after(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    with pytest.raises(RuntimeError), heap.kept_heap():  # a phase that fails still gives its heap back
        assert libc.calls == INSIDE
        raise RuntimeError("diverged")
    assert libc.calls[len(INSIDE):] == AFTER


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
@pytest.mark.parametrize("block_mib, blocks", [(8, 8), (48, 1)])
def test_freed_memory_is_kept_inside_and_returned_after(block_mib: int, blocks: int) -> None:
    """64 MiB in 8 MiB blocks, or one block of 48 MiB (above glibc's 32 MiB mmap ceiling, as a word-embedding
    gradient is), freed inside the block as a step's activations and gradients are: the pages stay with the
    process until the block ends, then go back to the kernel."""
    heap.glibc().malloc_trim(0)  # what earlier tests freed in this process goes back first
    start = _rss_bytes()
    with heap.kept_heap():
        held_blocks = [torch.ones(block_mib * MIB // 4) for _ in range(blocks)]  # float32, every page written
        del held_blocks
        held = _rss_bytes()
    assert held - start > 40 * MIB, (held - start) / MIB  # freed, yet kept for the next step
    assert held - _rss_bytes() > 40 * MIB, (held - _rss_bytes()) / MIB  # returned when the phase ended


@pytest.mark.parametrize("method", ["naive", "avalanche:naive"])  # Avalanche's strategy keeps its optimiser
def test_a_run_trains_inside_the_kept_heap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """Freed by the time of the trim means freed by reference counting: the collector is off for the run."""
    libc = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    gc.disable()
    try:
        records = tiny_run(tmp_path / "run", (method,))
    finally:
        gc.enable()
    tasks = {r["task"] for r in records if r["type"] == "accuracy" and r["row"] > 0}
    assert libc.calls == (INSIDE + AFTER) * len(tasks)  # each task's training, and nothing else, in a kept heap
    assert libc.optimizer_states_at_trim == [0] * len(tasks)  # the optimiser's state is freed before the trim
