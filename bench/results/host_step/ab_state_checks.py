"""A/B of the Triton step's host time: the state checked on every step (before) against only when a state tensor
was replaced (after, ``kernels.backend.CheckedStates``), with the pointer table's key as a flattened tuple
(before) or the rows compared as lists (after).

Run from the repository root, nothing else heavy running:

    TRITON_INTERPRET=1 OMP_NUM_THREADS=1 python bench/results/host_step/ab_state_checks.py

The kernels are replaced by no-ops (``InterpretedFunction.run``), so what is timed is the Python of
``FusedGate.step`` around the launches, on small tensors (the host's work depends on the number of tensors, not
their size): one matrix, and as many as NanoChat d12 has (72). "Before" is this same code with the two changes
undone by patching: ``checked_states`` cleared before every step, and ``BucketLayout.pointers`` the old body.
Alternating blocks of 200 steps, 7 blocks per arm, one process, one thread; µs per step, median over blocks.
"""

import statistics
import time

import torch
from triton.runtime.interpreter import InterpretedFunction

from fusedgate.bench import contestants as C
from fusedgate.bench.workloads import Workload, nanochat_workload
from fusedgate.kernels import layout as L

STEPS, BLOCKS = 200, 7


def old_pointers(self, rows):
    key = tuple(a for row in rows for a in row)
    if key != getattr(self, "_old_key", None):
        self.ptrs = L.to_device(rows, torch.int64, self.device)
        self._old_key = key
    return self.ptrs


def block(setup, optimizer, before: bool) -> float:
    start = time.perf_counter()
    for _ in range(STEPS):
        for layout in optimizer._cache.values():
            if before:
                layout.checked_states = None
        setup.step()
    return (time.perf_counter() - start) / STEPS * 1e6


def main() -> None:
    torch.set_num_threads(1)
    new_pointers = L.BucketLayout.pointers
    d12 = nanochat_workload(12)
    cases = [("one matrix", Workload("matrix", "1", ((8, 8),))),
             ("d12's 72 matrices", Workload("nanochat", "d12", tuple((8, 8) for _ in d12.shapes)))]
    for name in ("fg_adamw_triton", "fg_gated_triton"):
        for label, workload in cases:
            setup = C.by_name([name])[0].build(workload, torch.float32, torch.device("cpu"), True)
            for _ in range(3):
                setup.step()   # the tables built, with the real kernels
            optimizer = _optimizer_of(setup)
            saved = InterpretedFunction.run
            InterpretedFunction.run = lambda self, *args, **kwargs: None
            times = {True: [], False: []}
            try:
                for _ in range(BLOCKS):
                    for before in (True, False):
                        L.BucketLayout.pointers = old_pointers if before else new_pointers
                        times[before].append(block(setup, optimizer, before))
            finally:
                InterpretedFunction.run = saved
                L.BucketLayout.pointers = new_pointers
            b, a = statistics.median(times[True]), statistics.median(times[False])
            print(f"{name:16s} {label:18s} before {b:7.1f} µs  after {a:7.1f} µs  after/before {a / b:.3f}  "
                  f"(blocks: before {min(times[True]):.1f}–{max(times[True]):.1f}, "
                  f"after {min(times[False]):.1f}–{max(times[False]):.1f})")


def _optimizer_of(setup) -> torch.optim.Optimizer:
    """The optimizer inside a contestant's step (``contestants.optimizer_setup``'s lambda)."""
    for cell in setup.step.__closure__ or ():
        if isinstance(cell.cell_contents, torch.optim.Optimizer):
            return cell.cell_contents
    raise RuntimeError("no optimizer in the step's closure")


if __name__ == "__main__":
    main()
