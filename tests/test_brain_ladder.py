"""fusedgate.brain.ladder: the lr ladder's state machine, its bound in simulation, the core's level ℓ under
every later window, and the wrappers' use of it (the base lr times ℓ, restored after each step)."""

import math
import re

import numpy as np
import pytest
import torch
from conftest import load_error, record_lrs, resumed_against_uninterrupted, sliding_mse, tiny_regression

from fusedgate import OptBrain
from fusedgate.brain.ladder import DONE, TEST, LadderTest
from fusedgate.brain.policy import BrainCore


def drive(ladder, d_per_pair, s=1.0, seed=0, windows=40):
    """Feed pairs whose larger-lr window beats the other by d (rewards d and 0); returns the scales over ℓ."""
    rng = np.random.default_rng(seed)
    scales, reward, d = [], 0.0, 0.0
    pairs = iter(d_per_pair)
    for _ in range(windows):
        scale = ladder.knobs_for(reward, s, rng)
        if scale is None:
            break
        scales.append(scale)
        if ladder.pos == 1:
            d = next(pairs, 0.0)
        reward = d if scale != 1.0 else 0.0
    return scales


def test_off_by_default_and_on_with_rungs_as_evaluated():
    assert BrainCore(2).ladder.status == DONE and BrainCore(2).ladder.level == 1.0
    ladder = BrainCore(2, ladder=2).ladder
    assert (ladder.status, ladder.max_rungs, ladder.step, ladder.z, ladder.align) == (TEST, 2, 2.0, 1.0, 0.5)
    assert LadderTest(0, 2.0, 1.64, 2).knobs_for(0.0, 1.0, np.random.default_rng(0)) is None


def test_clear_wins_climb_every_rung_and_stop_at_the_last():
    ladder = LadderTest(3, 2.0, 1.64, 2)
    scales = drive(ladder, [5.0] * 10)
    assert ladder.status == DONE and ladder.rungs == 3 and ladder.level == 8.0
    assert len(scales) == 6 and all(sorted(scales[i:i + 2]) == [1.0, 2.0] for i in (0, 2, 4))


@pytest.mark.parametrize("d, rungs, pairs", [([-0.1], 0, 1), ([0.5, -0.6], 0, 2), ([0.5, 0.2], 0, 2),
                                             ([0.5, 2.0, -1.0], 1, 1), ([3.0, 0.1, 0.1], 1, 2)])
def test_a_loss_or_no_clear_win_within_the_pairs_stops_at_the_level_reached(d, rungs, pairs):
    ladder = LadderTest(3, 2.0, 1.64, 2)
    drive(ladder, d)
    assert ladder.status == DONE and ladder.rungs == rungs and ladder.level == 2.0 ** rungs
    assert ladder.pairs == pairs


def test_a_rung_starts_only_while_the_gradients_persist():
    rng = np.random.default_rng(0)
    assert LadderTest(2, 2.0, 1.64, 2, align=0.5).knobs_for(0.0, 1.0, rng, alignment=0.4) is None
    ladder = LadderTest(3, 2.0, 1.64, 2, align=0.5)
    reward, alignments = 0.0, iter([0.9, 0.9, 0.2])          # at each window's start; a rung checks at its first
    for _ in range(8):
        scale = ladder.knobs_for(reward, 1.0, rng, alignment=next(alignments, 0.9))
        if scale is None:
            break
        reward = 5.0 if scale != 1.0 else 0.0
    assert ladder.status == DONE and ladder.rungs == 1 and ladder.level == 2.0   # rung 2 found 0.2 < 0.5


def drive_aligned(ladder, start, at_level, at_up, windows=12):
    """Clear wins (the larger-lr window's reward 5, the other's 0) with the gradients' alignment read
    ``start`` before the first window and, across each window, ``at_level`` or ``at_up`` by its scale."""
    rng = np.random.default_rng(0)
    reward, alignment = 0.0, start
    for _ in range(windows):
        scale = ladder.knobs_for(reward, 1.0, rng, alignment=alignment)
        if scale is None:
            break
        reward, alignment = (5.0, at_up) if scale != 1.0 else (0.0, at_level)
    return ladder


