"""Executors run evaluation jobs and yield ``(job, result)`` pairs as they finish.

``LocalExecutor`` (default): long-lived worker processes (spawned, so no torch state is forked), one
job per worker at a time, one worker per device (GPU) or per CPU core. A worker that dies mid-run
(OOM-killed, segfault) turns its job into a "failed" result with the exit code, and is replaced.

``RayExecutor`` (``--executor ray --address ...``): one Ray task per job, for many GPUs or machines.
Every machine needs fusedgate installed. A task whose worker dies comes back as a "failed" result.

Both call ``on_start(job)`` just before a job is handed out (the archive logs it).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait

from fusedgate.search.evaluate import failed, run_job


def default_devices(workers: int | None = None) -> list[str]:
    """One worker per CUDA device if there are any, else ``workers`` (default: all cores) CPU workers."""
    try:
        import torch

        n_gpu = torch.cuda.device_count()
    except Exception:
        n_gpu = 0
    if n_gpu:
        return [f"cuda:{i % n_gpu}" for i in range(workers or n_gpu)]
    return ["cpu"] * (workers or os.cpu_count() or 1)


def _worker_main(conn, device: str, threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    while True:
        job = conn.recv()
        if job is None:
            return
        result = run_job(job, device)
        result["worker"] = f"local:{os.getpid()}:{device}"
        conn.send(result)


class _Worker:
    def __init__(self, ctx, device: str, threads: int):
        self.device = device
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, device, threads), daemon=True)
        self.proc.start()
        child.close()
        self.job = None


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int | None = None, devices: list[str] | None = None):
        self.devices = devices or default_devices(workers)
        cpu_workers = sum(d == "cpu" for d in self.devices)
        self.threads = max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
        self.ctx = mp.get_context("spawn")
        self.workers: list[_Worker] = []

    def map(self, jobs: Iterable[dict], on_start: Callable[[dict], None] | None = None) -> Iterator[tuple]:
        pending = deque(jobs)
        if not self.workers:
            self.workers = [_Worker(self.ctx, d, self.threads) for d in self.devices[: max(1, len(pending))]]
        while pending or any(w.job for w in self.workers):
            for w in self.workers:
                if w.job is None and pending:
                    w.job = pending.popleft()
                    if on_start:
                        on_start(w.job)
                    w.conn.send(w.job)
            busy = [w for w in self.workers if w.job is not None]
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for i, w in enumerate(self.workers):
                if w.job is None or (w.conn not in ready and w.proc.sentinel not in ready):
                    continue
                job, w.job = w.job, None
                try:
                    result = w.conn.recv()
                except (EOFError, OSError):
                    w.proc.join(5)
                    result = failed(f"worker process died mid-run (exit code {w.proc.exitcode})")
                    self.workers[i] = _Worker(self.ctx, w.device, self.threads)
                yield job, result

    def close(self) -> None:
        for w in self.workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self.workers:
            w.proc.join(5)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(5)
        self.workers = []


def _ray_run(job: dict, threads: int, use_gpu: bool) -> dict:
    import socket

    import torch

    torch.set_num_threads(max(1, threads))
    result = run_job(job, "cuda" if use_gpu else "cpu")
    result["worker"] = f"ray:{socket.gethostname()}:{os.getpid()}"
    return result


class RayExecutor:
    """Jobs as Ray tasks (``num_cpus``/``num_gpus`` per job). Joins a cluster at ``address``
    ("auto", "ray://host:10001", ...) or, without one, uses the running Ray or starts a local one."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_job: int = 1, gpus_per_job: float = 0.0):
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        self.ray = ray
        self.cpus, self.gpus = cpus_per_job, gpus_per_job
        self.remote = ray.remote(_ray_run).options(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=0)

    def map(self, jobs: Iterable[dict], on_start: Callable[[dict], None] | None = None) -> Iterator[tuple]:
        refs = {}
        for job in jobs:
            if on_start:
                on_start(job)
            refs[self.remote.remote(job, self.cpus, self.gpus > 0)] = job
        try:
            while refs:
                done, _ = self.ray.wait(list(refs), num_returns=1)
                for ref in done:
                    job = refs.pop(ref)
                    try:
                        result = self.ray.get(ref)
                    except Exception as exc:  # worker died, task error, node lost
                        result = failed(f"ray task failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                    yield job, result
        finally:
            for ref in refs:
                self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started:  # a Ray we joined or that was running already is left alone
            self.ray.shutdown()
