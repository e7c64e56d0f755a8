"""OptBrain numpy mode, the learner on simulated losses, and torch features vs the numpy reference."""

import math

import numpy as np
import pytest
import torch

from fusedgate import OptBrain
from fusedgate.brain import BrainError
from fusedgate.brain.features import NumpyFeatures, clip_ratio
from fusedgate.brain.policy import BrainCore, knobs_from_z, line_fit, window_progress, window_reward
from fusedgate.brain.torch_features import TorchFeatures


def simulate(rate, steps, window=5, seed=0, noise=0.002, loss0=5.0, **kwargs):
    """Numpy-mode loop on a synthetic loss whose per-step log-decrease is rate(scale of group 0)."""
    brain = OptBrain(None, n_groups=2, window=window, seed=seed, **kwargs)
    rng = np.random.default_rng(seed + 100)
    loss = loss0
    history = []
    for _ in range(steps):
        decisions = brain.get_decisions(loss)
        history.append(decisions[0])
        for g in range(2):
            brain.record_grads(g, rng.standard_normal(50) * loss, param_flat=rng.standard_normal(50))
        brain.finish_step()
        loss = loss * math.exp(-rate(decisions[0][0]) + noise * rng.standard_normal())
    brain.final_loss = loss
    return brain, np.array(history)


def test_decisions_are_exactly_neutral_until_warm_and_then_explore():
    brain, history = simulate(lambda s: 0.01, 40, window=5, warmup_windows=3)
    assert np.all(history[:15] == (1.0, 1.0, 0.0))
    windows = history[15:].reshape(-1, 5, 3)
    assert np.all(windows == windows[:, :1])          # held fixed over each window
    assert len({tuple(w[0]) for w in windows}) >= 2   # and explored between windows


def test_the_brain_learns_to_raise_a_scale_that_helps():
    # progress per step peaks at scale 3 for group 0; group 1's knobs do nothing. The learner under a
    # permissive gate (α₀ ½, shrink only at t ≤ −½): it finds the scale and earns full trust
    rate = lambda s: 0.01 * math.exp(-((math.log(s) - math.log(3.0)) ** 2))
    brain, history = simulate(rate, 3000, window=5, alpha_start=0.5, z_shrink=0.5)
    assert np.log(history[-1000:, 0]).mean() > 0.3   # late windows (controls included) run at scale > 1.35
    report = brain.report()
    assert report["mean_advantage_vs_neutral"] > 0.2  # measured: its windows beat the neutral ones
    assert report["alpha"] == 1.0


def test_under_the_default_gate_a_helpful_scale_is_kept_or_the_run_is_exactly_neutral():
    """The default gate (α₀ ⅛, any negative level ends the policy) keeps the same helpful policy on some
    seeds and ends it on others (an unlucky first pair at α = ⅛): never anything in between."""
    rate = lambda s: 0.01 * math.exp(-((math.log(s) - math.log(3.0)) ** 2))
    kept = 0
    for seed in range(6):
        brain, history = simulate(rate, 3000, window=5, seed=seed)
        if brain.report()["alpha"] == 1.0:
            kept += 1
            assert np.log(history[-1000:, 0]).mean() > 0.3
        else:
            assert brain.report()["alpha"] == 0.0 and np.all(history[-1000:] == (1.0, 1.0, 0.0))
    assert kept >= 2


def drive_core(windows=300, seed=0, **knobs):
    """BrainCore on a synthetic loss where any scale but 1 slows progress, while its overshoot feature
    insists on a larger lr (o = −0.5): the policy mean itself is wrong, only the trust gate can tell."""
    core = BrainCore(1, window=5, warmup_windows=1, seed=seed, **knobs)
    feats = np.zeros((1, 7))
    feats[0, 5] = -0.5
    rng = np.random.default_rng(seed + 100)
    loss, scales = 5.0, []
    for _ in range(windows):
        s = core.decisions[0, 0]
        scales.append(s)
        losses = []
        for _ in range(5):
            losses.append(loss)
            loss *= math.exp(-0.01 * math.exp(-4.0 * math.log(s) ** 2) + 0.002 * rng.standard_normal())
        core.end_window(np.array(losses), feats)
    return core, np.array(scales), loss


