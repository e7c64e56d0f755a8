"""Executors run evaluation jobs and yield ``(job, result)`` pairs as they finish.

``LocalExecutor`` (default): long-lived, warm worker processes (spawned, so no torch state is forked),
one job per worker at a time: ``jobs_per_gpu`` workers per GPU (small models share a device), else one
single-threaded worker per CPU core. A worker imports torch and the trainer once and, given ``warm``
corpora, loads and tokenises them once at start (``load_data`` caches them per process), so a job pays
only for its model build, training and evaluations. A worker that dies mid-run (OOM-killed, segfault)
turns its job into a "failed" result with the exit code, and is replaced. A worker whose parent dies
(the search was SIGKILLed) exits within ``ORPHAN_POLL_S`` even in the middle of a job: a watchdog
thread compares ``os.getppid()`` with the parent it was started by.

``RayExecutor`` (``--executor ray --address ...``): one Ray task per job, for many GPUs or machines.
Every machine needs fusedgate installed. A task whose worker dies comes back as a "failed" result.
An address is checked before the search starts (``check_reachable``): it must accept a TCP connection
within ``connect_timeout`` seconds, and a throw-away process must join it as a Ray cluster within
``RAY_JOIN_FACTOR × connect_timeout`` seconds (an address that accepts TCP but is no Ray cluster makes
``ray.init`` retry for minutes). A failure is a one-line error naming the address.

Both call ``on_start(job)`` just before a job is handed out (the archive logs it).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait

from fusedgate.search.evaluate import failed, run_job

ORPHAN_POLL_S = 0.5
RAY_JOIN_FACTOR = 3


def default_devices(workers: int | None = None, jobs_per_gpu: int = 1) -> list[str]:
    """``jobs_per_gpu`` workers per CUDA device if there are any, else ``workers`` (default: one per
    core, each single-threaded, so the machine is not oversubscribed) CPU workers."""
    try:
        import torch

        n_gpu = torch.cuda.device_count()
    except Exception:
        n_gpu = 0
    if n_gpu:
        return [f"cuda:{i % n_gpu}" for i in range(workers or n_gpu * max(1, jobs_per_gpu))]
    return ["cpu"] * (workers or os.cpu_count() or 1)


def threads_per_worker(cpu_workers: int) -> int:
    """torch threads of each worker: the cores shared out among the CPU workers, capped by
    OMP_NUM_THREADS when it is set (on a shared machine, spinning threads of oversubscribed workers
    slow every job down by far more than their share)."""
    share = max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(share, int(cap))) if cap.isdigit() and int(cap) > 0 else share


def _exit_when_orphaned(parent_pid: int) -> None:
    """Watchdog thread: end this worker process at once when its parent is gone."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(3)
        time.sleep(ORPHAN_POLL_S)


def _worker_main(conn, device: str, threads: int, parent_pid: int, warm: tuple = ()) -> None:
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    import torch

    from fusedgate.nanochat.data import load_data
    from fusedgate.nanochat.presets import get_preset

    torch.set_num_threads(max(1, threads))
    for data, preset in warm:  # load and tokenise once per worker; load_data caches it per process
        try:
            load_data(data, "byte", get_preset(preset).max_corpus_bytes)
        except Exception:  # a bad corpus fails its jobs with the trainer's own message
            pass
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        result = run_job(job, device)
        result["worker"] = f"local:{os.getpid()}:{device}"
        conn.send(result)


class _Worker:
    def __init__(self, ctx, device: str, threads: int, warm: tuple = ()):
        self.device = device
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, device, threads, os.getpid(), warm), daemon=True)
        self.proc.start()
        child.close()
        self.job = None


class LocalExecutor:
    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        devices: list[str] | None = None,
        jobs_per_gpu: int = 1,
        warm: tuple = (),
    ):
        """``warm``: (data, preset) pairs whose corpus each worker loads and tokenises at start."""
        self.devices = devices or default_devices(workers, jobs_per_gpu)
        self.threads = threads_per_worker(sum(d == "cpu" for d in self.devices))
        self.warm = tuple(warm)
        self.ctx = mp.get_context("spawn")
        self.workers: list[_Worker] = []

    def map(self, jobs: Iterable[dict], on_start: Callable[[dict], None] | None = None) -> Iterator[tuple]:
        pending = deque(jobs)
        if not self.workers:
            self.workers = [
                _Worker(self.ctx, d, self.threads, self.warm) for d in self.devices[: max(1, len(pending))]
            ]
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
                    self.workers[i] = _Worker(self.ctx, w.device, self.threads, self.warm)
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


class UnreachableError(RuntimeError):
    """A Ray address that does not answer (one-line message)."""


def check_reachable(address: str, timeout: float) -> None:
    """Raise UnreachableError unless ``address`` ("host:port" or "ray://host:port") accepts a TCP
    connection within ``timeout`` seconds. "auto"/"local" (a Ray found on this machine) are not checked."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UnreachableError(f"Ray address {address!r}: expected host:port or ray://host:port")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UnreachableError(
            f"cannot reach the Ray cluster at {address} within {timeout:g} s ({reason}); check --address"
        ) from None
    join = RAY_JOIN_FACTOR * timeout
    probe = f"import ray; ray.init(address={address!r}, include_dashboard=False, log_to_driver=False); ray.shutdown()"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=join)
    except subprocess.TimeoutExpired:
        raise UnreachableError(
            f"cannot reach the Ray cluster at {address}: it did not answer as a Ray cluster within {join:g} s; "
            f"check --address"
        ) from None
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {out.returncode}"
        raise UnreachableError(f"cannot reach the Ray cluster at {address}: {last[:300]}")


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

    def __init__(
        self,
        address: str | None = None,
        cpus_per_job: int = 1,
        gpus_per_job: float = 0.0,
        connect_timeout: float | None = 10.0,
    ):
        """``connect_timeout``: seconds for ``check_reachable`` of ``address`` (None: already checked)."""
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            if address and connect_timeout is not None:
                check_reachable(address, connect_timeout)
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
