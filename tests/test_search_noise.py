"""`fusedgate search noise` on the `test` preset: real runs, the summary checked against a direct
computation from the archive, and a re-run that resumes without training anything again."""

import math

import pytest

from fusedgate.cli import main as cli_main
from fusedgate.search import stats
from fusedgate.search.archive import Archive
from fusedgate.search.noise import summarize


def test_noise_floor_by_horizon(tmp_path, corpus):
    db, out = str(tmp_path / "noise.sqlite"), tmp_path / "report"
    args = ["search", "noise", "--db", db, "--out", str(out), "--preset", "test", "--data", corpus, "--seeds",
            "0-2", "--horizons", "3,6", "--final-eval-tokens", "1024", "--workers", "1", "--no-progress"]
    assert cli_main(args) == 0
    archive = Archive.open(db)
    evals = archive.evaluations()
    assert len(evals) == 2 * 3 * 3 and all(e["status"] == "ok" for e in evals)
    summary = summarize(archive)
    for h in summary["horizons"]:
        runs = [e for e in evals if e["steps"] == h["steps"]]
        base = {e["seed"]: e for e in runs if e["optimizer"] == "baseline" and e["lr_scale"] == 1.0}
        second = {e["seed"]: e for e in runs if e["optimizer"] == "baseline" and e["lr_scale"] == 0.7}
        assert h["seed_sd"] == pytest.approx(stats.mean_sd([e["final_val_bpb"] for e in base.values()])[1])
        diffs = [second[s]["final_val_bpb"] - base[s]["final_val_bpb"] for s in (0, 1, 2)]
        assert h["paired_sd"] == pytest.approx(stats.mean_sd(diffs)[1])
        assert h["mde5"] == pytest.approx((2.131847 + 0.940965) * h["paired_sd"] / math.sqrt(5), rel=1e-5)
        assert 0 < h["paired_val_se"] < h["val_se"]  # pairing on the same val windows removes most of it
    starts = len(archive.job_starts())
    archive.close()
    text = (out / "noise.md").read_text()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    assert ["3", "3"] in [row[:2] for row in rows] and ["6", "3"] in [row[:2] for row in rows]
    assert (out / "noise.png").stat().st_size > 1000
    assert cli_main(args) == 0  # resumes: nothing is trained again
    archive = Archive.open(db)
    assert len(archive.job_starts()) == starts
    archive.close()
