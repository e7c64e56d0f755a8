"""``python -m fusedgate.bench.gpu_probe --out DIR``: why the first GPU check missed its step targets (issue 18).

The first run of ``bench/gpu_check.sh`` (H200, 2026-12-04) found the AdamW preset's Triton step 5.0× torch's
fused AdamW at 4096² but 1.04× at NanoChat d20 (393 M params): a fixed cost of about half a millisecond a step.
This probe splits that cost and looks at the other misses, in one call of a few minutes:

    host      per contestant and workload: the step's time under CUDA events with the L2 flushed (as the check
              times it), the host's time per ``step()`` call when the GPU never waits (calls queued back to
              back, no synchronisation), the time of a replayed CUDA graph of the same step (the GPU's own
              time: no Python, no launches), and the kernels one step launches (count, summed GPU time).
              A step whose event time ≈ its host time and ≫ its graph time is bound by its launches.
    blocks    the gated step (and fused AdamW beside it) on 8192² and d12, rebuilt under each pair of elements
              per program (``layout.BLOCK``, 1024 today) and warps (``layout.STEP_WARPS``, 4) of the
              element-wise kernels; fewer, larger chunks also mean fewer trips of the per-parameter reductions.
              Then once more at the first pair without the 128-bit accesses (``layout.VECTOR_ACCESSES``): what
              they gain.
    pyprofile cProfile of the host side of the AdamW preset's Triton step: where the host time goes.
    ns        Triton Newton–Schulz under each launch tiling (``kernels.newton_schulz.Tiling``) against torch's
              at 4096² (bf16), the best two again at 8192²; ``triton.testing.do_bench`` medians, the relative
              Frobenius difference from torch's result.
    compiled  the full traceback of the compiled backend's AdamW preset on fp32 4096², which inductor refused.

Everything goes to ``probe.txt`` (the tables) and ``probe.json`` (the numbers), each rewritten after every
section, so a killed run keeps what it had. ``--dry-run``: tiny sizes on the CPU under Triton's interpreter, a
check that the probe runs (CI), no timing worth reading; the CUDA-graph column is then empty.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fusedgate.bench import contestants as C
from fusedgate.bench.timing import Plan, flush_buffer, measure, synchronize
from fusedgate.bench.workloads import Workload, matrix_workload, nanochat_workload, ns_workload
from fusedgate.files import write_atomic

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ProbePlan:
    """Sizes of every section."""

    host_rows: tuple[tuple[str, Workload, str], ...]   # (contestant, workload, dtype)
    host_calls: int
    ns_size: int
    ns_large: int
    tilings: tuple[tuple[int, int, int, int], ...]     # (block, block_k, num_warps, num_stages)
    compiled_size: int
    timing: Plan
    block_rows: tuple[tuple[str, Workload], ...] = ()   # (contestant, workload), fp32, under each of ``blocks``
    blocks: tuple[tuple[int, int], ...] = ()            # (elements per program, warps) of the element-wise kernels


def _host_rows(names, sized) -> tuple:
    return tuple((name, workload, dtype) for workload, dtype in sized for name in names)


GPU_PROBE = ProbePlan(
    _host_rows(("adamw_fused", "fg_adamw_triton", "fg_gated_triton"),
               ((matrix_workload(4096), "fp32"), (matrix_workload(4096), "bf16"), (nanochat_workload(12), "fp32")))
    + _host_rows(("nanochat_compiled", "fg_nanochat_triton"), ((nanochat_workload(12, "nanochat_muon"), "fp32"),)),
    50, 4096, 8192,
    ((64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 4),
     (128, 128, 8, 3), (64, 64, 4, 4)),
    4096, Plan(warmup=5, min_reps=10, max_reps=100, budget_s=0.25),
    (("adamw_fused", matrix_workload(8192)), ("fg_gated_triton", matrix_workload(8192)),
     ("adamw_fused", nanochat_workload(12)), ("fg_gated_triton", nanochat_workload(12))),
    ((1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 8)))
DRY_PROBE = ProbePlan(_host_rows(("adamw_fused", "fg_adamw_triton"), ((matrix_workload(64), "fp32"),)),
                      2, 32, 48, ((16, 16, 4, 3), (32, 16, 4, 3)), 64,
                      Plan(warmup=1, min_reps=1, max_reps=2, budget_s=0.01),
                      (("fg_gated_triton", matrix_workload(64)),), ((4096, 4), (1024, 4)))


# ---------------------------------------------------------------------------------------------- host
def host_time_us(step, device: torch.device, calls: int) -> float:
    """Mean host time of one ``step()`` call with the calls queued back to back (no synchronisation)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        step()
    elapsed = time.perf_counter() - start
    synchronize(device)
    return elapsed / calls * 1e6


