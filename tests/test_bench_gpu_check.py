"""``bench/gpu_check.sh --dry-run``: the prepared GPU run of issue 18, run on the CPU so that it cannot rot.

One dry run of the whole script (tiny sizes, Triton's interpreter, the trainer's test preset): every stage
exits 0, the eight files land flat in $OUT, and their contents are the stages' real output. Then the
guarantees the GPU run depends on: a stage killed by its timeout leaves the rows it measured and does not
stop what follows, a missing matplotlib loses no number, and a FusedGate backend added later (a "compiled"
reference path) joins the benchmark rows without an edit here.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fusedgate.optimizer as O
from fusedgate.bench import contestants as C
from fusedgate.bench import gpu_check, gpu_report, report
from fusedgate.bench.targets import training_targets

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
FILES = {"env.txt", "pytest.log", "bench.json", "bench.md", "bench.png", "train.json", "train.md", "profile.txt"}
STAGES = ("install", "versions", "pytest", "bench", "train:baseline", "train:fusedgate:nanochat",
          "train:fusedgate:gated", "profile", "probe", "report")


def run_script(out: Path, work: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_WORK": str(work),
                   "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=environment, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    started = time.perf_counter()
    done = run_script(out, work)
    return done, out, time.perf_counter() - started


def test_every_stage_runs_and_the_files_land_flat_in_out(dry_run):
    done, out, seconds = dry_run
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == FILES and all(p.is_file() for p in out.iterdir())
    env = (out / "env.txt").read_text()
    for stage in STAGES:
        assert f"== stage {stage}: exit 0 " in env, stage
    assert "torch " in env and "nvidia-smi" in env and "Would install fusedgate" in env
    assert "| target" in done.stdout  # the targets table ends the output the device call returns
    print(f"dry run: {seconds:.1f} s")


def test_bench_rows_cover_every_planned_contestant(dry_run):
    _, out, _ = dry_run
    run = json.loads((out / "bench.json").read_text())
    records = run["results"]
    assert run["planned"] == len(records) > 0 and run["copy"]["gbps"] > 0
    names = {name for _, _, contestants in gpu_check.ROWS for name in contestants}
    names |= {c.name for c in C.extra_backend_contestants()}   # FusedGate backends beyond reference/triton join
    assert {r["contestant"] for r in records} == names
    for r in records:  # CPU contestants are timed, Triton ones run under the interpreter
        assert r["status"] in ("ok", "interpreted"), r
        assert r["median_ms"] > 0
    compiled = [r for r in records if r["contestant"] == "nanochat_eager"]
    assert compiled and all(r["ratio"] > 0 for r in compiled)  # against nanochat_compiled on the same row


def test_bench_md_has_every_target_of_the_issue(dry_run):
    _, out, _ = dry_run
    md = (out / "bench.md").read_text()
    assert "| target" in md and "| measured" in md and "| goal" in md and "| status" in md
    for fragment in ("GateSpec.adamw Triton step ≤ 1.0× fused AdamW", "≥ 90% of copy bandwidth",
                     "gated Triton step (no ortho) ≤ 1.1×", "Newton–Schulz ≥ 1.3×",
                     "nanochat() Triton step ≤ 1.0× nanochat's compiled step", "fusedgate:nanochat training tokens/s",
                     "fusedgate:gated training tokens/s", "## nanochat's Muon step", "End-to-end training"):
        assert fragment in md, fragment


def test_training_stage_reports_three_finished_runs(dry_run):
    _, out, _ = dry_run
    runs = json.loads((out / "train.json").read_text())["runs"]
    assert [r["label"] for r in runs] == ["baseline", "fusedgate:nanochat", "fusedgate:gated"]
    for r in runs:
        assert r["status"] == "ok" and r["steps"] == 3 and r["tokens_per_s"] > 0
        assert math.isfinite(r["final_val_bpb"]) and r["val_curve"][-1]["step"] == 3
    assert all(t["status"] in ("met", "missed") for t in training_targets(runs))
    assert "| fusedgate:gated" in (out / "train.md").read_text()


def test_profile_has_a_table_per_spec_and_then_the_probe(dry_run):
    _, out, _ = dry_run
    profile, probe = (out / "profile.txt").read_text().split("# GPU probe (cpu", 1)
    assert "## FusedGate gated()" in profile and "## FusedGate nanochat()" in profile
    assert "failed" not in profile and profile.count("Self CPU") >= 2
    for section in ("## Host, events, graph", "## Newton–Schulz tilings", "## cProfile of", "fg_adamw_compiled"):
        assert section in probe, section
    assert " failed" not in probe   # a section that raised is written as "## <section> failed"


def test_a_stage_past_its_limit_is_killed_and_the_rest_still_runs(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = run_script(out, work, GPU_CHECK_STAGES="3 5", GPU_CHECK_LIMIT_BENCH="2", GPU_CHECK_LIMIT_PROFILE="2")
    assert done.returncode == 0, done.stderr
    env = (out / "env.txt").read_text()
    assert "== stage bench: exit 124 (timed out)" in env and "== stage report: exit 0" in env
    assert "== stage profile:" in env and "stage install" not in env


def test_without_pip_a_link_tree_imports_the_checkout(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = run_script(out, work, GPU_CHECK_STAGES="0", GPU_CHECK_INSTALL="links")
    assert done.returncode == 0, done.stderr
    env = (out / "env.txt").read_text()
    assert f"PYTHONPATH={work}/site" in env and "does not import either" not in env
    assert f"fusedgate.bench.gpu_check ? {work}/site/fusedgate/bench/gpu_check.py" in env


def test_a_killed_bench_keeps_the_rows_it_measured(tmp_path):
    """SIGKILL (no handler runs) once the first row is on disk: bench.json is whole and holds it."""
    environment = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fusedgate.bench.gpu_check", "bench", "--dry-run",
                                "--out", str(tmp_path)], env=environment, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            run = gpu_report.load_json(tmp_path / "bench.json")
            if run and run["results"]:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    run = json.loads((tmp_path / "bench.json").read_text())
    assert 1 <= len(run["results"]) and run["results"][0]["status"] == "ok"
    assert "adamw_fused" in (tmp_path / "bench.md").read_text()


def test_without_matplotlib_the_numbers_are_kept(dry_run, tmp_path, monkeypatch):
    _, out, _ = dry_run
    run = json.loads((out / "bench.json").read_text())

    def no_matplotlib(run):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report, "plot_png", no_matplotlib)
    gpu_report.write_bench(run, tmp_path, runs=[], png=True)
    assert {p.name for p in tmp_path.iterdir()} == {"bench.json", "bench.md"}
    md = (tmp_path / "bench.md").read_text()
    assert "No bench.png: matplotlib is not importable" in md and "adamw_fused" in md


def test_a_new_fusedgate_backend_joins_the_rows(monkeypatch):
    monkeypatch.setattr(O, "BACKENDS", (*O.BACKENDS, "compiled"))
    names = {c.name for _, _, c in gpu_check.plan_jobs(gpu_check.GPU_PLAN, torch.device("cuda"))}
    assert {"fg_adamw_compiled", "fg_gated_compiled", "fg_nanochat_compiled"} <= names
    monkeypatch.setattr(O, "BACKENDS", ("auto", "reference", "triton"))
    names = {c.name for _, _, c in gpu_check.plan_jobs(gpu_check.GPU_PLAN, torch.device("cuda"))}
    assert not any(n.endswith("_compiled") and n.startswith("fg_") for n in names)
