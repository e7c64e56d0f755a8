"""The trust gate: grows only on a passed one-sided paired test, shrinks at once, 0 is exactly neutral and
final — and the bound its docstring states, measured on simulated paired differences."""

import numpy as np
import pytest

from fusedgate.brain.safety import TrustGate


def gate():
    return TrustGate(alpha_start=0.5, alpha_min=1 / 16, z_grow=1.0, z_shrink=0.5)


def test_growth_needs_two_pairs_that_pass_the_test():
    g = gate()
    assert g.after_cycle(5.0, 1.0) == 1.0 and g.alpha == 0.5      # one pair is never enough
    assert g.after_cycle(5.0, 1.0) == 2.0 and g.alpha == 1.0      # two: t = 10/√2 ≥ 1 → doubled
    assert g.after_cycle(5.0, 1.0) == 1.0 and g.alpha == 1.0      # capped at 1
    weak = gate()
    weak.after_cycle(0.5, 1.0)
    assert weak.after_cycle(0.5, 1.0) == 1.0 and weak.alpha == 0.5   # t = 1/√2 < 1: held, not grown


def test_a_worse_test_quarters_the_trust_at_once_and_zero_is_final():
    g = gate()
    assert g.after_cycle(-1.0, 1.0) == 0.25 and g.alpha == 0.125  # t = −1 ≤ −0.5 after one pair
    g.after_cycle(-1.0, 1.0)
    assert g.alpha == 0.0                                          # 1/32 < α_min: exactly neutral
    for _ in range(20):
        g.after_cycle(10.0, 1.0)
    assert g.alpha == 0.0 and g.n_shrinks == 2 and g.n_grows == 0  # nothing brings it back
    bad = gate()
    bad.bad_window()
    assert bad.alpha == 0.125


def test_the_noise_scale_is_never_below_the_predicted_pair_noise():
    g = gate()
    g.after_cycle(0.3, 1.0)
    assert g.after_cycle(0.3, 1.0) == 1.0      # t = 0.6/(1·√2) < 1 with s = 1 (RMS of d would be 0.3)


def simulate(delta, runs=2000, cycles=100, seed=0):
    """Runs of the gate on d ~ N(delta, 1) with s = 1 known: (P(full trust), mean cycles at α > 0, Σα)."""
    rng = np.random.default_rng(seed)
    full, alive, exposure = 0, [], []
    for _ in range(runs):
        g = gate()
        seen, total = [], 0.0
        for _ in range(cycles):
            g.after_cycle(delta + rng.standard_normal(), 1.0)
            seen.append(g.alpha)
            total += g.alpha
        full += 1.0 in seen
        alive.append(sum(a > 0 for a in seen))
        exposure.append(total)
    return full / runs, float(np.mean(alive)), float(np.mean(exposure)), float(np.percentile(alive, 95))


@pytest.mark.parametrize("delta, p_full, cycles, exposure, p95", [
    (-0.5, 0.09, 6.0, 1.8, 18),      # the docstring: 6 %, 4.9 cycles, Σα 1.4, 95 % within 15
    (-1.0, 0.02, 3.0, 0.7, 8),       # the docstring: 0.8 %, 2.3 cycles, Σα 0.5, 95 % within 6
])
def test_the_stated_bound_for_a_harmful_policy(delta, p_full, cycles, exposure, p95):
    full, alive, total, q95 = simulate(delta)
    assert full <= p_full and alive <= cycles and total <= exposure and q95 <= p95


def test_a_helpful_policy_reaches_and_keeps_full_trust():
    full, alive, total, _ = simulate(1.0, runs=500)
    assert full >= 0.98 and total >= 90.0       # of 100 cycles
