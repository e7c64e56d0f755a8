"""A/B of the Triton step's host time: the step count and loss sensors in torch ops (before: ``gate.observe_loss``,
about thirty dispatcher calls, twenty of them kernels on CUDA) against one ``global_kernel`` launch (after).

Run from the repository root, nothing else heavy running:

    TRITON_INTERPRET=1 OMP_NUM_THREADS=1 python bench/results/host_step/ab_global_kernel.py

As ``ab_state_checks.py``: the kernels are replaced by no-ops (``InterpretedFunction.run``), so what is timed is
the Python of ``FusedGate.step`` around the launches, on small tensors; "before" is this same code with
``backend.kernels_take`` answering False for the global state, so ``functional.advance_global`` takes the torch
form, whose ops here run on the CPU (on CUDA each is a launch, several µs of host time more). The gated spec
(which reads the loss) and, for contrast, the AdamW preset (which does not: both arms count the step in one op or
one launch). Alternating blocks of 200 steps, 7 blocks per arm, one process, one thread; µs per step, median.
"""

import statistics
import time

import torch
from triton.runtime.interpreter import InterpretedFunction

from fusedgate.bench import contestants as C
from fusedgate.bench.workloads import Workload, nanochat_workload
from fusedgate.kernels import backend as B

STEPS, BLOCKS = 200, 7


def block(setup) -> float:
    start = time.perf_counter()
    for _ in range(STEPS):
        setup.step()
    return (time.perf_counter() - start) / STEPS * 1e6


def main() -> None:
    torch.set_num_threads(1)
    takes = B.kernels_take
    d12 = nanochat_workload(12)
    cases = [("one matrix", Workload("matrix", "1", ((8, 8),))),
             ("d12's 72 matrices", Workload("nanochat", "d12", tuple((8, 8) for _ in d12.shapes)))]
    for name in ("fg_gated_triton", "fg_adamw_triton"):
        for label, workload in cases:
            setup = C.by_name([name])[0].build(workload, torch.float32, torch.device("cpu"), True)
            for _ in range(3):
                setup.step()   # the tables built, with the real kernels
            saved = InterpretedFunction.run
            InterpretedFunction.run = lambda self, *args, **kwargs: None
            times = {True: [], False: []}
            try:
                for _ in range(BLOCKS):
                    for before in (True, False):
                        B.kernels_take = (lambda device: False) if before else takes
                        times[before].append(block(setup))
            finally:
                InterpretedFunction.run = saved
                B.kernels_take = takes
            b, a = statistics.median(times[True]), statistics.median(times[False])
            print(f"{name:16s} {label:18s} before {b:7.1f} µs  after {a:7.1f} µs  after/before {a / b:.3f}  "
                  f"(blocks: before {min(times[True]):.1f}–{max(times[True]):.1f}, "
                  f"after {min(times[False]):.1f}–{max(times[False]):.1f})")


if __name__ == "__main__":
    main()
