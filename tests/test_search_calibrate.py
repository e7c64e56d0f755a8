"""``fusedgate search calibrate`` for real on the `test` preset: random specs at both horizons against
the neutral reference, the rank correlations recomputed from the archive."""

import math

import pytest

from fusedgate.cli import main as cli_main
from fusedgate.search import score
from fusedgate.search.archive import Archive
from fusedgate.search.calibrate import stage_aggregate, summarize


def test_calibration_runs_and_its_correlations_recompute(tmp_path, corpus):
    db, out = str(tmp_path / "cal.sqlite"), tmp_path / "report"
    assert cli_main(["search", "calibrate", "--db", db, "--out", str(out), "--preset", "test", "--data", corpus,
                     "--n", "3", "--screen-steps", "3", "--confirm-steps", "5", "--seeds", "0",
                     "--final-eval-tokens", "256", "--workers", "1", "--no-progress"]) == 0
    archive = Archive.open(db)
    summary = summarize(archive)
    assert summary["n_done"] == 3 and (out / "calibration.md").exists()
    cfg, corpus_fp = archive.config(), archive.get_meta("corpus")
    rows = summary["rows"]
    for r, member in zip(rows, archive.population(0)):
        agg = stage_aggregate(archive, cfg, corpus_fp, "confirm", member["spec"])
        assert agg["final_val_bpb"] == pytest.approx(r["confirm"]["final_val_bpb"])
    rho = score.spearman([r["screen"]["score"] for r in rows], [r["confirm"]["score"] for r in rows])
    assert summary["rho_score"] == pytest.approx(rho) or (math.isnan(rho) and math.isnan(summary["rho_score"]))
    assert all(e["optimizer"] == "fusedgate" for e in archive.evaluations())  # the reference is neutral FusedGate
    archive.close()
