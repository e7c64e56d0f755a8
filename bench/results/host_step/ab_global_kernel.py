"""A/B of the Triton step's host time: the step count and loss sensors in torch ops (before: ``gate.observe_loss``,
about thirty dispatcher calls, twenty of them kernels on CUDA) against one ``global_kernel`` launch (after).

Run from the repository root, nothing else heavy running:

    TRITON_INTERPRET=1 OMP_NUM_THREADS=1 python bench/results/host_step/ab_global_kernel.py

The harness is ``harness.py`` (kernels as no-ops: what is timed is the Python of ``FusedGate.step`` around the
launches, on small tensors); "before" is this same code with
``backend.kernels_take`` answering False for the global state, so ``functional.advance_global`` takes the torch
form, whose ops here run on the CPU (on CUDA each is a launch, several µs of host time more). The gated spec
(which reads the loss) and, for contrast, the AdamW preset (which does not: both arms count the step in one op or
one launch). Alternating blocks of 200 steps, 7 blocks per arm, one process, one thread; µs per step, median.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from fusedgate.kernels import backend as B  # noqa: E402

KERNELS_TAKE = B.kernels_take


def arm(before: bool) -> None:
    """Before: the global state never on the kernels (the torch form); after: as the code decides."""
    B.kernels_take = (lambda device: False) if before else KERNELS_TAKE


if __name__ == "__main__":
    harness.run(("fg_gated_triton", "fg_adamw_triton"), arm, lambda setup, before: harness.timed_block(setup))
