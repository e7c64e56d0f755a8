"""step_fraction's share of the gate: 1 for a schedule, 0 for a gate driven by another sensor."""

import pytest

from fusedgate.search.phase import gate_logits, step_fraction_share
from fusedgate.spec import GateSpec


def trajectory(steps, improvement):
    return [{"step": t, "gate": 0.5, "sensors": {"step_fraction": t / steps, "loss_improvement": improvement(t)}}
            for t in range(steps)]


def test_a_step_fraction_gate_is_a_schedule():
    spec = GateSpec.nanochat().replace(w_step_fraction=-3.0, gate_bias=1.0)
    traj = trajectory(50, lambda t: 0.1 * (-1) ** t)
    assert gate_logits(spec, traj)[10] == pytest.approx(1.0 - 3.0 * 10 / 50)
    assert step_fraction_share(spec, traj) == pytest.approx(1.0)


def test_a_state_driven_gate_is_not():
    spec = GateSpec.nanochat().replace(w_loss_improvement=2.0)
    traj = trajectory(50, lambda t: (-1) ** t)   # alternates, uncorrelated with the step
    assert step_fraction_share(spec, traj) < 0.05


def test_a_still_gate_has_no_share():
    assert step_fraction_share(GateSpec.nanochat(), trajectory(20, lambda t: 0.3)) is None