def test_the_gate_returns_to_neutral_when_the_policy_hurts():
    guarded, scales, loss = drive_core()
    report = guarded.report()
    assert report["mean_advantage_vs_neutral"] < 0.0            # its mean windows measured worse than neutral
    assert report["shrinks"] >= 1 and report["alpha"] == 0.0     # ...so it went back to exactly neutral
    assert np.all(scales[-100:] == 1.0)                          # and stayed there
    pinned, free_scales, free_loss = drive_core(alpha_start=1.0, z_shrink=10.0)   # α held at 1
    assert pinned.alpha == 1.0
    assert np.abs(np.log(scales[-100:])).mean() < 0.5 * np.abs(np.log(free_scales[-100:])).mean()
    assert loss < free_loss


def test_nonfinite_losses_are_skipped_and_counted():
    core = BrainCore(1, window=4, warmup_windows=1)
    core.end_window(np.array([3.0, 2.9, 2.8, 2.7]), np.zeros((1, 7)))
    core.end_window(np.array([2.6, np.nan, 2.5, np.inf]), np.zeros((1, 7)))
    assert core.n_skipped == 2 and core.n_bad_windows == 0 and core.alpha == core.config.alpha_start   # unchanged
    assert np.all(np.isfinite(core.decisions))


def test_a_bad_brain_window_cuts_the_trust_at_once():
    core = BrainCore(1, window=4, warmup_windows=1, seed=1, alpha_start=0.5)
    core.end_window(np.array([3.0, 2.9, 2.8, 2.7]), np.zeros((1, 7)))
    core.b[:] = 0.5                                   # a policy away from neutral: its windows are brain windows
    while int(core.cycle_order[core.cycle_pos]) == 0:  # skip to the cycle's next non-neutral window
        core.end_window(np.array([2.6, 2.5, 2.4, 2.3]), np.zeros((1, 7)))
    core.end_window(np.full(4, np.nan), np.zeros((1, 7)))   # no usable loss at all
    assert core.n_bad_windows == 1 and core.alpha == 0.5 * 0.25 and core.gate.n_shrinks == 1


@pytest.mark.parametrize("probe, alpha_start, want", [(1.0, 0.125, 0.125), (4.0, 0.125, 0.5), (16.0, 0.125, 1.0)])
def test_the_tested_window_runs_at_the_probe_trust_and_the_exploration_windows_at_alpha(probe, alpha_start, want):
    core = BrainCore(1, window=4, warmup_windows=1, seed=2, probe=probe, alpha_start=alpha_start, hypergrad=0.0)
    core.end_window(np.array([3.0, 2.9, 2.8, 2.7]), np.zeros((1, 7)))
    core.b[:] = 0.8
    core.mu[:] = 0.8                                   # the cycle's proposal, as _start_cycle set it
    seen = {}
    for _ in range(4):
        core._set_decision()
        seen[int(core.cycle_order[core.cycle_pos])] = core.z.copy()
        core.cycle_pos = (core.cycle_pos + 1) % 4
    assert core.probe_alpha == want
    np.testing.assert_allclose(seen[2], want * 0.8)                      # the policy mean: min(1, probe·α)·μ
    np.testing.assert_allclose(seen[1] + seen[-1], 2 * alpha_start * 0.8)   # ± ε around α·μ
    np.testing.assert_array_equal(seen[0], 0.0)                           # the control: exactly neutral
    core.gate.alpha = 0.0
    assert core.probe_alpha == 0.0                                        # α = 0 stays final at any probe


