"""The warmdown test: OptBrain's end-of-run annealing, taken only when a paired test says it helps.

A constant lr leaves a run at its noise floor; lowering the lr over the last part of the run (a
warmdown) usually lowers the final loss a lot, and sometimes — where the lr is already too small —
raises it. The main learner cannot find this: its gate has ended the policy long before the end in
almost every run (``fusedgate.brain.safety``), and a window-level test is biased towards a smaller lr
(the short-horizon bias) — except at the end of the run, where the level a window reaches *is* what
the run is judged by. So the warmdown is a test of its own, over the last ``fraction`` L of a run of
known length T (``BrainConfig.warmdown``; 0, or an unknown T, turns it off), in windows of K steps:

    phase   the windows from j₀ = ⌊(1−L)·T/K⌋ on; the main learner's knobs end there (z = 0)
    test    pairs of windows in a random order, one at scale f (``warmdown_scale``) and its partner at
            scale p (``warmdown_partner``; the default p = 2 − f = 1.5 makes the pair's mean lr the base's);
            per pair d = R_f − R_p (the windows' rewards, ``policy.window_reward``), and after n pairs
            t = Σd / (s·√n), s = max(the main gate's RMS of d, the windows' own pair noise)
    guard   in a partner window above the lr (p > 1) the wrapper reads every step's loss; one above 100×
            the largest loss of the window before (``policy.PARTNER_BLOWUP``: a divergence, not the noise
            of a larger lr) or not finite rejects the warmdown from that step on (``BrainCore.guarded_step``)
    commit  t ≥ z (``warmdown_z``): from the next window c on, scale_j = f·(T − (j+½)K)/(T − cK), at least
            0.01 — a linear warmdown from f to ≈ 0 at T
    reject  Σd < 0, or no commit after ``warmdown_pairs`` pairs: neutral (scale 1) to the end

A run that goes on past T after a commit stays at the floor scale 0.01: ``total_steps`` must be the run's length.

**Why the partner is above the lr.** Against a neutral partner (p = 1, the design before) a rejected test
still costs its windows at f: where the lr is already too small every step at f is progress lost for good
(regression/SGD at the tuned lr, seeds 10–29: brain/base 1.028 with the test rejected on 19 of 20 seeds,
0.998 with no warmdown at all). With p = 2 − f the pair's windows together make the base's progress to
first order in the lr (a step's progress along a slow direction is proportional to the lr), so a rejected
test costs only the second-order effect of the pair, and d compares f with 2 − f: twice the lever arm,
for the same noise. Measured on the tuning family's seeds 10–29 (``bench/results/brain_tuning/``, tenth
sweep), p = 1.5 against p = 1 lowers the geomean brain/base on every one of the 18 task × optimizer × lr
cells it was run on but one (regression/SGD at 3× the lr, a rescue both ways: ×0.032 against ×0.023).

Defaults: L = ¼, f = ½, p = 2 − f, z = 1.64, 2 pairs (chosen on the tuning family: ``bench/results/brain_tuning/``).

**The bound.** Outside its test the phase only ever *lowers* the lr (every scale is 1 or ≤ f ≤ 1). While
testing, at most ``warmdown_pairs`` windows run at f and as many at p ≤ 2 — the ones at p guarded: a
diverging loss ends the window at once and the run goes on at the base lr. A pair
that sums below zero rejects at once. A false commit — a warmdown that does not lower the windows'
level, taken anyway — needs t ≥ z on one of at most ``warmdown_pairs`` looks, probability ≤
``warmdown_pairs``·P(N(0,1) ≥ z) ≈ 0.10 for the defaults (2 pairs, z = 1.64) when the warmdown is
neutral. Simulated (``tests/test_brain_warmdown.py``, d drawn N(δ·s, s²), 2000 runs, 2 pairs): at
z = 1.64 it commits in 7 % of the runs at δ = 0, 0.6 % at δ = −1 (harmful by one noise scale per pair)
and 46 % at δ = +1 (90 % at δ = +2); at z = 1: 20 %, 3 % and 68 %.
What the test does not see: a lower level now that costs later — the reason it runs only at the end,
where "later" is at most L·T steps away — and the cost of its test windows on a chaotic run, where any
change of the lr moves the final loss (``brain-eval``'s ``nudge`` scenario measures that floor).
"""

from __future__ import annotations

import math

import numpy as np

OFF, WAIT, TEST, ON, NO = range(5)      # no phase; before it; testing; committed; rejected
STATUS = ("off", "waiting", "testing", "on", "rejected")
LOWEST = 0.01                            # the scale knob's floor (policy.SCALE_RANGE)


