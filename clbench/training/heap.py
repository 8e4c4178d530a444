"""The C heap through a training phase: kept by glibc between steps, returned to the kernel when the phase ends.

Every training step allocates the same activations and gradients and frees them again. glibc hands the free top
of its heap back to the kernel whenever it exceeds its trim threshold, and serves every block above its mmap
threshold (at most 32 MiB) with a fresh mapping that it unmaps on free, so a step can give back and fault in
again a hundred MB or more, paid as system time (measured in benchmarks/README.md, notes on
`bench_overhead.py`). A word-embedding gradient alone is above that ceiling for most models.

`kept_heap` raises glibc's trim threshold and turns mapping off for the training phase, so memory freed after one
step serves the next. The phase's peak resident memory does not change: every step reaches the same high-water
mark anyway. At the end, `malloc_trim(0)` returns every free page, from the middle of the heap as well as its
top, so the evaluation and the next phase, whose peaks the profiler measures from there, do not carry the
training heap. Afterwards mapping is on again with the mmap threshold pinned at glibc's ceiling, since setting
any of these ends glibc's adjustment of its thresholds. Nothing changes where the C library is not glibc, or
when the user chose the allocator's settings (any of glibc's `MALLOC_*` tuning variables, or `GLIBC_TUNABLES`
naming malloc).
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt's parameter numbers in glibc's malloc.h
MMAP_THRESHOLD = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the most its adjustment reaches
MMAP_MAX = 65536  # glibc's DEFAULT_MMAP_MAX: how many blocks may be mapped at once
TRIM_AFTER = 2 * MMAP_THRESHOLD  # what glibc's adjustment sets the trim threshold to at that ceiling
TRIM_DURING = 2**31 - 1  # mallopt takes an int: about 2 GiB of free top before anything is returned
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


@cache
def glibc() -> Any | None:
    """glibc's functions for this process, or None where they are not ours to set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if any(name in os.environ for name in USER_SETTINGS) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def kept_heap() -> Iterator[None]:
    """Within the block, glibc keeps freed memory for reuse; after it, every free page goes back to the kernel."""
    libc = glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_DURING)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_AFTER)
        libc.malloc_trim(0)