@pytest.mark.parametrize("start, at_level, at_up, rungs", [
    (0.9, 0.9, -0.9, 1),    # the readings across the larger-lr windows do not count
    (0.9, 0.2, 0.9, 1),     # mean at ℓ (0.9 + 0.2) / 2 = 0.55 ≥ 0.5; ...
    (0.6, 0.3, 0.9, 0),     # ... (0.6 + 0.3) / 2 = 0.45 < 0.5: stopped before the verdict, a clear win
    (0.9, math.nan, 0.9, 0),  # a reading that cannot be taken stops it
])
def test_a_rung_climbs_only_while_its_windows_at_the_level_keep_the_gradients_aligned(start, at_level, at_up,
                                                                                     rungs):
    ladder = drive_aligned(LadderTest(1, 2.0, 1.0, 2, align=0.5), start, at_level, at_up)
    assert ladder.status == DONE and ladder.rungs == rungs and ladder.level == 2.0 ** rungs
    assert math.isfinite(ladder.align_sum) and abs(ladder.align_sum) <= ladder.align_n   # a state load accepts


def test_the_alignment_readings_restart_with_each_rung():
    """Rung 1 starts on the reading across rung 0's last window (0.5, at its new ℓ) and its mean counts
    only its own readings, (0.5 + 0.3) / 2 = 0.4 < 0.5: it stops there. Had rung 0's readings (1.0, 0.5)
    been kept, the mean would be 0.575 and it would climb."""
    ladder = LadderTest(2, 2.0, 1.0, 2, align=0.5)
    rng = np.random.default_rng(0)
    reward, alignment = 0.0, 1.0
    for _ in range(12):
        scale = ladder.knobs_for(reward, 1.0, rng, alignment=alignment)
        if scale is None:
            break
        reward = 5.0 if scale != 1.0 else 0.0
        alignment = 0.5 if ladder.rungs == 0 else (0.3 if scale == 1.0 else 0.9)
    assert ladder.status == DONE and ladder.rungs == 1 and ladder.align_n == 2
    assert ladder.align_sum == pytest.approx(0.8)


def test_after_a_single_warm_up_window_the_ladder_stops_at_once():
    """The first alignment is measured in the second window; with one warm-up window the first rung finds
    none (0 < a) and the main learner starts right there, as it would without a ladder."""
    with_ladder, without = BrainCore(2, warmup_windows=1, seed=4, ladder=2), BrainCore(2, warmup_windows=1, seed=4)
    rng = np.random.default_rng(0)
    for j in range(12):
        losses = np.exp(-0.01 * np.arange(10 * j, 10 * j + 10)) * (1 + 0.01 * rng.standard_normal(10))
        np.testing.assert_array_equal(with_ladder.end_window(losses, np.zeros((2, 7))),
                                      without.end_window(losses, np.zeros((2, 7))))
    assert with_ladder.ladder.status == DONE and with_ladder.ladder.level == 1.0


def test_the_warmdown_phase_ends_an_unfinished_ladder():
    core = BrainCore(1, window=4, warmup_windows=2, ladder=3, ladder_align=-1.0, ladder_pairs=100, ladder_z=10.0,
                     total_steps=32, warmdown=0.5)
    for _ in range(3):                              # flat losses: the ladder never decides by itself
        core.end_window(np.ones(4), np.zeros((1, 7)))
    assert core.ladder.testing and core.warmdown.first == 4
    core.end_window(np.ones(4), np.zeros((1, 7)))   # window 4 is the phase's first
    assert core.ladder.status == DONE and core.ladder.level == 1.0 and core.decisions[0, 0] in (0.5, 1.0)


def test_a_window_without_a_usable_loss_stops_the_ladder():
    ladder = LadderTest(2, 2.0, 1.64, 2)
    rng = np.random.default_rng(0)
    ladder.knobs_for(0.0, 1.0, rng)
    assert ladder.knobs_for(math.nan, 1.0, rng) is None and ladder.status == DONE and ladder.level == 1.0


