"""The ⅓-lr rescue ceiling: the perfect policy's lr factors under the trust gate's fastest growth, and one
real (small) run of the measurement."""

import math

import pytest

from fusedgate.bench.brain_ceiling import ceiling_rows, oracle_factor, window_factors
from fusedgate.brain.config import BrainConfig
from fusedgate.brain.safety import TrustGate


def test_the_fastest_growth_of_the_default_gate_and_the_gate_is_left_as_it_was():
    gate = TrustGate.of(BrainConfig())
    assert gate.fastest(9) == [0.125, 0.125, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0, 1.0]   # two pairs per level
    assert gate.alpha == 0.125 and gate.n_pairs == 0
    strict = TrustGate.of(BrainConfig(z_grow=2.0))     # t ≤ √n when s ≥ RMS(d): a level needs n ≥ 4 pairs
    assert strict.fastest(5) == [0.125] * 4 + [0.25]


def test_the_window_factors_follow_the_cycle_roles():
    config = BrainConfig(window=10, warmup_windows=3)
    factors = window_factors(config, 300, [0.5, 0.25])
    assert len(factors) == 30 and factors[:3] == [1.0] * 3
    assert factors[3:7] == pytest.approx([3.0, 3.0, 3.0, 1.0])     # +, −, mean, neutral at α = ½: 10^½ > 3
    assert factors[7:11] == pytest.approx([10 ** 0.25, 10 ** 0.25, 10 ** 0.25, 1.0])
    probed = window_factors(BrainConfig(window=10, warmup_windows=3, probe=4.0), 300, [0.125])
    assert probed[3:7] == pytest.approx([10 ** 0.125, 10 ** 0.125, 3.0, 1.0])   # the mean window at 4α
    free = oracle_factor(config, 300, gated=False)
    assert [free(s) for s in (0, 29, 30, 59, 60, 70)] == [1.0, 1.0, 3.0, 3.0, 1.0, 3.0]   # window 6: neutral


def test_a_real_ceiling_run_on_the_regression_task():
    rows = ceiling_rows(["regression"], range(1), BrainConfig())
    assert [r["optimizer"] for r in rows] == ["sgd", "adamw", "fusedgate"]
    assert all(math.isfinite(r["gate"]) and math.isfinite(r["structure"]) for r in rows)
    sgd = rows[0]
    assert sgd["structure"] > sgd["gate"] + 0.2    # SGD's ⅓-lr gap: the lr it is allowed is what closes it
