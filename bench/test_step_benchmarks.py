"""pytest-benchmark view of the same suite: one benchmark per (workload, dtype, contestant).

    python -m pytest bench/ --benchmark-enable --benchmark-only          # pyproject adds --benchmark-disable

Sizes: the issue's full list on CUDA, tiny ones on the CPU; ``FUSEDGATE_BENCH_SIZES=gpu|cpu|quick`` overrides.
pytest-benchmark times on the host, so each round ends with a device synchronise; the L2-sized buffer
is zeroed in the untimed setup of every round. ``fusedgate bench`` (CUDA events) is the reference
measurement; this file exists for pytest-benchmark's comparison and history tools.
"""

from __future__ import annotations

import os

import pytest
import torch

from fusedgate.bench.contestants import CONTESTANTS, Unavailable, ns_dtype
from fusedgate.bench.timing import flush_buffer, synchronize
from fusedgate.bench.workloads import workloads

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = os.environ.get("FUSEDGATE_BENCH_SIZES", "gpu" if DEVICE.type == "cuda" else "quick")
ROUNDS = 50 if DEVICE.type == "cuda" else 5


def _jobs():
    for workload in workloads(SIZES):
        if workload.case == "newton_schulz":
            dtypes = ["bf16" if ns_dtype(DEVICE) == torch.bfloat16 else "fp32"]
        else:
            dtypes = ["fp32", "bf16"]
        for dtype in dtypes:
            for contestant in CONTESTANTS:
                if workload.case in contestant.cases:
                    yield pytest.param(
                        workload,
                        dtype,
                        contestant,
                        id=f"{workload.case}-{workload.label}-{dtype}-{contestant.name}",
                    )


@pytest.fixture(scope="module")
def flush():
    return flush_buffer(DEVICE)


@pytest.mark.parametrize("workload,dtype,contestant", list(_jobs()))
def test_step(benchmark, flush, workload, dtype, contestant):
    try:
        setup = contestant.build(workload, {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype], DEVICE)
    except Unavailable as exc:
        pytest.skip(str(exc))

    def before_round():
        flush.zero_()
        synchronize(DEVICE)

    def one_step():
        setup.step()
        synchronize(DEVICE)

    benchmark.group = f"{workload.case} {workload.label} {dtype}"
    benchmark.pedantic(one_step, setup=before_round, rounds=ROUNDS, warmup_rounds=3, iterations=1)
    benchmark.extra_info.update(params=workload.params, device=str(DEVICE))
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None else None
    moved = setup.bytes_moved()
    if moved:
        benchmark.extra_info["bytes"] = moved
        if median:
            benchmark.extra_info["gbps"] = moved / median / 1e9
    if setup.flops and median:
        benchmark.extra_info["tflops"] = setup.flops / median / 1e12