def graph_time_us(step, device: torch.device, plan: Plan, flush) -> float | str:
    """Median time of a replayed CUDA graph of ``step`` (L2 flushed before each), or why it could not be made."""
    if device.type != "cuda":
        return "no CUDA"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return measure(graph.replay, device, plan, flush).median_s * 1e6
    except Exception as exc:   # a contestant that cannot be captured says so in its row
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def kernels_of_one_step(step, device: torch.device) -> tuple[int, float, dict[str, float]]:
    """The GPU kernels one step launches: (count, summed GPU time in µs, µs per kernel name, largest first);
    (0, 0, {}) on the CPU."""
    if device.type != "cuda":
        return 0, 0.0, {}
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, float] = {}
    for e in kernels:
        by_name[e.name[:60]] = by_name.get(e.name[:60], 0.0) + e.device_time
    top = dict(sorted(by_name.items(), key=lambda item: -item[1])[:8])
    return len(kernels), sum(e.device_time for e in kernels), top


def host_section(plan: ProbePlan, device: torch.device, interpreter: bool) -> list[dict]:
    rows, flush = [], flush_buffer(device)
    for name, workload, dtype in plan.host_rows:
        row = dict(contestant=name, case=workload.case, size=workload.label, dtype=dtype)
        try:
            setup = C.by_name([name])[0].build(workload, DTYPES[dtype], device, interpreter)
            row["event_us"] = measure(setup.step, device, plan.timing, flush).median_s * 1e6
            row["host_us"] = host_time_us(setup.step, device, plan.host_calls)
            row["kernels"], row["kernel_us"], row["by_kernel"] = kernels_of_one_step(setup.step, device)
            # only FusedGate's step is known to capture (tests/test_kernels_gpu.py); a failed capture of another
            # could leave the stream unusable for the rows after it
            row["graph_us"] = graph_time_us(setup.step, device, plan.timing, flush) if name.startswith("fg_") \
                else "not tried"
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
        print(f"host {row}", flush=True)
    return rows


def pyprofile_section(plan: ProbePlan, device: torch.device, interpreter: bool) -> str:
    """cProfile of the host side of the AdamW preset's Triton step on the first host row's workload."""
    name, workload, dtype = "fg_adamw_triton", plan.host_rows[0][1], plan.host_rows[0][2]
    setup = C.by_name([name])[0].build(workload, DTYPES[dtype], device, interpreter)
    for _ in range(3):
        setup.step()
    synchronize(device)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(plan.host_calls):
        setup.step()
    profiler.disable()
    synchronize(device)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    return f"## cProfile of {plan.host_calls} calls of {name} {workload.label} {dtype} (sorted by own time)\n" + \
        text.getvalue()


