"""Executors on real training jobs: a worker killed mid-run (or a job that raises) becomes a failed
result and the pool goes on; the Ray executor runs a job on a local Ray instance."""

import os
import signal
import threading

import pytest

from fusedgate.search.evaluate import make_job
from fusedgate.search.executors import LocalExecutor
from fusedgate.search.tournament import gated_muon


def test_local_worker_killed_mid_run_is_a_failed_evaluation(corpus):
    doomed = make_job("fusedgate", gated_muon(), "test", 100_000, 0, corpus, "c", "screen")  # would run for hours
    fine = make_job("baseline", None, "test", 3, 0, corpus, "c", "screen")
    bad = make_job("fusedgate", gated_muon(), "no-such-preset", 3, 0, corpus, "c", "screen")
    executor = LocalExecutor(workers=1)
    started = []

    def on_start(job):
        started.append(job["job_key"])
        if job is doomed:
            pid = executor.workers[0].proc.pid
            threading.Timer(2.0, os.kill, (pid, signal.SIGKILL)).start()

    try:
        results = {job["job_key"]: res for job, res in executor.map([doomed, bad, fine], on_start=on_start)}
    finally:
        executor.close()
    assert started == [doomed["job_key"], bad["job_key"], fine["job_key"]]
    assert results[doomed["job_key"]]["status"] == "failed"
    assert "worker process died mid-run" in results[doomed["job_key"]]["error"]
    assert str(-signal.SIGKILL) in results[doomed["job_key"]]["error"]
    ok = results[fine["job_key"]]
    assert ok["status"] == "ok" and 0 < ok["final_val_bpb"] < 9 and ok["worker"].startswith("local:")
    assert [c["step"] for c in ok["val_curve"]][-1] == 3
    # a job that raises inside the worker is a failed result with its error text; the worker lives on
    assert results[bad["job_key"]]["status"] == "failed" and "unknown preset" in results[bad["job_key"]]["error"]


def test_ray_executor_runs_a_job(corpus):
    ray = pytest.importorskip("ray")
    from fusedgate.search.executors import RayExecutor

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        executor = RayExecutor()
        job = make_job("fusedgate", gated_muon(), "test", 3, 1, corpus, "c", "screen")
        started = []
        [(done, res)] = list(executor.map([job], on_start=lambda j: started.append(j["job_key"])))
        executor.close()
        assert ray.is_initialized()  # a Ray it did not start is left running
    finally:
        ray.shutdown()
    assert started == [job["job_key"]] and done is job
    assert res["status"] == "ok", res.get("error")
    assert res["worker"].startswith("ray:") and 0 < res["final_val_bpb"] < 9
    assert res["gate_trajectory"] and 0.0 <= res["gate_trajectory"][0]["gate"] <= 1.0


def test_warm_workers_tokenise_the_corpus_once(corpus):
    jobs = [make_job("baseline", None, "test", 2, s, corpus, "c", "screen") for s in (0, 1)]
    for warm, expected in (((corpus, "test"),), [True, True]), ((), [False, True]):
        executor = LocalExecutor(workers=1, warm=warm)
        try:
            results = [res for _, res in executor.map(jobs)]
        finally:
            executor.close()
        assert [r["corpus_cached"] for r in results] == expected
        assert all(r["total_s"] > r["wall_s"] > 0 for r in results)


def test_default_workers_do_not_oversubscribe(monkeypatch):
    from fusedgate.search.executors import default_devices, threads_per_worker

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = os.cpu_count()
    assert default_devices() == ["cpu"] * cores and threads_per_worker(cores) == 1
    assert threads_per_worker(1) == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_worker(1) == 1
