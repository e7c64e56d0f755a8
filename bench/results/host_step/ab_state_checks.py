"""A/B of the Triton step's host time: the state checked on every step (before) against only when a state tensor
was replaced (after, ``kernels.backend.CheckedStates``), with the pointer table's key as a flattened tuple
(before) or the rows compared as lists (after).

Run from the repository root, nothing else heavy running:

    TRITON_INTERPRET=1 OMP_NUM_THREADS=1 python bench/results/host_step/ab_state_checks.py

The harness is ``harness.py``: the kernels are replaced by no-ops (``InterpretedFunction.run``), so what is timed
is the Python of ``FusedGate.step`` around the launches, on small tensors (the host's work depends on the number
of tensors, not their size): one matrix, and as many as NanoChat d12 has (72). "Before" is this same code with
the two changes undone by patching: ``checked_states`` cleared before every step, and ``BucketLayout.pointers``
the old body.
Alternating blocks of 200 steps, 7 blocks per arm, one process, one thread; µs per step, median over blocks.
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from fusedgate.kernels import layout as L  # noqa: E402

NEW_POINTERS = L.BucketLayout.pointers


def old_pointers(self, rows):
    key = tuple(a for row in rows for a in row)
    if key != getattr(self, "_old_key", None):
        self.ptrs = L.to_device(rows, torch.int64, self.device)
        self._old_key = key
    return self.ptrs


def arm(before: bool) -> None:
    L.BucketLayout.pointers = old_pointers if before else NEW_POINTERS


def block(setup, before: bool) -> float:
    """Before: every layout's checked states forgotten before every step (checked on every step)."""
    optimizer = _optimizer_of(setup)
    start = time.perf_counter()
    for _ in range(harness.STEPS):
        for layout in optimizer._cache.values():
            if before:
                layout.checked_states = None
        setup.step()
    return (time.perf_counter() - start) / harness.STEPS * 1e6


def _optimizer_of(setup) -> torch.optim.Optimizer:
    """The optimizer inside a contestant's step (``contestants.optimizer_setup``'s lambda)."""
    for cell in setup.step.__closure__ or ():
        if isinstance(cell.cell_contents, torch.optim.Optimizer):
            return cell.cell_contents
    raise RuntimeError("no optimizer in the step's closure")


if __name__ == "__main__":
    harness.run(("fg_adamw_triton", "fg_gated_triton"), arm, block)
