"""A ``torch.profiler`` table of one FusedGate step on the matrix params of a NanoChat model (the GPU
check's last stage): where the time of a step goes, kernel by kernel.

Per spec (the gated default, which ``fusedgate train`` uses, and ``nanochat()``): the params of
``nanochat_shapes(depth)`` in nanochat's ``kind='muon'`` groups, fixed gradients, a few warm-up steps (Triton
compiles its kernels in the first), then the mean time of a few steps (CUDA events on a GPU, the host clock on
the CPU; the numbers are ``ProfilePlan``'s), then one profiled step, its operators and kernels sorted by total
device time (CPU time on the CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from fusedgate.bench.contestants import make_params, muon_groups
from fusedgate.bench.workloads import nanochat_workload
from fusedgate.optimizer import FusedGate
from fusedgate.spec import GateSpec

SPECS = ("gated", "nanochat")
ROW_LIMIT = 30


@dataclass(frozen=True)
class ProfilePlan:
    """The NanoChat depth whose matrix params are stepped, the warm-up steps and the timed steps."""

    depth: int
    warmup_steps: int
    timed_steps: int


def _mean_step_ms(step, device: torch.device, steps: int) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / steps
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - begin) * 1e3 / steps


def profile_spec(spec_name: str, plan: ProfilePlan, device: torch.device) -> str:
    """The header line and the profiler table of one step of ``spec_name``."""
    depth = plan.depth
    workload = nanochat_workload(depth)
    params = make_params(workload, torch.float32, device)
    optimizer = FusedGate(muon_groups(params), spec=GateSpec.from_name_or_file(spec_name), total_steps=1000,
                          backend="triton")
    loss = torch.tensor(3.0, device=device)

    def step():
        optimizer.step(loss=loss)

    for _ in range(plan.warmup_steps):
        step()
    mean_ms = _mean_step_ms(step, device, plan.timed_steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=ROW_LIMIT)
    head = (f"## FusedGate {spec_name}(), Triton backend, NanoChat d{depth} matrix params "
            f"({workload.params / 1e6:.1f}M, fp32): mean step {mean_ms:.3f} ms over {plan.timed_steps} steps "
            f"after {plan.warmup_steps} warm-up steps")
    return f"{head}\n\n{table}\n"


def profile_sections(plan: ProfilePlan, device: torch.device):
    """Each spec's section in turn; a spec that fails is reported in its section, and the others still run."""
    for name in SPECS:
        try:
            yield profile_spec(name, plan, device)
        except Exception as exc:  # a failed profile is a finding to report, not a reason to lose the other
            yield f"## FusedGate {name}(): failed: {type(exc).__name__}: {exc}\n"
        if device.type == "cuda":
            torch.cuda.empty_cache()
