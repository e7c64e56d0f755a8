"""A real 2-generation search on the NanoChat `test` preset, killed with SIGKILL mid-way and resumed:
no finished evaluation is lost or re-run; then the report is written."""

import os
import signal
import subprocess
import sys
import time

from conftest import count_evaluations

from fusedgate.cli import main as cli_main
from fusedgate.search.archive import Archive
from fusedgate.search.tournament import neutral_spec


def test_search_killed_and_resumed_loses_and_repeats_nothing(tmp_path, corpus):
    db = str(tmp_path / "search.sqlite")
    args = [
        "search",
        "run",
        "--db",
        db,
        "--preset",
        "test",
        "--data",
        corpus,
        "--generations",
        "2",
        "--population",
        "3",
        "--survivors",
        "1",
        "--screen-steps",
        "3",
        "--horizons",
        "5,8",
        "--seeds",
        "0,1",
        "--lr-scales",
        "0.7,1",
        "--holdout-seeds",
        "20,21",
        "--ladder",
        "0.8,1",
        "--transfer-preset",
        "test",
        "--final-eval-tokens",
        "1024",
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusedgate", *args],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    while count_evaluations(db) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the search and its workers, at an arbitrary moment
    proc.wait()
    output = proc.stdout.read().decode()
    killed_at = time.time()
    assert proc.returncode == -signal.SIGKILL, output

    archive = Archive.open(db)
    before = {e["job_key"]: e for e in archive.evaluations()}
    assert len(before) >= 5, output
    assert archive.get_meta("finished") is None  # it really was interrupted
    archive.close()

    assert cli_main(["search", "resume", "--db", db, "--workers", "1", "--no-progress"]) == 0

    archive = Archive.open(db)
    after = archive.evaluations()
    keys = [e["job_key"] for e in after]
    assert len(keys) == len(set(keys))
    for key, row in before.items():  # every finished evaluation survived unchanged
        assert after[keys.index(key)] == row
    rerun = [s for s in archive.job_starts() if s["started_at"] > killed_at and s["job_key"] in before]
    assert rerun == [], "a finished evaluation was handed out again"
    assert len(after) > len(before)
    assert archive.get_meta("finished") == "1"
    # two generations, each member screened; generation 1 carries the elite over
    assert archive.generations() == [0, 1]
    assert [m["role"] for m in archive.population(1)].count("elite") == 1
    for gen in (0, 1):
        for m in archive.population(gen):
            assert any(e["spec_hash"] == m["hash"] and e["steps"] == 3 for e in after)
    neutral = neutral_spec().content_hash()
    confirmed = {e["spec_hash"] for e in after if e["steps"] == 5 and e["stage"] == "confirm"}
    assert len(confirmed) >= 2  # the neutral reference and at least one survivor, on 2 seeds each
    sweep = sorted({(e["lr_scale"], e["seed"]) for e in after
                    if e["steps"] == 5 and e["spec_hash"] == neutral and e["stage"] == "confirm"})
    assert sweep == [(sc, s) for sc in (0.7, 1.0) for s in (0, 1)]  # the tuned reference's lr sweep
    assert all(e["optimizer"] == "fusedgate" for e in after)  # the reference runs the candidates' code path
    assert all(e["final_eval_tokens"] == 1024 and e["final_val_se"] > 0 for e in after if e["steps"] == 5)
    specs = [c["hash"] for c in archive.candidates()]
    assert len(specs) == len(set(specs))  # no spec proposed twice
    for c in archive.candidates():
        if c["generation"] == 1 and c["operator"] != "seed":
            assert len(c["parents"]) == 1  # lineage recorded
    archive.close()

    out = tmp_path / "report"
    assert cli_main(["search", "report", "--db", db, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "A candidate wins only if, at every confirmation horizon (5, 8 steps)" in text
    assert "No candidate wins at every horizon" in text and "2 seeds < 5" in text
    assert "## Power: what the evaluator can resolve" in text and "## Steps-to-target on the held-out seeds" in text
    for png in ("lineage.png", "robust_by_generation.png"):
        assert (out / png).stat().st_size > 1000, png