# ---------------------------------------------------------------------------------------------- blocks
def blocks_section(plan: ProbePlan, device: torch.device, interpreter: bool) -> list[dict]:
    """Each FusedGate row rebuilt and timed (CUDA events, L2 flushed) under each (``layout.BLOCK``,
    ``layout.STEP_WARPS``) with vector accesses, and under the first pair without; a torch row once. The constants
    are set for the row's life and restored."""
    from fusedgate.kernels import layout as L

    rows, flush, saved = [], flush_buffer(device), (L.BLOCK, L.STEP_WARPS, L.VECTOR_ACCESSES)
    settings = [(block, warps, True) for block, warps in plan.blocks] + [(*plan.blocks[0], False)] \
        if plan.blocks else []
    for name, workload in plan.block_rows:
        for block, warps, vector in settings if name.startswith("fg_") else ((None, None, None),):
            row = dict(contestant=name, size=workload.label, block=block, warps=warps, vector=vector)
            try:
                if block is not None:
                    L.BLOCK, L.STEP_WARPS, L.VECTOR_ACCESSES = block, warps, vector
                setup = C.by_name([name])[0].build(workload, torch.float32, device, interpreter)
                row["us"] = measure(setup.step, device, plan.timing, flush).median_s * 1e6
                row["gbps"] = setup.bytes_moved() / row["us"] / 1e3
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                L.BLOCK, L.STEP_WARPS, L.VECTOR_ACCESSES = saved
            rows.append(row)
            print(f"blocks {row}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- Newton–Schulz
def _ns_time_us(fn, device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


def ns_section(plan: ProbePlan, device: torch.device) -> list[dict]:
    from fusedgate import reference as R
    from fusedgate.kernels.newton_schulz import Tiling, newton_schulz_triton

    dtype = C.ns_dtype(device)

    def size_rows(n: int, tilings: list[Tiling]) -> list[dict]:
        """torch's row, then one per tiling, on one input whose torch result every row is compared with."""
        x = C.ns_input(ns_workload(n), device)
        ref = R.newton_schulz(x, C.NS_STEPS, dtype).double()
        rows = []
        for tiling in [None, *tilings]:
            row = dict(size=n, tiling=asdict(tiling) if tiling else "torch")
            try:
                fn = (lambda: R.newton_schulz(x, C.NS_STEPS, dtype)) if tiling is None else \
                    (lambda tiling=tiling: newton_schulz_triton(x.to(dtype), C.NS_STEPS, tiling))
                row["diff_vs_torch"] = ((fn().double() - ref).norm() / ref.norm()).item()
                row["us"] = _ns_time_us(fn, device)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"ns {row}", flush=True)
            rows.append(row)
        return rows

    small = size_rows(plan.ns_size, [Tiling(*tiling) for tiling in plan.tilings])
    best = sorted((r for r in small[1:] if "us" in r), key=lambda r: r["us"])[:2]
    return small + size_rows(plan.ns_large, [Tiling(**r["tiling"]) for r in best])


# ---------------------------------------------------------------------------------------------- compiled
def compiled_section(plan: ProbePlan, device: torch.device) -> str:
    workload = matrix_workload(plan.compiled_size)
    try:
        setup = C.by_name(["fg_adamw_compiled"])[0].build(workload, torch.float32, device, False)
        for _ in range(2):
            setup.step()
        synchronize(device)
        return f"fg_adamw_compiled {workload.label} fp32: ran\n"
    except Exception:
        return f"fg_adamw_compiled {workload.label} fp32 failed:\n{traceback.format_exc()[-12000:]}"


# ---------------------------------------------------------------------------------------------- report
def host_table(rows: list[dict]) -> str:
    lines = ["| contestant | case | size | dtype | event µs | host µs | graph µs | kernels | kernel µs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['contestant']} | {r['case']} | {r['size']} | {r['dtype']} | {r['error']} |||||")
            continue
        graph = r["graph_us"] if isinstance(r["graph_us"], str) else f"{r['graph_us']:.1f}"
        lines.append(f"| {r['contestant']} | {r['case']} | {r['size']} | {r['dtype']} | {r['event_us']:.1f} | "
                     f"{r['host_us']:.1f} | {graph} | {r['kernels']} | {r['kernel_us']:.1f} |")
    kernels = [f"- {r['contestant']} {r['size']} {r['dtype']}: " + ", ".join(f"{k} {v:.1f}" for k, v in
               r["by_kernel"].items()) for r in rows if r.get("by_kernel")]
    return "\n".join(lines) + ("\n\nGPU µs per kernel name, one step:\n\n" + "\n".join(kernels) if kernels else "")


def ns_table(rows: list[dict]) -> str:
    lines = ["| size | tiling (block, block_k, warps, stages) | µs | ÷ torch | diff vs torch |",
             "|---|---|---|---|---|"]
    torch_us = {r["size"]: r.get("us") for r in rows if r["tiling"] == "torch"}
    for r in rows:
        t = r["tiling"]
        name = "torch" if t == "torch" else f"{t['block']}, {t['block_k']}, {t['num_warps']}, {t['num_stages']}"
        if "error" in r:
            lines.append(f"| {r['size']} | {name} | {r['error']} |||")
            continue
        ratio = r["us"] / torch_us[r["size"]] if torch_us.get(r["size"]) else float("nan")
        lines.append(f"| {r['size']} | {name} | {r['us']:.1f} | {ratio:.3f} | {r['diff_vs_torch']:.2e} |")
    return "\n".join(lines)


def blocks_table(rows: list[dict]) -> str:
    lines = ["| contestant | size | elements per program | warps | 128-bit accesses | µs | GB/s |",
             "|---|---|---|---|---|---|---|"]
    vector = {True: "where aligned", False: "off", None: "n/a"}
    for r in rows:
        shape = (f"| {r['contestant']} | {r['size']} | {r['block'] or 'n/a'} | {r['warps'] or 'n/a'} | "
                 f"{vector[r.get('vector')]} |")
        lines.append(f"{shape} {r['error']} ||" if "error" in r else f"{shape} {r['us']:.1f} | {r['gbps']:.0f} |")
    return "\n".join(lines)


TABLES = {"host": ("## Host, events, graph", host_table),
          "blocks": ("## Element-wise kernels: elements per program × warps (fp32, design bytes)", blocks_table),
          "ns": ("## Newton–Schulz tilings (bf16 on CUDA)", ns_table)}


def write(out: Path, results: dict, sections: list[str]) -> None:
    """probe.txt (each section done so far: its table, or its text — a section that raised is its traceback)
    and probe.json."""
    parts = [f"# GPU probe ({results['device']}, {results['versions']})"]
    for name in (n for n in sections if n in results):
        value = results[name]
        parts.append(f"{TABLES[name][0]}\n\n{TABLES[name][1](value)}" if name in TABLES and isinstance(value, list)
                     else value)
    write_atomic(out / "probe.txt", "\n\n".join(parts) + "\n")
    write_atomic(out / "probe.json", json.dumps(results, indent=1, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusedgate.bench.gpu_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder for probe.txt and probe.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, Triton's interpreter")
    parser.add_argument("--sections", default="host,blocks,ns,pyprofile,compiled", help="comma-separated, in order")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    plan = DRY_PROBE if args.dry_run else GPU_PROBE
    import triton
    results = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                   versions=f"torch {torch.__version__}, triton {triton.__version__}")
    args.out.mkdir(parents=True, exist_ok=True)
    sections = dict(host=lambda: host_section(plan, device, args.dry_run),
                    blocks=lambda: blocks_section(plan, device, args.dry_run), ns=lambda: ns_section(plan, device),
                    pyprofile=lambda: pyprofile_section(plan, device, args.dry_run),
                    compiled=lambda: compiled_section(plan, device))
    wanted = args.sections.split(",")
    unknown = [name for name in wanted if name not in sections]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sections)}")
    for name in wanted:
        try:
            results[name] = sections[name]()
        except Exception:
            results[name] = f"## {name} failed\n{traceback.format_exc()[-4000:]}"
        write(args.out, results, wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