def sequential_verdict(sum_d: float, pairs: int, s: float, z: float, max_pairs: int) -> bool | None:
    """The one-sided paired test the warmdown and the lr ladder (``fusedgate.brain.ladder``) share: after
    ``pairs`` pairs whose differences sum to Σd, t = Σd / (s·√n). False (fail) on Σd < 0, or t < z after
    ``max_pairs`` pairs; True (pass) on t ≥ z; None: another pair."""
    t = sum_d / (max(s, 1e-12) * math.sqrt(pairs))
    if sum_d < 0.0 or (t < z and pairs >= max_pairs):
        return False
    return True if t >= z else None


class WarmdownTest:
    """The state machine above. ``knobs_for(j, reward, s)`` once per window, for the window j about to
    start (``reward``: that of window j − 1); returns the scale of window j, or ``None`` before the
    phase (the main learner decides)."""

    ARRAYS = ("status", "first", "commit", "pairs", "sum_d", "order", "pos", "rewards")

    def __init__(self, fraction: float, scale: float, z: float, max_pairs: int, total_steps: int, window: int,
                 partner: float):
        self.scale, self.z, self.max_pairs, self.partner = float(scale), float(z), int(max_pairs), float(partner)
        self.total, self.window = int(total_steps), int(window)
        self.status = OFF if fraction == 0.0 or total_steps == 0 else WAIT
        self.first = max(1, math.floor((1.0 - fraction) * total_steps / window))   # j₀
        self.commit = -1                        # c, the first warmdown window
        self.pairs, self.sum_d = 0, 0.0
        self.order = np.zeros(2, dtype=np.int64)  # this pair's roles: 1 = at scale f, 0 = the partner at p
        self.pos = 0                            # windows of this pair started
        self.rewards = np.zeros(2)              # by role

    @classmethod
    def of(cls, config) -> WarmdownTest:
        return cls(config.warmdown, config.warmdown_scale, config.warmdown_z, config.warmdown_pairs,
                   config.total_steps, config.window, config.warmdown_partner)

    def listening(self, j: int) -> bool:
        """Whether window j's losses are needed: from the window before the phase (its level is the
        first test window's reference) until the test is decided or the run ends."""
        return self.status in (WAIT, TEST, ON) and j >= self.first - 1

    @property
    def testing(self) -> bool:
        return self.status == TEST

    def reject(self) -> None:
        """Neutral to the end (a guarded partner window blew up: ``BrainCore.guarded_step``)."""
        self.status = NO

    def in_phase(self, j: int) -> bool:
        return self.status != OFF and j >= self.first

    def knobs_for(self, j: int, reward: float, s: float, rng: np.random.Generator) -> float | None:
        """The scale of window j (None before the phase), after folding window j − 1's reward."""
        if not self.in_phase(j):
            return None
        if self.status == WAIT:
            self.status = TEST
            self._new_pair(rng)
        elif self.status == TEST:
            self._fold(j, reward, s, rng)
        if self.status == TEST:
            self.pos += 1
            return self.scale if int(self.order[self.pos - 1]) == 1 else self.partner
        if self.status == ON:
            span = max(self.total - self.commit * self.window, self.window)   # a commit at or past T: one window
            left = (self.total - (j + 0.5) * self.window) / span
            return self.scale * min(1.0, max(LOWEST / self.scale, left))
        return 1.0

    def _new_pair(self, rng: np.random.Generator) -> None:
        self.order = rng.permutation(np.array([1, 0], dtype=np.int64))
        self.pos = 0

    def _fold(self, j: int, reward: float, s: float, rng: np.random.Generator) -> None:
        """Window j − 1 (of the current pair) finished with ``reward``; decide after the pair's second.
        A window without a usable level (no finite loss) rejects the warmdown, whichever its role."""
        if not math.isfinite(reward):
            self.status = NO
            return
        self.rewards[int(self.order[self.pos - 1])] = reward
        if self.pos < 2:
            return
        self.pairs += 1
        self.sum_d += float(self.rewards[1] - self.rewards[0])
        verdict = sequential_verdict(self.sum_d, self.pairs, s, self.z, self.max_pairs)
        if verdict is False:
            self.status = NO
        elif verdict:
            self.status, self.commit = ON, j
        else:
            self._new_pair(rng)

    def report(self) -> dict:
        return {"status": STATUS[self.status], "pairs": self.pairs, "commit_window": self.commit}

    def state(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.ARRAYS}

    def load(self, values: dict) -> None:
        for name in ("status", "first", "commit", "pairs"):
            setattr(self, name, int(values[name]))
        self.pos = int(values["pos"])
        self.sum_d = float(values["sum_d"])
        self.order = np.array(values["order"], dtype=np.int64)
        self.rewards = np.array(values["rewards"], dtype=np.float64)