@pytest.mark.parametrize("probe, probe_up", [(1.0, 1.0), (1.0, 4.0), (2.0, 8.0), (4.0, 2.0)])
def test_the_up_probe_raises_only_a_scale_that_raises_the_lr(probe, probe_up):
    core = BrainCore(2, window=4, warmup_windows=1, seed=2, probe=probe, probe_up=probe_up, hypergrad=0.0)
    core.end_window(np.array([3.0, 2.9, 2.8, 2.7]), np.zeros((2, 7)))
    core.mu[:] = [[0.8, -0.5, 0.3], [-0.8, 0.5, 0.3]]      # group 0 raises the lr, group 1 lowers it
    alpha = core.alpha
    z = core._tested()
    up, both = min(1.0, max(probe, probe_up) * alpha), min(1.0, probe * alpha)
    np.testing.assert_allclose(z[0], [up * 0.8, both * -0.5, both * 0.3])
    np.testing.assert_allclose(z[1], both * np.array([-0.8, 0.5, 0.3]))
    core.gate.alpha = 0.0
    np.testing.assert_array_equal(core._tested(), 0.0)     # α = 0 stays final


def test_a_proposal_beyond_the_knob_ranges_is_clamped_before_the_trust_scales_it():
    core = BrainCore(1, window=4, warmup_windows=1, seed=2, hypergrad=0.0)
    core.end_window(np.array([3.0, 2.9, 2.8, 2.7]), np.zeros((1, 7)))
    core.b[:] = [100.0, -100.0, 100.0]                  # far past every range (ES steps do not clip b)
    core.mu = core._proposal()
    for pos in range(4):
        core.cycle_pos = pos
        core._set_decision()
        scale, clip, dampen = core.decisions[0]
        a = core.alpha
        assert 0.01 ** a - 1e-12 <= scale <= 10 ** a + 1e-12 and 0.1 ** a - 1e-12 <= clip <= 5 ** a + 1e-12
        assert 0.0 <= dampen <= a


