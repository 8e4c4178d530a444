"""Cost profiling: wall time, peak CPU RSS and peak CUDA memory of a block of code, plus throughput.

Usage::

    with profile(device) as rec:
        for batch in loader:
            ...
            rec.add(examples=len(batch), tokens=batch.num_tokens)
    rec.wall_s, rec.peak_rss_mb, rec.peak_cuda_mb, rec.examples_per_s, rec.tokens_per_s

Measurements:

- ``wall_s``: ``time.perf_counter`` difference; on CUDA the device is synchronised at entry and exit so queued
  kernels are charged to the block that launched them.
- ``peak_rss_mb``: peak resident set size *during the block*, in MiB. On Linux (4.0 or later) it is the kernel's
  own high-water mark: entering a block writes 5 to ``/proc/self/clear_refs``, which resets ``VmHWM`` in
  ``/proc/self/status`` to the current RSS, and leaving it reads ``VmHWM`` back. That is the block's exact peak,
  spikes included, at the cost of two small file operations and no thread. Nested or concurrent blocks are
  handled: before any block resets the mark, the peak so far is folded into every block still open. The reset
  also lowers the process's ``getrusage().ru_maxrss``, so after a profiled block that is no longer a lifetime
  peak. Elsewhere (macOS, Windows, a ``/proc`` that cannot be written) ``ru_maxrss`` is the peak over the whole
  process lifetime and cannot see a block's peak below an earlier one, so a daemon thread samples RSS with
  psutil every ``sample_interval_s`` (20 ms by default) and the result is max(sampled peak, ru_maxrss at exit if
  ru_maxrss grew during the block, then the block's exact peak). Spikes shorter than the interval that do not
  raise the lifetime peak can be missed there. Without psutil only the ru_maxrss rule applies, and
  ``peak_rss_mb`` is None when the lifetime peak did not grow during the block.
- ``peak_cuda_mb``: ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats`` at entry,
  in MiB; memory held by tensors only (not the caching allocator's reserve). ``None`` when the block does not
  run on CUDA, so reports can say "CPU run" instead of showing zeros. Nested profiles on the same device are
  handled: an inner block's reset first folds the peak so far into every enclosing record.

Counts (examples, tokens, steps, ...) are added by the caller with `ProfileRecord.add`; rates are count /
``wall_s``.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_MIB = float(1 << 20)


@dataclass
class ProfileRecord:
    """What `profile` measured; mutable so the caller can add counts inside the block.

    Attributes:
        wall_s: Wall-clock seconds of the block (0.0 until the block exits).
        peak_rss_mb: Peak resident set size of the process during the block, MiB (None until exit).
        peak_cuda_mb: Peak CUDA memory allocated during the block, MiB; None on CPU.
        device: The device profiled, e.g. "cpu" or "cuda:0".
        counts: Caller-supplied counts such as examples or tokens.
    """

    wall_s: float = 0.0
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    device: str = "cpu"
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, **counts: float) -> None:
        """Add to named counts, e.g. ``rec.add(examples=32, tokens=4096)``."""
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value

    def rate(self, key: str) -> float | None:
        """counts[key] / wall_s, or None if the count was never added or no time has been recorded."""
        if key not in self.counts or self.wall_s <= 0.0:
            return None
        return self.counts[key] / self.wall_s

    @property
    def examples_per_s(self) -> float | None:
        """Examples per second (needs ``add(examples=...)``)."""
        return self.rate("examples")

    @property
    def tokens_per_s(self) -> float | None:
        """Tokens per second (needs ``add(tokens=...)``)."""
        return self.rate("tokens")

    def as_dict(self) -> dict[str, Any]:
        """Flat dict for result records: measurements, every count and every ``<count>_per_s`` rate."""
        out: dict[str, Any] = {
            "wall_s": self.wall_s,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_cuda_mb": self.peak_cuda_mb,
            "device": self.device,
        }
        for key, value in self.counts.items():
            out[key] = value
            out[f"{key}_per_s"] = self.rate(key)
        return out


def _ru_maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


class _RssSampler:
    """Samples this process's RSS in a daemon thread; `stop` joins it and returns the block's peak in bytes: the
    sampled peak, or ru_maxrss at exit where that grew during the block (then it is the block's exact peak)."""

    def __init__(self, interval_s: float) -> None:
        self._ru_start = _ru_maxrss_bytes()
        self._process: Any = None
        try:
            import psutil

            self._process = psutil.Process()
        except ImportError:  # psutil is optional; ru_maxrss still gives the peak when it grows
            pass
        self._interval_s = interval_s
        self._done = threading.Event()
        self.peak = self._rss()
        self._thread: threading.Thread | None = None
        if self._process is not None and interval_s > 0:
            self._thread = threading.Thread(target=self._run, name="clbench-rss-sampler", daemon=True)
            self._thread.start()

    def _rss(self) -> int:
        return int(self._process.memory_info().rss) if self._process is not None else 0

    def _run(self) -> None:
        while not self._done.wait(self._interval_s):
            self.peak = max(self.peak, self._rss())

    def stop(self) -> int:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._rss())
        ru_end = _ru_maxrss_bytes()
        if self._ru_start is not None and ru_end is not None and ru_end > self._ru_start:
            self.peak = max(self.peak, ru_end)
        return self.peak


