"""Ending a spawned rank: its exit status and output survive ``os._exit``, and two gloo ranks leave
cleanly after their barrier."""

import subprocess
import sys

import torch.multiprocessing as mp


def test_the_exit_status_and_the_unflushed_output_survive():
    code = "from fusedgate.ranks import exit_rank; print('done', end=''); exit_rank(3)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and result.stdout == "done"


def _rank(rank: int, world: int, store: str) -> None:
    import torch.distributed as dist

    from fusedgate.ranks import exit_rank

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    exit_rank(0)


def test_two_gloo_ranks_leave_through_the_barrier(tmp_path):
    mp.start_processes(_rank, args=(2, str(tmp_path / "store")), nprocs=2, start_method="spawn")   # raises on failure