@pytest.mark.parametrize("z, delta, lo, hi", [(1.0, 0.0, 0.15, 0.25), (1.0, -1.0, 0.0, 0.05), (1.0, 1.0, 0.6, 0.76),
                                              (1.64, 0.0, 0.04, 0.1), (1.64, -1.0, 0.0, 0.015), (1.64, 1.0, 0.4, 0.52)])
def test_the_first_rung_climbs_within_the_bound(z, delta, lo, hi):
    """d ~ N(δ·s, s²), 2 pairs: a larger lr that does not help climbs with probability ≤ 2·P(N ≥ z) (0.32 at
    z = 1, measured 0.20; 0.10 at z = 1.64, measured 0.07), a harmful one (δ = −1) with 0.03 and 0.006, a
    helpful one (δ = +1) with 0.68 and 0.46 — the warmdown test's rates, for the same sequential test."""
    rng = np.random.default_rng(1)
    climbs = 0
    for run in range(2000):
        ladder = LadderTest(1, 2.0, z, 2)
        drive(ladder, rng.normal(delta, 1.0, size=2), seed=run)
        climbs += ladder.rungs
    assert lo <= climbs / 2000 <= hi


def declining(j, scale, rng, window=4):
    """A window of losses that fall faster at a larger lr (so a rung is a clear win), with 1 % noise."""
    t = np.arange(window * j, window * (j + 1))
    return np.exp(-0.02 * scale * t) * (1 + 0.01 * rng.standard_normal(window))


def test_the_level_multiplies_every_later_window_the_neutral_control_and_the_warmdown():
    core = BrainCore(2, window=4, warmup_windows=2, seed=0, ladder=2, total_steps=120, warmdown=0.25)
    rng = np.random.default_rng(0)
    aligned = np.zeros((2, 7))
    aligned[:, 2] = 0.9                  # the gradients persist: every rung may start
    seen = []
    for j in range(30):
        scale = float(core.decisions[0, 0])
        seen.append((j, core.ladder.status, scale, int(core.cycle_order[min(core.cycle_pos, 3)])))
        core.end_window(declining(j, scale, rng), aligned)
    assert core.ladder.level == 4.0 and core.ladder.status == DONE
    after = [(j, s, role) for j, status, s, role in seen if status == DONE and j < core.warmdown.first]
    assert after and all(s >= 4.0 * 0.5 for _, s, _ in after)            # α·μ: within [0.56, 1.33]·ℓ at α = ⅛
    controls = [s for j, s, role in after if role == 0 and core.alpha > 0]
    assert all(s == 4.0 for s in controls)
    warm = [s for j, status, s, _ in seen if j >= core.warmdown.first]
    partners = [s for s in warm if s > 4.0]                              # the warmdown scales from ℓ: its
    assert warm and all(s == 4.0 * core.config.warmdown_partner for s in partners)   # partner windows at 1.5ℓ
    assert len(partners) <= core.config.warmdown_pairs


def test_an_ended_brain_runs_the_ladder_alone_then_steps_at_the_level_without_reads(host_reads):
    model, x, y = tiny_regression()
    base = torch.optim.SGD(model.parameters(), lr=0.01)
    brain = OptBrain(base, window=4, warmup_windows=2, ladder=2, alpha_start=0.0, alpha_min=0.0, warmdown=0.0)
    reads, lrs = [], record_lrs(base)
    for _ in range(60):                  # full-batch losses: no batch noise, lr 0.01 far too small
        reads.append(host_reads["n"])
        loss = ((model(x) - y) ** 2).mean()
        brain.zero_grad()
        loss.backward()
        brain.step(loss=loss.detach())
        assert base.param_groups[0]["lr"] == 0.01                        # restored after every step
    ladder = brain.core.ladder
    assert ladder.status == DONE and ladder.rungs == 2
    assert set(lrs[:4]) == {0.01} and lrs[-8:] == pytest.approx([0.01 * ladder.level] * 8)
    assert reads[-8] == reads[-1] and not brain.learning                 # done and ended: no more reads


