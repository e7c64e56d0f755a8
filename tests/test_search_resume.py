"""A search killed at several points and resumed equals the uninterrupted search: the same evaluations
(same job keys, same results), the same candidates and lineage, the same standings."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import count_evaluations

from fusedgate.cli import main as cli_main
from fusedgate.search.archive import Archive
from fusedgate.search.tournament import standings


def search_args(db: str, corpus: str) -> list[str]:
    return ["search", "run", "--db", db, "--preset", "test", "--data", corpus, "--generations", "2",
            "--population", "3", "--survivors", "1", "--screen-steps", "3", "--screen-seeds", "0", "--horizons", "4,6",
            "--seeds", "0,1", "--lr-scales", "0.7,1", "--holdout-seeds", "20,21", "--ladder", "0.8,1",
            "--transfer-preset", "test", "--transfer-seeds", "40,41", "--final-eval-tokens", "512",
            "--workers", "1", "--no-progress"]


def snapshot(db: str) -> dict:
    archive = Archive.open(db)
    try:
        cfg_corpus = archive.get_meta("corpus")
        from fusedgate.search.config import SearchConfig

        cfg = SearchConfig.from_dict(archive.config())
        return {
            "runs": {e["job_key"]: (e["status"], e["final_val_bpb"]) for e in archive.evaluations()},
            "candidates": [(c["id"], c["hash"], c["generation"], c["operator"], tuple(c["parents"]))
                           for c in archive.candidates()],
            "standings": [r["hash"] for r in standings(archive, cfg, cfg_corpus)],
            "finished": archive.get_meta("finished"),
        }
    finally:
        archive.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus):
    db = str(tmp_path_factory.mktemp("whole") / "search.sqlite")
    assert cli_main(search_args(db, corpus)) == 0
    return snapshot(db)


@pytest.mark.parametrize("kill_after", [3, 9])
def test_killed_and_resumed_equals_the_uninterrupted_search(tmp_path, corpus, uninterrupted, kill_after):
    db = str(tmp_path / "search.sqlite")
    proc = subprocess.Popen([sys.executable, "-m", "fusedgate", *search_args(db, corpus)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while count_evaluations(db) < kill_after and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the search ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert cli_main(["search", "resume", "--db", db, "--workers", "1", "--no-progress"]) == 0
    resumed = snapshot(db)
    assert resumed["finished"] == "1"
    assert resumed["candidates"] == uninterrupted["candidates"]
    assert resumed["runs"] == uninterrupted["runs"]
    assert resumed["standings"] == uninterrupted["standings"]
