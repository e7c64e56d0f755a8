"""Timing one piece of device work: warm up, repeat, report the median and the spread.

On CUDA each repetition is bracketed by its own pair of CUDA events (device time, launch gaps
included), and a buffer larger than the L2 cache is zeroed before each repetition, so that a small
problem is not timed out of the cache. On the CPU the same loop uses ``time.perf_counter``.

The number of repetitions adapts to the cost of one call: reps = clamp(budget / estimate,
min_reps, max_reps), where the estimate is one synchronised call after the warm-up.
"""

from __future__ import annotations

import glob
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

CPU_FLUSH_MIN_BYTES = 64 * 2**20
CUDA_FLUSH_MIN_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median, 10th and 90th percentiles over ``reps`` repetitions."""

    median_s: float
    p10_s: float
    p90_s: float
    reps: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    """How hard to time: warm-up calls, repetition bounds and the time budget per measurement."""

    warmup: int
    min_reps: int
    max_reps: int
    budget_s: float


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_last_level_cache_bytes() -> int:
    """The largest CPU cache Linux reports for cpu0 (0 when unknown)."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=0)


def flush_buffer(device: torch.device) -> torch.Tensor:
    """A byte buffer at least twice the last-level cache (the L2 on CUDA, the L3 on the CPU)."""
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        nbytes = max(CUDA_FLUSH_MIN_BYTES, 2 * l2)
    else:
        nbytes = max(CPU_FLUSH_MIN_BYTES, 2 * cpu_last_level_cache_bytes())
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile q ∈ [0, 1] of already sorted values."""
    position = q * (len(sorted_values) - 1)
    lo, hi = math.floor(position), math.ceil(position)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (position - lo)


def measure(
    fn: Callable[[], object], device: torch.device, plan: Plan, flush: torch.Tensor | None = None
) -> Timing:
    """Time ``fn()`` on ``device`` (see the module docstring). ``flush`` is zeroed before each timed call."""
    for _ in range(plan.warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    estimate = max(time.perf_counter() - start, 1e-9)
    reps = int(min(plan.max_reps, max(plan.min_reps, plan.budget_s // estimate)))
    samples = (
        _cuda_samples(fn, device, reps, flush) if device.type == "cuda" else _cpu_samples(fn, reps, flush)
    )
    samples.sort()
    return Timing(
        median_s=statistics.median(samples),
        p10_s=percentile(samples, 0.1),
        p90_s=percentile(samples, 0.9),
        reps=reps,
    )


def _cuda_samples(fn, device, reps, flush) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        if flush is not None:
            flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in zip(starts, ends)]


def _cpu_samples(fn, reps, flush) -> list[float]:
    samples = []
    for _ in range(reps):
        if flush is not None:
            flush.zero_()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def copy_bandwidth(device: torch.device, nbytes: int, plan: Plan) -> dict:
    """Device-to-device copy ``dst.copy_(src)`` of ``nbytes``: bytes moved = 2·nbytes (read + write).
    Returns {"bytes", "timing", "gbps"} — the ceiling the optimizer steps are compared with."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src), device, plan)
    moved = 2 * nbytes
    return {"bytes": moved, "timing": timing.to_dict(), "gbps": moved / timing.median_s / 1e9}