def test_the_ladder_state_survives_a_save_and_load_mid_test(tmp_path):
    def fresh():
        model, x, y = tiny_regression(3)
        return model, x, y, OptBrain(torch.optim.SGD(model.parameters(), lr=0.01), window=4, warmup_windows=2,
                                     ladder=3, total_steps=64)

    def train(model, x, y, brain, steps):
        for _ in steps:                  # full-batch losses: every rung a clear win, so the ladder climbs
            loss = ((model(x) - y) ** 2).mean()
            brain.zero_grad()
            loss.backward()
            brain.step(loss=loss.detach())

    # saved in window 3: the first rung's pair
    brain, saved, resumed = resumed_against_uninterrupted(fresh, train, 14, 64, tmp_path)
    assert saved.core.ladder.status == TEST and resumed.report()["ladder"] == brain.report()["ladder"]


@pytest.mark.parametrize("key, value, match", [("ladder.status", 5, "ladder.status=5 is out of range"),
                                               ("ladder.rungs", 3, "ladder.rungs=3 is out of range"),
                                               ("ladder.level", 3.0, "ladder.level=3.0 is not ladder_step"),
                                               ("ladder.rewards", [np.nan, 0.0], "'ladder.rewards' is not finite"),
                                               ("ladder.order", [1, 1], "expected the roles 0 and 1"),
                                               ("ladder.align_n", -1, "ladder.align_n=-1 is out of range"),
                                               ("ladder.align_sum", 5.0, "ladder.align_sum=5.0 is out of range")])
def test_a_corrupt_ladder_state_is_refused_in_one_line(tmp_path, key, value, match):
    model, _, _ = tiny_regression()
    brain = OptBrain(torch.optim.SGD(model.parameters(), lr=0.1), window=4, ladder=2)
    assert re.search(match, load_error(brain, tmp_path, key, value))


def test_a_blow_up_in_a_larger_lr_window_stops_the_ladder_at_that_step():
    core = BrainCore(1, window=4, warmup_windows=2, ladder=2, ladder_align=-1.0, seed=3)
    flat = np.ones(4)
    while core.guard == math.inf:                # flat losses until a window at ℓ·u is due
        core.end_window(flat, np.zeros((1, 7)))
        assert core.ladder.status == TEST
    assert core.decisions[0, 0] == 2.0 and core.guard == pytest.approx(2.0)   # twice the level before it
    assert not core.guarded_step(1.9) and core.decisions[0, 0] == 2.0
    assert core.guarded_step(2.1)
    assert core.ladder.status == DONE and core.decisions[0, 0] == 1.0 and core.guard == math.inf
    core.end_window(flat, np.zeros((1, 7)))      # the main learner takes over with a fresh cycle
    assert core.guard == math.inf and core.cycle_pos == 0


@pytest.mark.parametrize("mode", ["torch", "numpy"])
def test_the_wrappers_apply_a_stop_to_the_step_whose_loss_blew_up(mode):
    model, x, y = tiny_regression()
    base = torch.optim.SGD(model.parameters(), lr=0.01)
    kw = dict(window=4, warmup_windows=2, ladder=2, ladder_align=-1.0, seed=3)
    brain = OptBrain(base, **kw) if mode == "torch" else OptBrain(None, n_groups=1, **kw)
    lrs = record_lrs(base)
    scales = []
    for t in range(40):
        up = brain.core.guard < math.inf
        loss = 100.0 if up else 1.0              # the first step of the first window at ℓ·u blows up
        if mode == "torch":
            brain.zero_grad()
            sliding_mse(model, x, y, t).backward()
            brain.step(loss=loss)
        else:
            scales.append(brain.get_decisions(loss)[0][0])
            brain.finish_step()
        if up:
            break
    assert up and brain.core.ladder.status == DONE and brain.core.ladder.level == 1.0
    assert (lrs if mode == "torch" else scales)[-1] == pytest.approx(0.01 if mode == "torch" else 1.0)