def test_knob_mapping_and_progress():
    knobs = knobs_from_z(np.array([[0.0, 0.0, 0.0], [50.0, 50.0, 5.0], [-50.0, -50.0, -1.0]]))
    np.testing.assert_array_equal(knobs[0], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(knobs[1], [10.0, 5.0, 1.0])
    np.testing.assert_allclose(knobs[2], [0.01, 0.1, 0.0])
    losses = 2.0 * np.exp(-0.1 * np.arange(6))        # log-loss falls 0.1 per step
    progress, noise = window_progress(losses)
    assert progress == pytest.approx(0.6) and noise == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(window_progress(np.array([1.0, np.inf, 1.0]))[0])
    assert clip_ratio(0.5) == 1.0 and clip_ratio(1.0) == math.inf and clip_ratio(0.1) == pytest.approx(1 / 9)


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_line_fit_and_the_window_statistics_match_numpys_least_squares(n):
    rng = np.random.default_rng(n)
    y = rng.standard_normal(n).tolist()
    mean, slope, rms = line_fit(y)
    assert mean == pytest.approx(np.mean(y), rel=1e-12, abs=1e-15)
    if n < 2:
        assert slope == rms == 0.0
        return
    fit_slope, intercept = np.polyfit(np.arange(n), y, 1)
    resid = np.array(y) - (fit_slope * np.arange(n) + intercept)
    assert slope == pytest.approx(fit_slope, rel=1e-9, abs=1e-12)
    assert rms == pytest.approx(math.sqrt(np.mean(resid ** 2)), rel=1e-9, abs=1e-12)
    losses = np.exp(np.array(y))
    progress, noise = window_progress(losses)
    assert progress == pytest.approx(-fit_slope * n, rel=1e-9, abs=1e-12) and noise == pytest.approx(rms)
    late = np.log(losses[n // 2:])
    late_slope = np.polyfit(np.arange(late.size), late, 1)[0] if late.size > 1 else 0.0
    reward, level = window_reward(losses, 0.25, 7.0)
    assert level == pytest.approx(late.mean()) and reward == pytest.approx(-(late.mean() - 0.25) - 7.0 * late_slope)
    assert math.isnan(window_reward(np.append(losses, 0.0), 0.25, 7.0)[0])   # a loss ≤ 0: no reward


def test_numpy_mode_api_and_errors():
    brain = OptBrain(None, n_groups=2, window=3)
    with pytest.raises(BrainError, match="get_decisions"):
        brain.finish_step()
    assert brain.get_decisions(np.float32(1.5)) == {0: (1.0, 1.0, 0.0), 1: (1.0, 1.0, 0.0)}
    with pytest.raises(BrainError, match="group 2"):
        brain.record_grads(2, np.ones(3))
    with pytest.raises(BrainError, match="empty"):
        brain.record_grads(0, np.ones(0))
    brain.record_grads(0, np.ones(4), param_flat=np.ones(4))
    with pytest.raises(BrainError, match="had 4 elements"):
        brain.record_grads(0, np.ones(5))
    with pytest.raises(BrainError, match="param has 3"):
        brain.record_grads(1, np.ones(4), param_flat=np.ones(3))
    with pytest.raises(BrainError, match="a number"):
        brain.get_decisions("x")
    with pytest.raises(BrainError, match="numpy mode"):
        brain.step(loss=1.0)
    with pytest.raises(BrainError, match="numpy mode"):
        _ = brain.param_groups
    with pytest.raises(BrainError, match="n_groups"):
        OptBrain(None)
    with pytest.raises(BrainError, match="n_groups"):
        OptBrain(None, n_groups=0)
    assert brain.clip_threshold(0) == math.inf        # neutral clip: no threshold
    assert not brain.needs_grads                      # step 0 of 3, clip off: grads are not read
    assert math.isnan(brain.features.running_norm(0))  # ... so nothing was measured
    brain.freeze({0: (1.0, 0.5, 0.0)})
    assert brain.needs_grads                          # clip on: the norm is measured every step
    brain.record_grads(0, np.ones(4))
    assert brain.clip_threshold(0) == pytest.approx(2.0)   # running norm of ‖ones(4)‖ = 2, ratio 1


@pytest.mark.parametrize("on_host", [True, False], ids=["host-path", "device-path"])
def test_torch_features_match_the_numpy_reference(on_host):
    """Both torch paths (the CPU's numpy arithmetic and the device's kernels, here on the CPU) against numpy."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    groups = [list(model[0].parameters()), list(model[2].parameters())]
    ts = TorchFeatures(groups, window=4, sketch_size=16, seed=5)
    assert ts.on_host                                  # float32 on the CPU
    ts.on_host = on_host
    ns = NumpyFeatures(2, sketch_size=16, seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    for step in range(12):
        loss = ((model(x[step:step + 8]) - y[step:step + 8]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        sense = step % 4 == 3
        clipping = {4: (0, 1), 5: (0, 1), 8: (1,), 9: (1,)}.get(step, ())   # the groups whose clip is "on"
        ts.record_loss(step % 4, loss.detach())
        if sense:
            ts.sense()
        if clipping:
            ts.grad_norms(clipping)
        ts.end_step()
        for g, params in enumerate(groups):
            flat = lambda ts_: torch.cat([t.detach().reshape(-1) for t in ts_]).double().numpy()
            ns.record(g, flat([p.grad for p in params]), flat(params), sense=sense, measure_norm=g in clipping)
        opt.step()
        if step % 4 == 3:
            losses, tf = ts.read_window()
            nf = ns.read_window()
            np.testing.assert_allclose(tf, nf, rtol=2e-4, atol=2e-5)
            assert losses[-1] == pytest.approx(loss.item())
            assert (np.all(np.abs(nf[:, 2]) > 0)) == (step >= 7)   # alignment: one window apart
    np.testing.assert_allclose(ts.running_norm().numpy(), [ns.running_norm(0), ns.running_norm(1)], rtol=1e-5)
    assert ts.norm_count.tolist() == ns.norm_count.tolist() == [5, 7]   # 3 sensed steps + the clipping ones


def test_an_ended_numpy_brain_asks_for_no_gradients():
    brain = OptBrain(None, n_groups=2, window=3, warmup_windows=1)
    rng = np.random.default_rng(0)
    for t in range(30):
        brain.get_decisions(float("nan") if 3 <= t < 6 else 1.0 / (t + 1))   # a bad first brain window
        if brain.needs_grads:
            for g in range(2):
                brain.record_grads(g, rng.standard_normal(20))
        brain.finish_step()
        if t >= 5:
            assert brain.core.ended and not brain.needs_grads   # α = 0: nothing more to sense
    assert brain.report()["windows"] == 2 and brain.report()["steps"] == 30
