"""``python -m fusedgate.bench.gpu_check``: the Python stages of ``bench/gpu_check.sh`` (issue 18).

    bench   the benchmark rows that answer the issue's targets, each written to ``bench.json`` and ``bench.md``
            as soon as it is measured (a killed stage keeps every row done so far)
    profile a torch.profiler table of one FusedGate step on the NanoChat d20 matrix params (``profile.txt``)
    report  ``train.json`` and ``train.md`` from the training stage's run folders, then ``bench.md`` (the
            targets table first) and ``bench.png`` again with the training targets in

What ``bench`` measures (``GPU_PLAN``; ``--dry-run`` runs ``DRY_PLAN``: tiny sizes on the CPU, the Triton
contestants under Triton's interpreter, a check that the stage runs, not a timing): the device-to-device copy
bandwidth, then, in this order, the AdamW preset, the gated step without orthogonalisation and its eager
reference against ``torch.optim.AdamW(fused=True)`` on 4096² and 8192² (fp32, bf16) and on the d12/d20 matrix
sets (fp32); Triton against torch Newton–Schulz at 4096² and 8192² (bf16); ``nanochat()`` on the Triton backend
against nanochat's compiled step (and MuonAdamW eager) on d12/d20 (fp32). FusedGate backends beyond
auto/reference/triton (``fusedgate.optimizer.BACKENDS``) join their rows automatically. Times are medians under
CUDA events with the L2 flushed before each repetition (``fusedgate.bench.timing``).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from fusedgate.bench import contestants as C
from fusedgate.bench import gpu_report, suite
from fusedgate.bench.profile_step import ProfilePlan, profile_sections
from fusedgate.bench.timing import Plan, copy_bandwidth, flush_buffer
from fusedgate.bench.workloads import workloads
from fusedgate.files import write_atomic


@dataclass(frozen=True)
class CheckPlan:
    """Sizes and timing of the ``bench`` stage."""

    name: str
    matrix_sizes: tuple[int, ...]
    ns_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    timing: Plan
    copy_bytes: int
    profile: ProfilePlan


GPU_PLAN = CheckPlan("gpu", (4096, 8192), (4096, 8192), (12, 20),
                     Plan(warmup=5, min_reps=10, max_reps=100, budget_s=0.25), 2**30, ProfilePlan(20, 3, 5))
DRY_PLAN = CheckPlan("dry-run", (64,), (64,), (1,), Plan(warmup=1, min_reps=1, max_reps=2, budget_s=0.01), 2**22,
                     ProfilePlan(1, 1, 1))

# (case, dtypes or None for the case's own, contestants), measured in this order: cheap rows first, the
# rows that compile (inductor, one graph per stack shape) last
ROWS = (
    ("matrix", ("fp32", "bf16"), ("adamw_fused", "fg_adamw_triton", "fg_gated_triton", "fg_gated_ref")),
    ("nanochat", ("fp32",), ("adamw_fused", "fg_adamw_triton", "fg_gated_triton")),
    ("newton_schulz", None, ("ns_torch", "ns_triton")),
    ("nanochat_muon", ("fp32",), ("nanochat_compiled", "fg_nanochat_triton", "nanochat_eager")),
)


def row_contestants(case: str, names: tuple[str, ...]) -> list[C.Contestant]:
    """The named contestants, then those of every FusedGate backend beyond auto/reference/triton that
    ``fusedgate.optimizer.BACKENDS`` lists now (``contestants.extra_backend_contestants``)."""
    extra = [c for c in C.extra_backend_contestants() if case in c.cases and c.name not in names]
    return C.by_name(list(names)) + extra


def plan_jobs(plan: CheckPlan, device: torch.device) -> list[tuple]:
    """(workload, dtype, contestant) in measuring order."""
    jobs = []
    for case, dtypes, names in ROWS:
        chosen = row_contestants(case, names)
        for workload in workloads("gpu", (case,), plan.matrix_sizes, plan.depths, plan.ns_sizes):
            for dtype in dtypes or suite.row_dtypes(workload, device, []):
                jobs += [(workload, dtype, c) for c in chosen]
    return jobs


def new_run(plan: CheckPlan, device: torch.device, contestants: list[C.Contestant], planned: int) -> dict:
    clock = "CUDA events per repetition, L2 flushed before each" if device.type == "cuda" else "time.perf_counter"
    return {"environment": suite.environment(device), "kind": plan.name, "planned": planned, "results": [],
            "plan": {"warmup": plan.timing.warmup, "min_reps": plan.timing.min_reps,
                     "max_reps": plan.timing.max_reps, "budget_s": plan.timing.budget_s, "clock": clock},
            "contestants": {c.name: c.description for c in contestants}}


def measure_all(run: dict, jobs: list[tuple], device, plan: CheckPlan, out: Path, interpreter: bool) -> None:
    """Measure the jobs in order; after each, rewrite ``bench.json`` and ``bench.md``."""
    flush = flush_buffer(device)
    for index, (workload, dtype, contestant) in enumerate(jobs, 1):
        record = suite.measure_contestant(contestant, workload, dtype, device, plan.timing, flush, interpreter)
        run["results"].append(record)
        print(f"[{index}/{len(jobs)}] {gpu_report.record_line(record)}", flush=True)
        gpu_report.write_bench(run, out, runs=[], png=False)


def bench(plan: CheckPlan, device: torch.device, out: Path, interpreter: bool) -> int:
    if interpreter:  # Triton picks its interpreter at its first import: before torch's optimizers import it
        importlib.import_module("fusedgate.kernels")
    jobs = plan_jobs(plan, device)
    run = new_run(plan, device, list({c.name: c for _, _, c in jobs}.values()), len(jobs))
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `timeout` ends the stage: keep what was measured
    try:
        run["copy"] = copy_bandwidth(device, plan.copy_bytes, plan.timing)
        print(f"copy bandwidth {run['copy']['gbps']:.0f} GB/s", flush=True)
        gpu_report.write_bench(run, out, runs=[], png=False)
        measure_all(run, jobs, device, plan, out, interpreter)
    except KeyboardInterrupt:
        print(f"interrupted after {len(run['results'])} of {len(jobs)} measurements", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if "copy" in run:
        gpu_report.write_bench(run, out, runs=[], png=True)
    return 0 if len(run["results"]) == len(jobs) else 130


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _device(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: error: no CUDA device here; use --dry-run for the CPU check")
    return torch.device("cuda")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusedgate.bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("bench", "profile", "report"))
    parser.add_argument("--out", type=Path, required=True, help="the folder of the check's files ($OUT)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, Triton's interpreter")
    parser.add_argument("--runs", type=Path, help="report: the training stage's run folders")
    parser.add_argument("--entries", default="baseline,fusedgate:nanochat,fusedgate:gated",
                        help="report: the training entries, in order")
    args = parser.parse_args(argv)
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "report":
        return gpu_report.final_report(args.out, args.runs, args.entries.split(","))
    device = _device(args.dry_run)
    if args.stage == "bench":
        return bench(plan, device, args.out, interpreter=args.dry_run)
    text = ""
    for section in profile_sections(plan.profile, device):  # written after each: a kill keeps the first
        text += section + "\n"
        write_atomic(args.out / "profile.txt", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
