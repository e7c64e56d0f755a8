"""The trust-gate sweep's bookkeeping on real (short) training runs of one tuning pair."""

import math

import pytest

from fusedgate.bench.brain_sweep import pair_row, seed_range, summary
from fusedgate.brain.scenarios import geomean
from fusedgate.brain.tasks import run_arm


def test_a_pair_row_and_its_summary_from_short_real_runs():
    def final(task, optimizer, seed, arm, overrides):
        return run_arm(task, optimizer, seed, arm, steps=40, brain_kwargs=overrides)["final"]

    neutral = {"alpha_start": 0.0, "alpha_min": 0.0, "warmdown": 0.0}   # α = 0, no warmdown: the base optimizer
    row = pair_row(final, "regression", "sgd", neutral)
    assert row["tuned"] == 1.0 and row["x3"] == 1.0 and (math.isnan(row["div3_closed"]) or row["div3_closed"] == 0.0)
    out = summary("neutral", neutral, {"regression/sgd": row, "regression/fusedgate": dict(row, x3=0.5)}, 1.0)
    assert out["worst_tuned"] == 1.0 and out["n_tuned_ok"] == 2 and out["x3_ok"] == 0   # FusedGate pairs not counted
    assert geomean([2.0, 8.0, math.nan]) == 4.0


def test_a_seed_range_is_inclusive_and_never_reaches_the_evaluation_seeds():
    assert seed_range("10-29") == range(10, 30) and seed_range("5-5") == range(5, 6)
    for bad, says in [("0-19", "are the evaluation's"), ("4-9", "are the evaluation's"), ("12-10", "FIRST ≤ LAST"),
                      ("10", "expected FIRST-LAST"), ("a-b", "expected FIRST-LAST")]:
        with pytest.raises(SystemExit, match=says):
            seed_range(bad)
