"""fusedgate.brain.warmdown: the warmdown test's state machine, its bound in simulation, and the wrappers'
use of it (an ended brain wakes for the phase only; the base lr is raised only in the guarded partner windows)."""

import math
import re

import numpy as np
import pytest
import torch
from conftest import load_error, record_lrs, resumed_against_uninterrupted, sliding_mse, tiny_regression

from fusedgate import OptBrain
from fusedgate.brain.policy import BrainCore
from fusedgate.brain.warmdown import NO, OFF, ON, TEST, WAIT, WarmdownTest


def machine(fraction=0.3, scale=0.5, z=1.0, pairs=2, total=100, window=10, partner=1.5):
    return WarmdownTest(fraction, scale, z, pairs, total, window, partner)


def drive(wd, d_per_pair, s=1.0, seed=0):
    """Feed pairs whose window at f beats its partner by d (rewards d and 0); returns the scales."""
    rng = np.random.default_rng(seed)
    scales, j, reward = [], wd.first, 0.0
    pairs = iter(d_per_pair)
    while j * wd.window < wd.total:
        scale = wd.knobs_for(j, reward, s, rng)
        scales.append(scale)
        if wd.status == TEST and wd.pos == 1:
            d = next(pairs, 0.0)
        reward = d if scale == wd.scale else 0.0
        j += 1
    return scales


def test_off_without_a_fraction_or_a_known_length():
    assert machine(fraction=0.0).status == OFF and machine(total=0).status == OFF
    assert machine(fraction=0.0).knobs_for(9, 0.0, 1.0, np.random.default_rng(0)) is None


def test_the_phase_starts_at_the_last_fraction_and_listens_from_the_window_before():
    wd = machine(fraction=0.3, total=100, window=10)
    assert wd.first == 7 and wd.status == WAIT
    assert [wd.listening(j) for j in (5, 6, 7)] == [False, True, True]
    assert wd.knobs_for(6, 0.0, 1.0, np.random.default_rng(0)) is None      # before the phase: the learner's


def test_a_clear_win_commits_to_a_linear_warmdown_from_f():
    wd = machine(fraction=0.5, total=200, window=10, scale=0.5)
    scales = drive(wd, [5.0])
    assert wd.status == ON and wd.pairs == 1 and wd.commit == wd.first + 2
    assert sorted(scales[:2]) == [0.5, 1.5]                                    # one test window each way
    after = np.array(scales[2:])
    c, T, K = wd.commit, wd.total, wd.window
    want = 0.5 * np.maximum(0.01 / 0.5, (T - (np.arange(c, c + len(after)) + 0.5) * K) / (T - c * K))
    np.testing.assert_allclose(after, want)
    assert np.all(np.diff(after) < 0) and after.max() <= 0.5 and after.min() >= 0.01


@pytest.mark.parametrize("start", [8, 9, 12])   # 8: the commit lands exactly at window T/K
def test_a_commit_at_or_past_the_stated_length_gives_the_floor_not_an_error(start):
    wd = machine(fraction=0.3, total=100, window=10)        # the run goes on past total_steps = 100
    rng = np.random.default_rng(0)
    wd.knobs_for(start, 0.0, 1.0, rng)
    order = [int(r) for r in wd.order]
    rewards = {1: 5.0, 0: 0.0}
    wd.knobs_for(start + 1, rewards[order[0]], 1.0, rng)
    wd.knobs_for(start + 2, rewards[order[1]], 1.0, rng)
    assert wd.status == ON
    scales = [wd.knobs_for(j, 0.0, 1.0, rng) for j in range(start + 3, start + 8)]
    assert all(0.01 <= v <= 0.5 and math.isfinite(v) for v in scales) and scales[-1] == 0.01


@pytest.mark.parametrize("d, status, pairs", [([-0.1], NO, 1), ([0.5, -0.6], NO, 2), ([0.5, 0.2], NO, 2),
                                             ([0.5, 0.95], ON, 2)])
