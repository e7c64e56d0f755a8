"""The trust-gate sweep's bookkeeping on real (short) training runs of one tuning pair."""

import math

from fusedgate.bench.brain_sweep import pair_row, summary
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
