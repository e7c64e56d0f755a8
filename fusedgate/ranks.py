"""Ending a spawned rank: the ``torch.multiprocessing`` workers of ``fusedgate train --nproc`` and of the
distributed benchmarks.

After the process group is destroyed, gloo's threads can still abort the process during the
interpreter's teardown ("terminate called without an active exception"), which turns a run that has
finished into a failed one. So a rank whose work is done waits for its peers, destroys the group,
flushes its output and leaves with ``os._exit``, skipping that teardown.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import torch.distributed as dist


def exit_rank(code: int = 0) -> NoReturn:
    """Leave this rank with exit status ``code``: on success, after a barrier (no rank tears gloo down
    while a peer still talks to it); on failure at once (the launcher stops the others)."""
    if dist.is_available() and dist.is_initialized():
        if code == 0:
            dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