def test_a_loss_or_no_clear_win_within_the_pairs_rejects_for_good(d, status, pairs):
    wd = machine(fraction=0.5, total=200, window=10)
    scales = drive(wd, d)
    assert wd.status == status and wd.pairs == pairs
    if status == NO:
        assert set(scales[2 * pairs:]) == {1.0}                                # neutral to the end


def test_a_window_without_a_usable_loss_rejects():
    wd = machine(fraction=0.5, total=200, window=10)
    rng = np.random.default_rng(0)
    wd.knobs_for(wd.first, 0.0, 1.0, rng)
    wd.knobs_for(wd.first + 1, math.nan, 1.0, rng)
    assert wd.status == NO


@pytest.mark.parametrize("z, delta, lo, hi", [(1.0, 0.0, 0.15, 0.25), (1.0, -1.0, 0.0, 0.05), (1.0, 1.0, 0.6, 0.76),
                                              (1.64, 0.0, 0.04, 0.1), (1.64, -1.0, 0.0, 0.015), (1.64, 1.0, 0.4, 0.52)])
def test_the_commit_rate_is_within_the_bound(z, delta, lo, hi):
    """d ~ N(δ·s, s²), 2 pairs: a neutral warmdown commits with probability ≤ 2·P(N(0,1) ≥ z) (0.32 at z = 1,
    measured 0.20; 0.10 at the default z = 1.64, measured 0.07), a harmful one (δ = −1) with 0.03 and 0.006, a
    helpful one (δ = +1) with 0.68 and 0.46."""
    rng = np.random.default_rng(1)
    commits = 0
    for run in range(2000):
        wd = machine(fraction=0.5, total=200, window=10, z=z)
        drive(wd, rng.normal(delta, 1.0, size=4), seed=run)
        commits += wd.status == ON
    assert lo <= commits / 2000 <= hi


def test_the_core_hands_the_phase_to_the_warmdown_and_its_knobs_are_the_scale_alone():
    core = BrainCore(2, window=4, warmup_windows=1, seed=0, total_steps=80, warmdown=0.5, alpha_start=0.5)
    rng = np.random.default_rng(0)
    first = core.warmdown.first
    for j in range(1, 20):
        losses = np.exp(-0.01 * np.arange(4 * (j - 1), 4 * j)) * (1 + 0.01 * rng.standard_normal(4))
        knobs = core.end_window(losses, np.zeros((2, 7)))
        if j >= first:
            assert not core.sensing(j) and core.listening(j) == (core.warmdown.status in (TEST, ON))
            assert np.all(knobs[:, 1:] == (1.0, 0.0)) and np.all(knobs[:, 0] <= 1.5)
            assert np.all(knobs[:, 0] == knobs[0, 0])                      # one scale for every group
    assert core.warmdown.status in (ON, NO)


def run_ended_brain(loss_of_step, steps=80):
    """An ended brain (α = 0) on SGD at lr 0.1 over the tiny regression, fed ``loss_of_step(t, scale, loss)`` as
    step t's loss (scale: the lr factor step t runs at; loss: the batch's real loss): (brain, the lrs of the steps)."""
    model, x, y = tiny_regression()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    brain = OptBrain(base, window=4, alpha_start=0.0, alpha_min=0.0, total_steps=steps, warmdown=0.5, ladder=0)
    lrs = record_lrs(base)
    for t in range(steps):
        loss = sliding_mse(model, x, y, t)
        brain.zero_grad()
        loss.backward()
        brain.step(loss=torch.as_tensor(loss_of_step(t, float(brain.core.decisions[0, 0]), loss)))
    return brain, lrs


