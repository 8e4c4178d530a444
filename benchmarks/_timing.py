"""Helpers shared by the `bench_*.py` scripts: interleaved timing, medians of ratios and a machine line.

The scripts run on shared, often overloaded machines, so they never trust an absolute time. Every compared
variant runs in the same process, interleaved A B A B ..., and the figure reported is the median over repeats
of the per-repeat ratio, which cancels load that affects both sides alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def machine() -> str:
    """CPU model, cores, load average and accelerator, for the header of every benchmark's output; then any
    allocator settings in the environment (glibc's `MALLOC_*` variables, `LD_PRELOAD`), which change page
    faults and so the times."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    allocator = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                         if k.startswith("MALLOC_") or k == "LD_PRELOAD")
    return f"{model}, {os.cpu_count()} cores, load average {load}, {gpu}" + (f"; {allocator}" if allocator else "")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call, synchronising CUDA around it when a GPU is in use."""
    sync = _cuda_sync()
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Run every variant once per repeat, alternating the order each repeat; returns seconds per variant.

    Alternating (A B, B A, ...) keeps a slow drift in machine load from always favouring the variant that
    runs first.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds, _ = timed(variants[name])
            times[name].append(seconds)
    return times


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repeats of numerator[i] / denominator[i] (paired, so shared load cancels)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def verdict(value: float, target: float, lower_is_better: bool = True, unit: str = "x") -> str:
    """'met (target <= 1.05x)' or 'NOT met (...)' for a ratio (unit "x") or a time (unit " s")."""
    met = value <= target if lower_is_better else value >= target
    return f"{'met' if met else 'NOT met'} (target {'<=' if lower_is_better else '>='} {target:g}{unit})"


def _cuda_sync() -> Callable[[], None]:
    try:
        import torch
    except ImportError:
        return lambda: None
    if torch.cuda.is_available():
        return torch.cuda.synchronize
    return lambda: None


def encoded_stream(name: str = "reviews", model: str = "minilm", **sizes: int | None) -> Any:
    """(Stream, [TaskSplits (train, val, test) per task]) through clbench's cached tokenisation."""
    from clbench.data.streams import cache_dir, load_stream
    from clbench.data.tokenize import encode_stream
    from clbench.models import load_tokenizer, tokenizer_fingerprint

    stream = load_stream(name, **sizes)
    splits = encode_stream(stream, load_tokenizer(model), tokenizer_fingerprint(model), cache_dir())
    return stream, splits


def run_context(stream: Any, seed: int = 0, batch_size: int = 16, head: str | None = None) -> Any:
    """A `RunContext` on the CPU (or the first GPU) for `stream`, as the runner builds it."""
    import torch

    from clbench.protocol import RunContext

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return RunContext(tasks=stream.infos(), num_labels=stream.num_labels, device=device, seed=seed,
                      generator=torch.Generator().manual_seed(seed + 1_000_003), buffer_size=200,
                      batch_size=batch_size, head=head or stream.head)