_STATUS, _CLEAR_REFS = "/proc/self/status", "/proc/self/clear_refs"


@dataclass
class _RssWatch:
    """A block measured by the kernel's high-water mark: the peak folded in from before any later reset."""

    peak: int = 0

    def stop(self) -> int:
        """Close the block; its peak RSS in bytes."""
        with _RSS_LOCK:
            self.peak = max(self.peak, _high_water_bytes() or 0)
            _ACTIVE_RSS.remove(self)
            return self.peak


# Blocks currently measured by the kernel's high-water mark, in any thread; the lock orders fold, reset and read.
_ACTIVE_RSS: list[_RssWatch] = []
_RSS_LOCK = threading.Lock()
_KERNEL_PEAK = {"works": sys.platform.startswith("linux")}  # False once reading or resetting the mark failed


def _high_water_bytes() -> int | None:
    """VmHWM of this process: the most it has had resident since it started or since the last reset."""
    try:
        with open(_STATUS, "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_high_water() -> bool:
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _start_rss_watch() -> _RssWatch | None:
    """Fold the peak so far into every open block, reset the mark and open a block; None where the kernel's mark
    cannot be used here (then the caller samples)."""
    with _RSS_LOCK:
        if not _KERNEL_PEAK["works"]:
            return None
        so_far = _high_water_bytes()
        if so_far is None or not _reset_high_water():
            _KERNEL_PEAK["works"] = False
            return None
        for outer in _ACTIVE_RSS:
            outer.peak = max(outer.peak, so_far)
        watch = _RssWatch()
        _ACTIVE_RSS.append(watch)
        return watch


@dataclass
class _CudaWatch:
    device: torch.device
    peak: int = 0


# Records currently inside a CUDA `profile` block, innermost last; lets nested blocks keep outer peaks.
_ACTIVE_CUDA: list[_CudaWatch] = []


def _cuda_device(device: torch.device | str | None) -> torch.device | None:
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            return torch.device("cuda", torch.cuda.current_device())
        return None
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())


@contextmanager
def profile(
    device: torch.device | str | None = None, *, sample_interval_s: float = 0.02
) -> Iterator[ProfileRecord]:
    """Measure wall time, peak CPU RSS and (on CUDA) peak allocated GPU memory of a block.

    Args:
        device: The device the block computes on. A CUDA device enables the CUDA measurements; "cpu" gives
            ``peak_cuda_mb = None``. None picks the current CUDA device if CUDA is already initialised in this
            process, else CPU; pass the device explicitly when the block may initialise CUDA itself.
        sample_interval_s: RSS sampling period of the background thread, where the kernel's high-water mark
            cannot be used; 0 disables the thread (then only the ru_maxrss rule and the RSS at exit are used).

    Yields:
        A `ProfileRecord`; its measurements are filled in when the block exits, also on an exception.
    """
    cuda = _cuda_device(device)
    record = ProfileRecord(device=str(cuda) if cuda is not None else "cpu")
    watch: _CudaWatch | None = None
    if cuda is not None:
        torch.cuda.synchronize(cuda)
        so_far = torch.cuda.max_memory_allocated(cuda)
        for outer in _ACTIVE_CUDA:
            if outer.device == cuda:
                outer.peak = max(outer.peak, so_far)
        torch.cuda.reset_peak_memory_stats(cuda)
        watch = _CudaWatch(cuda)
        _ACTIVE_CUDA.append(watch)
    rss: _RssWatch | _RssSampler = _start_rss_watch() or _RssSampler(sample_interval_s)
    start = time.perf_counter()
    try:
        yield record
    finally:
        if watch is not None:
            torch.cuda.synchronize(watch.device)
        record.wall_s = time.perf_counter() - start
        peak = rss.stop()
        record.peak_rss_mb = peak / _MIB if peak else None
        if watch is not None:
            watch.peak = max(watch.peak, torch.cuda.max_memory_allocated(watch.device))
            _ACTIVE_CUDA.remove(watch)
            record.peak_cuda_mb = watch.peak / _MIB


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameter elements; shared parameters are counted once.

    Args:
        model: Any module (for PEFT-wrapped models, the wrapper: frozen base weights count in total only).

    Returns:
        (trainable, total).
    """
    trainable = total = 0
    for p in model.parameters():  # parameters() already de-duplicates shared tensors
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def optimizer_state_mb(optimizer: torch.optim.Optimizer) -> float:
    """Memory held by an optimiser's state tensors (e.g. Adam's two moments), MiB.

    Args:
        optimizer: Any torch optimiser, after at least one step (state is created lazily).

    Returns:
        Σ numel · element size over all state tensors, in MiB.
    """
    size = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                size += value.numel() * value.element_size()
    return size / _MIB