def test_an_ended_brain_wakes_for_the_phase_only_and_raises_the_lr_only_in_its_partner_windows(host_reads):
    seen = []

    def real_loss(t, scale, loss):
        seen.append((t, host_reads["n"]))
        return loss.detach()

    brain, lrs = run_ended_brain(real_loss)
    first = brain.core.warmdown.first                       # window 10 of 20: step 40
    assert dict(seen)[(first - 1) * 4] == 0                  # nothing read before the window before the phase
    assert host_reads["n"] > 0                               # and the phase's windows were read
    assert lrs[:first * 4] == [0.1] * (first * 4)
    above = [lr for lr in lrs if lr > 0.1]                   # the partner windows at 2 − f = 1.5
    assert len(above) <= brain.config.warmdown_pairs * 4 and all(lr == pytest.approx(0.15) for lr in above)
    assert brain.report()["warmdown"]["status"] in ("on", "rejected")
    assert brain.base.param_groups[0]["lr"] == 0.1          # restored after every step


def test_the_warmdown_state_survives_a_save_and_load_mid_test(tmp_path):
    def fresh():
        model, x, y = tiny_regression(3)
        return model, x, y, OptBrain(torch.optim.AdamW(model.parameters(), lr=3e-3), window=4, total_steps=64,
                                     warmdown=0.5, warmup_windows=1)

    def train(model, x, y, brain, steps):
        for t in steps:
            loss = sliding_mse(model, x, y, t)
            brain.zero_grad()
            loss.backward()
            brain.step(loss=loss.detach())

    # mid-phase: window 9 of 16, the phase from 8
    brain, _, resumed = resumed_against_uninterrupted(fresh, train, 36, 64, tmp_path)
    assert resumed.report()["warmdown"] == brain.report()["warmdown"]


@pytest.mark.parametrize("key, value, match", [("warmdown.status", 7, "warmdown.status=7 is out of range"),
                                               ("warmdown.pos", 3, "warmdown.pos=3 is out of range"),
                                               ("warmdown.rewards", [np.nan, 0.0], "'warmdown.rewards' is not finite"),
                                               ("warmdown.order", [1, 1], "expected the roles 0 and 1")])
def test_a_corrupt_warmdown_state_is_refused_in_one_line(tmp_path, key, value, match):
    model, _, _ = tiny_regression()
    brain = OptBrain(torch.optim.SGD(model.parameters(), lr=0.1), window=4, total_steps=40)
    assert re.search(match, load_error(brain, tmp_path, key, value))


def test_the_default_pair_keeps_the_base_lr_on_average_and_a_neutral_partner_is_the_earlier_design():
    config = OptBrain(torch.optim.SGD(tiny_regression()[0].parameters(), lr=0.1)).config
    assert (config.warmdown_scale + config.warmdown_partner) / 2 == 1.0
    for partner in (1.0, 1.5):
        wd = machine(fraction=0.5, total=200, window=10, partner=partner)
        assert sorted(drive(wd, [0.5, 0.2])[:4]) == [0.5, 0.5, partner, partner]


@pytest.mark.parametrize("blowup", [101.0, math.inf])
def test_a_partner_window_that_blows_up_rejects_the_warmdown_at_that_step(blowup):
    """Losses 1 everywhere except a jump to 101 (or inf) in the first partner window's second step: that step
    and every later one run at the base lr, and the test is rejected."""
    hit = []

    def loss(t, scale, _):
        if scale > 1.0 and not hit:
            hit.append(t)
        return blowup if hit and t == hit[0] + 1 else 1.0

    brain, lrs = run_ended_brain(loss)
    t = hit[0] + 1                                    # the step whose loss (before its update) blew up
    assert lrs[t - 1] == pytest.approx(0.15) and set(lrs[t:]) == {0.1}
    assert brain.report()["warmdown"]["status"] == "rejected" and brain.core.guard == math.inf


def test_a_partner_window_below_the_guard_runs_to_its_end():
    brain, lrs = run_ended_brain(lambda t, scale, _: 99.0 if scale > 1.0 else 1.0)   # below 100×: no divergence
    above = [i for i, lr in enumerate(lrs) if lr > 0.1]
    assert above and len(above) % 4 == 0                                    # whole windows at 1.5
