"""The A/B harness of this folder's scripts: the Triton step's host time, before and after a change, in one process.

Each contestant (a ``fusedgate.bench.contestants`` name) on one matrix and on as many as NanoChat d12 has (72), all
8×8 (the host's work depends on the number of tensors, not their size), its tables built with the real kernels in
three steps; then the kernels are replaced by no-ops (``InterpretedFunction.run``) and the two arms alternate,
``BLOCKS`` blocks of ``STEPS`` steps each, one thread. ``arm(before)`` puts the code in the state of an arm (and
``arm(False)`` back at the end); ``block(setup, before)`` times one block in µs per step. Prints the medians.
"""

import statistics
import time
from collections.abc import Callable

import torch
from triton.runtime.interpreter import InterpretedFunction

from fusedgate.bench import contestants as C
from fusedgate.bench.workloads import Workload, nanochat_workload

STEPS, BLOCKS = 200, 7


def timed_block(setup) -> float:
    """µs per step over ``STEPS`` steps of ``setup``."""
    start = time.perf_counter()
    for _ in range(STEPS):
        setup.step()
    return (time.perf_counter() - start) / STEPS * 1e6


def run(names: tuple[str, ...], arm: Callable[[bool], None], block: Callable[[object, bool], float]) -> None:
    torch.set_num_threads(1)
    d12 = nanochat_workload(12)
    cases = [("one matrix", Workload("matrix", "1", ((8, 8),))),
             ("d12's 72 matrices", Workload("nanochat", "d12", tuple((8, 8) for _ in d12.shapes)))]
    for name in names:
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
                        arm(before)
                        times[before].append(block(setup, before))
            finally:
                InterpretedFunction.run = saved
                arm(False)
            b, a = statistics.median(times[True]), statistics.median(times[False])
            print(f"{name:16s} {label:18s} before {b:7.1f} µs  after {a:7.1f} µs  after/before {a / b:.3f}  "
                  f"(blocks: before {min(times[True]):.1f}–{max(times[True]):.1f}, "
                  f"after {min(times[False]):.1f}–{max(times[False]):.1f})")
