"""Run the benchmark: the copy ceiling first, then every (workload, dtype, contestant), into one dict.

Per result: the median time and its p10/p90 spread, the design bytes and GB/s = bytes / median,
that bandwidth as a % of the device-to-device copy measured in the same run, TFLOP/s for
Newton–Schulz, and ratio = time / time of the row's baseline (torch's fused AdamW for optimizer
steps, torch-matmul Newton–Schulz for Newton–Schulz) in the same run: < 1 is faster than the baseline.
"""

from __future__ import annotations

import datetime
import gc
import importlib
import platform
import re

import torch
from tqdm import tqdm

import fusedgate
from fusedgate.bench.contestants import BASELINE, Contestant, Unavailable, ns_dtype
from fusedgate.bench.timing import Plan, copy_bandwidth, flush_buffer, measure
from fusedgate.bench.workloads import DTYPES, Workload

PLANS = {
    "gpu": Plan(warmup=5, min_reps=10, max_reps=200, budget_s=0.5),
    "cpu": Plan(warmup=2, min_reps=5, max_reps=50, budget_s=0.5),
    "quick": Plan(warmup=1, min_reps=3, max_reps=5, budget_s=0.02),
}
COPY_BYTES = {"gpu": 2**30, "cpu": 2**28, "quick": 2**24}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def device_slug(device: torch.device) -> str:
    """File name stem for a device: 'cpu', or the GPU's name in lower case with dashes."""
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "device_type": device.type,
        "slug": device_slug(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "fusedgate": fusedgate.__version__,
        "python": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def row_dtypes(workload: Workload, device: torch.device, dtypes: list[str]) -> list[str]:
    if workload.case == "newton_schulz":
        return ["bf16" if ns_dtype(device) == torch.bfloat16 else "fp32"]
    return dtypes


INTERPRETED = (
    "ran under Triton's interpreter on the CPU: checks that it runs, its time is numpy's, not a kernel's"
)


def measure_contestant(
    contestant: Contestant,
    workload: Workload,
    dtype: str,
    device: torch.device,
    plan: Plan,
    flush: torch.Tensor,
    interpreter: bool = False,
) -> dict:
    """One result record; a contestant that cannot run is recorded as unavailable/error with the reason,
    one that ran under Triton's interpreter as "interpreted" (kept out of ratios, targets and plots)."""
    record = {
        "case": workload.case,
        "size": workload.label,
        "dtype": dtype,
        "params": workload.params,
        "contestant": contestant.name,
        "status": "ok",
    }
    setup = None
    resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    try:
        setup = contestant.build(workload, DTYPES[dtype], device, interpreter=interpreter)
        timing = measure(setup.step, device, plan, flush)
        record.update(
            {
                "median_ms": timing.median_s * 1e3,
                "p10_ms": timing.p10_s * 1e3,
                "p90_ms": timing.p90_s * 1e3,
                "reps": timing.reps,
            }
        )
        moved = setup.bytes_moved()
        if moved:
            record.update(
                {
                    "bytes": moved,
                    "bytes_per_param": moved / workload.params,
                    "gbps": moved / timing.median_s / 1e9,
                }
            )
        if setup.flops:
            record.update({"flops": setup.flops, "tflops": setup.flops / timing.median_s / 1e12})
        if setup.check is not None:
            record["rel_err"] = setup.check()
        if contestant.uses_triton and device.type != "cuda":
            record.update(status="interpreted", reason=INTERPRETED)
    except Unavailable as exc:
        record.update(status="unavailable", reason=str(exc))
    except torch.OutOfMemoryError:
        record.update(status="error", reason="out of device memory")
    except Exception as exc:  # a failing contestant is a result to report, not a reason to lose the run
        record.update(status="error", reason=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    finally:
        del setup
        if device.type == "cuda":
            if torch.cuda.memory_allocated(device) > resident:
                gc.collect()  # only when a reference cycle still holds this contestant's tensors
            torch.cuda.empty_cache()
    return record


def add_relative_numbers(records: list[dict], copy_gbps: float) -> None:
    """% of copy bandwidth and ratio against the row's baseline, in place."""
    times = {
        (r["case"], r["size"], r["dtype"], r["contestant"]): r["median_ms"]
        for r in records
        if r["status"] == "ok"
    }
    for r in records:
        if r["status"] != "ok":
            continue
        if "gbps" in r:
            r["pct_copy"] = 100.0 * r["gbps"] / copy_gbps
        base = times.get((r["case"], r["size"], r["dtype"], BASELINE[r["case"]]))
        if base:
            r["ratio"] = r["median_ms"] / base


def run(
    device: torch.device,
    kind: str,
    workloads: list[Workload],
    contestants: list[Contestant],
    dtypes: list[str],
    plan: Plan | None = None,
    progress: bool = True,
    interpreter: bool = False,
) -> dict:
    """Measure everything; returns {"environment", "plan", "copy", "contestants", "planned", "results"}.
    Interrupted (Ctrl-C, or SIGTERM through the CLI), it returns the results measured so far.
    ``interpreter``: on the CPU, run the Triton contestants under Triton's interpreter (untimed smoke)."""
    plan = plan or PLANS[kind]
    if interpreter and device.type == "cpu":
        # Triton picks its interpreter when its standard library is first imported, and torch's optimizers
        # import Triton: load the kernels (which select the interpreter) before any contestant runs.
        importlib.import_module("fusedgate.kernels")
    jobs = [
        (w, d, c)
        for w in workloads
        for d in row_dtypes(w, device, dtypes)
        for c in contestants
        if w.case in c.cases
    ]
    copy = copy_bandwidth(device, COPY_BYTES[kind], plan)
    flush = flush_buffer(device)
    records = []
    try:
        for workload, dtype, contestant in tqdm(jobs, desc="bench", unit="step", disable=not progress):
            records.append(measure_contestant(contestant, workload, dtype, device, plan, flush, interpreter))
    except KeyboardInterrupt:  # keep what was measured (the CLI turns SIGTERM into this too)
        pass
    add_relative_numbers(records, copy["gbps"])
    return {
        "environment": environment(device),
        "kind": kind,
        "plan": {
            "warmup": plan.warmup,
            "min_reps": plan.min_reps,
            "max_reps": plan.max_reps,
            "budget_s": plan.budget_s,
            "clock": "CUDA events per repetition, L2 flushed before each"
            if device.type == "cuda"
            else f"time.perf_counter per repetition, {flush.numel() // 2**20} MiB buffer zeroed before each",
        },
        "copy": copy,
        "contestants": {c.name: c.description for c in contestants},
        "planned": len(jobs),
        "results": records,
    }
