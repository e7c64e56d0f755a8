"""The trust gate: grows only on a passed one-sided paired test, shrinks at once, 0 is exactly neutral and
final — and the bound its docstring states, measured on simulated paired differences."""

import numpy as np
import pytest

from fusedgate.brain.config import BrainConfig
from fusedgate.brain.safety import TrustGate


def gate():
    """The gate the unit tests below step by hand (the pre-2026-12 defaults: α₀ ½, shrink at t ≤ −½)."""
    return TrustGate(alpha_start=0.5, alpha_min=1 / 16, z_grow=1.0, z_shrink=0.5)


def default_gate():
    """The gate ``BrainConfig()``'s defaults make (the one the docstring's bound is stated for)."""
    return TrustGate.of(BrainConfig())


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


def simulate(delta, runs=2000, cycles=100, seed=0, make=None, probe=None):
    """Runs of the gate with s = 1 known, α read *during* each cycle (before its d is folded):
    (P(full trust), mean cycles at α > 0, mean exposure, 95th percentile of the cycles at α > 0).
    Without ``probe``: d ~ N(delta, 1) and exposure Σα (the docstring's bound). With it (the probe
    table): d ~ N(delta · the tested window's trust min(1, probe·α), 1) and exposure Σ (2α + that)/3."""
    rng = np.random.default_rng(seed)
    full, alive, exposure = 0, [], []
    for _ in range(runs):
        g = (make or default_gate)()
        seen, total = [], 0.0
        for _ in range(cycles):
            tested = None if probe is None else min(1.0, probe * g.alpha)
            seen.append(g.alpha)
            total += g.alpha if tested is None else (2 * g.alpha + tested) / 3
            effect = delta if tested is None else delta * tested
            g.after_cycle(effect + rng.standard_normal(), 1.0)
        full += 1.0 in seen
        alive.append(sum(a > 0 for a in seen))
        exposure.append(total)
    return full / runs, float(np.mean(alive)), float(np.mean(exposure)), float(np.percentile(alive, 95))


@pytest.mark.parametrize("delta, p_full, cycles, exposure, p95", [
    (-0.5, 0.005, 2.0, 0.25, 5),     # the docstring: 0 %, 1.8 cycles, Σα 0.23, 95 % within 5
    (-1.0, 0.001, 1.5, 0.16, 3),     # the docstring: 0 %, 1.2 cycles, Σα 0.16, 95 % within 3
])
def test_the_stated_bound_for_a_harmful_policy(delta, p_full, cycles, exposure, p95):
    full, alive, total, q95 = simulate(delta)
    assert full <= p_full and alive <= cycles and total <= exposure and q95 <= p95


def test_a_helpful_policy_reaches_full_trust_often():
    full, alive, total, _ = simulate(1.0, runs=500)
    assert full >= 0.65 and total >= 55.0       # of 100 cycles


def test_the_default_gate_is_the_configs():
    g = default_gate()
    config = BrainConfig()
    assert (g.alpha, g.alpha_min, g.z_grow, g.z_shrink, g.grow, g.shrink_pairs) == (
        config.alpha_start, config.alpha_min, config.z_grow, config.z_shrink, config.grow, config.shrink_pairs)


def test_shrink_pairs_makes_a_level_wait_for_that_many_pairs_before_it_shrinks():
    g = TrustGate(alpha_start=0.125, alpha_min=1 / 16, z_grow=1.0, z_shrink=0.0, shrink_pairs=2)
    assert g.after_cycle(-1.0, 1.0) == 1.0 and g.alpha == 0.125       # one negative pair: held
    assert g.after_cycle(-1.0, 1.0) == 0.25 and g.alpha == 0.0        # the second: ⅛·¼ < 1/16 → exactly neutral



@pytest.mark.parametrize("probe, delta, cycles, exposure", [(1, -1.0, 3.3, 0.46), (4, -1.0, 2.0, 0.5),
                                                            (8, -1.0, 1.4, 0.58), (8, -2.0, 1.1, 0.48)])
def test_the_probes_bound_for_a_harmful_policy(probe, delta, cycles, exposure):
    full, alive, total, _ = simulate(delta, runs=1000, probe=probe)
    assert full <= 0.005 and alive <= cycles and total <= exposure


@pytest.mark.parametrize("probe, delta, p_full", [(1, 2.0, (0.1, 0.3)), (4, 2.0, (0.7, 0.88)), (8, 2.0, (0.93, 1.0))])
def test_the_probe_lets_a_helpful_policy_through(probe, delta, p_full):
    full, _, _, _ = simulate(delta, runs=500, probe=probe)
    assert p_full[0] <= full <= p_full[1]
