"""profile() measures time, memory and rates; it never reports CUDA numbers on a CPU run."""

from __future__ import annotations

import importlib
import mmap
import threading
import time

import pytest
import torch

from clbench.evaluators import ProfileRecord, optimizer_state_mb, parameter_counts, profile

profile_module = importlib.import_module("clbench.evaluators.profile")  # the package's `profile` is the function


def test_profile_measures_a_sleep() -> None:
    with profile("cpu") as rec:
        time.sleep(0.05)
        rec.add(examples=10, tokens=200)
        rec.add(examples=10)
    assert 0.05 <= rec.wall_s < 1.0
    assert rec.peak_cuda_mb is None and rec.device == "cpu"
    assert rec.counts == {"examples": 20, "tokens": 200}
    assert rec.examples_per_s == pytest.approx(20 / rec.wall_s)
    assert rec.tokens_per_s == pytest.approx(200 / rec.wall_s)
    assert rec.rate("steps") is None
    row = rec.as_dict()
    assert row["peak_cuda_mb"] is None and row["examples_per_s"] == rec.examples_per_s


@pytest.fixture(params=["kernel", "sampler"])
def rss_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each RSS measurement: the kernel's resettable high-water mark (Linux) and the sampling thread."""
    if request.param == "kernel" and not kernel_peak_works():
        pytest.skip("the kernel's high-water mark cannot be reset here")
    if request.param == "sampler":
        monkeypatch.setitem(profile_module._KERNEL_PEAK, "works", False)
    return str(request.param)


def kernel_peak_works() -> bool:
    with profile("cpu"):
        pass
    return bool(profile_module._KERNEL_PEAK["works"])


def touched(size_mb: int) -> mmap.mmap:
    """`size_mb` MiB of new anonymous memory, every page written so it is resident; unmapped when dropped.

    Mapped directly rather than through malloc: a long test process may hold freed heap pages that malloc would
    hand out again without the process's RSS growing, and then no measurement could see a spike.
    """
    block = mmap.mmap(-1, size_mb << 20)
    page = b"\x01" * mmap.PAGESIZE
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset:offset + mmap.PAGESIZE] = page
    return block


def test_profile_sees_an_allocation(rss_mode: str) -> None:
    size_mb = 200
    with profile("cpu", sample_interval_s=0.005) as rec:
        block = touched(size_mb)
        time.sleep(0.03)
        del block
    with profile("cpu", sample_interval_s=0.005) as quiet:
        time.sleep(0.03)
    assert rec.peak_rss_mb is not None and quiet.peak_rss_mb is not None
    # The first block's peak includes the buffer; the second, after it was freed, does not.
    assert rec.peak_rss_mb >= quiet.peak_rss_mb + 0.8 * size_mb


def test_kernel_peak_sees_a_spike_below_an_earlier_peak() -> None:
    """A 100 MB buffer freed at once, after a 300 MB one raised the lifetime peak: no sample would see it and
    ru_maxrss does not grow, but the kernel's mark, reset at entry, does. No sampling thread runs meanwhile."""
    if not kernel_peak_works():
        pytest.skip("the kernel's high-water mark cannot be reset here")
    touched(300)  # freed as soon as it is made
    with profile("cpu", sample_interval_s=60) as quiet:
        pass
    with profile("cpu", sample_interval_s=60) as rec:
        assert "clbench-rss-sampler" not in {t.name for t in threading.enumerate()}
        spike = touched(100)
        del spike
    assert rec.peak_rss_mb is not None and quiet.peak_rss_mb is not None
    assert quiet.peak_rss_mb + 80 <= rec.peak_rss_mb < quiet.peak_rss_mb + 250


def test_nested_blocks_keep_the_outer_peak(rss_mode: str) -> None:
    """An inner block resets the kernel's mark; the outer block's peak before it must survive the reset."""
    with profile("cpu", sample_interval_s=0.005) as outer:
        block = touched(200)
        time.sleep(0.03)
        del block
        with profile("cpu", sample_interval_s=0.005) as inner:
            time.sleep(0.03)
    assert outer.peak_rss_mb is not None and inner.peak_rss_mb is not None
    assert outer.peak_rss_mb >= inner.peak_rss_mb + 160


def test_profile_fills_record_on_exception() -> None:
    record: ProfileRecord | None = None
    with pytest.raises(RuntimeError), profile("cpu") as rec:
        record = rec
        raise RuntimeError("boom")
    assert record is not None and record.wall_s > 0 and record.peak_rss_mb is not None


def test_profile_without_sampler_thread() -> None:
    with profile("cpu", sample_interval_s=0) as rec:
        pass
    assert rec.peak_rss_mb is not None and rec.peak_rss_mb > 0


def test_nested_profiles_on_cpu() -> None:
    with profile("cpu") as outer:
        with profile("cpu") as inner:
            time.sleep(0.01)
        time.sleep(0.01)
    assert outer.wall_s > inner.wall_s >= 0.01


def test_parameter_and_optimizer_counts() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))  # 15 + 8 elements
    model[0].weight.requires_grad_(False)
    assert parameter_counts(model) == (3 + 8, 15 + 8)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    assert optimizer_state_mb(optimizer) == 0.0
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    # Adam keeps exp_avg and exp_avg_sq (float32) per trainable element, plus a scalar step.
    assert optimizer_state_mb(optimizer) * (1 << 20) >= 2 * 11 * 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_cuda_peak_and_nesting() -> None:
    device = torch.device("cuda")
    with profile(device) as outer:
        big = torch.empty(64 << 20, dtype=torch.uint8, device=device)  # 64 MiB
        del big
        with profile(device) as inner:
            small = torch.empty(8 << 20, dtype=torch.uint8, device=device)  # 8 MiB
            del small
    assert inner.peak_cuda_mb is not None and outer.peak_cuda_mb is not None
    assert 8 <= inner.peak_cuda_mb < 64
    assert outer.peak_cuda_mb >= 64  # the inner reset did not erase the outer peak


class _FakeCuda:
    """Stands in for torch.cuda's peak-memory counters so the nesting logic is tested on CPU."""

    def __init__(self) -> None:
        self.allocated = 0
        self.peak = 0

    def alloc(self, nbytes: int) -> None:
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

    def free(self, nbytes: int) -> None:
        self.allocated -= nbytes

    def reset_peak_memory_stats(self, device: object = None) -> None:
        self.peak = self.allocated

    def max_memory_allocated(self, device: object = None) -> int:
        return self.peak


def test_nested_cuda_peaks_with_fake_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak_memory_stats)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", fake.max_memory_allocated)
    mib = 1 << 20
    fake.alloc(100 * mib)  # before any block: must not count
    fake.free(100 * mib)
    with profile("cuda") as outer:
        fake.alloc(64 * mib)
        fake.free(64 * mib)
        with profile("cuda") as inner:
            fake.alloc(8 * mib)
            fake.free(8 * mib)
        with profile("cuda:0") as second:
            fake.alloc(30 * mib)
            fake.free(30 * mib)
        fake.alloc(20 * mib)
        fake.free(20 * mib)
    assert outer.device == "cuda:0"
    assert inner.peak_cuda_mb == 8 and second.peak_cuda_mb == 30
    assert outer.peak_cuda_mb == 64  # folded in before the inner resets erased it
    with profile("cuda") as after:
        fake.alloc(mib)
    assert after.peak_cuda_mb == 1
