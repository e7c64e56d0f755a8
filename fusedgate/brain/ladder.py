"""The lr ladder: OptBrain's early test for a learning rate set too small, taken one rung at a time.

A base lr several times too small costs a run dearly, and it is what a window-level test sees best.
The premise it was built on: over one window a larger lr measures *worse* unless the lr really is too
small (the short-horizon bias, ``policy.window_reward``), so a test that a larger lr wins errs in the
safe direction. The evaluation refutes that premise for the start of a run (below). The main
learner cannot use this: its gate starts the policy at trust α = ⅛ (``fusedgate.brain.safety``), where
the scale it may apply is within [0.56, 1.33], too little for a ⅓-lr run's rescue to pass a test. So the
ladder is a test of its own, right after the neutral warm-up windows, in windows of K steps, with its
level ℓ (1 at the start) as the run's lr factor from then on:

    start   a rung starts only while the gradients persist: their alignment one window apart (the
            cosine of the sketched gradients, ``features``; the groups' mean, weighted by their
            sketch's share) is ≥ a (``ladder_align``). A too-small lr moves slowly along a direction
            that stays; at a large enough lr the gradient turns between windows
    persist the rung's windows at ℓ read that alignment again (across each of them, at the lr the
            start reading was taken at): at each pair's end, before its verdict, the mean of the
            rung's readings at ℓ — the start's and its ℓ windows' — must still be ≥ a. The readings
            across the windows at ℓ·u are not counted: a larger lr turns the gradient more by design
    test    pairs of windows in a random order, one at ℓ·u (``ladder_step``) and one at ℓ; per pair
            d = R_up − R_ℓ (the windows' rewards), and after n pairs t = Σd / (s·√n), s = the pair noise
            the windows' loss residuals predict (``BrainCore.pair_noise``)
    climb   t ≥ z (``ladder_z``): ℓ ← ℓ·u, and the next rung may start — at most ``ladder`` rungs
    stop    Σd < 0, or no climb after ``ladder_pairs`` pairs, or the alignment below a at a rung's
            start or in its mean at a pair's end, or the last rung climbed: ℓ is kept
    guard   in a window at ℓ·u the wrapper reads every step's loss (one host read per step, in these
            windows only); a loss above twice the level before the window (or not finite) stops the
            ladder at ℓ from that very step (``BrainCore.guarded_step``)

After the ladder the main learner runs as before on top of ℓ: every window's scale, the neutral
control's included, is ℓ × the policy's, and the warmdown test (``fusedgate.brain.warmdown``) scales
from ℓ. It needs two warm-up windows (the first alignment is measured in the second).

**Off by default** (``ladder = 0``: ℓ = 1); ``ladder=2`` turns on what was evaluated (×2 rungs, z = 1, a = 0.5,
2 pairs: chosen on the tuning family's seeds 10–14, ``bench/results/brain_tuning/README.md``, sweeps 7–9; the persist
step on seeds 10–29, sweep 12). Without persist (``bench/results/brain_eval_ladder/``) the ladder's losses on the
evaluation's seeds 0–4 were false climbs at the tuned lr (9 of 45 tuning runs climbed; mlp/FusedGate seed 1 ×1.011 →
×1.425), and not noise: at z = 1.64 266 of 270 brain runs are the same bit for bit. Early in a run a window at twice
the tuned lr really does reach a lower level (the short-horizon bias runs towards the larger lr there), so no
threshold on the reward test separates a too-small lr from a tuned one. What does, on seeds 10–14: the gradients
keep their direction across the test's own windows at ℓ when the lr is too small (readings 0.38–0.76 on mlp at ⅓ lr)
and turn when it is tuned (0.17, 0.16, −0.25 in the three false climbs, whose start readings had passed) — the persist
step. With it, against the defaults on the same base runs (``bench/results/brain_eval_ladder_persist/``): at 300 steps
8 of 9 tuning and 9 of 9 held-out pairs within 1 % at the tuned lr (the defaults 7 and 9; no climb on mlp), and ≥ 50 %
of a ⅓-lr gap closed on 4 of 9 tuning and 1 of 9 held-out pairs (the defaults none); at 600 steps 9 and 8 within
1 % (9 and 8) and 3 and 0 rescues. On the 20 fresh seeds (30–49, the defaults beside it:
``bench/results/brain_eval_ladder_fresh_seeds/``) it keeps 18 of 18 pairs within 1 % at 300 steps and 17 at 600:
cnn/FusedGate ×1.060 (the defaults ×0.991), from its 3 climbs of 20, each ×1.36–1.51 on the held-out loss while
its training loss ends 0.24–0.31× the base's. That pair overfits its small training set: its base at twice the lr,
no brain, ends ×1.63 on the held-out loss at 600 steps with a training level ×0.27 (20 of 20 seeds). So it stays
opt-in — for runs whose data is not repeated (one epoch, as in pre-training), or whose training loss is what counts.

**The bound.** ℓ ≤ u^``ladder``, and only ever ≥ 1: the ladder never lowers the lr. A rung is climbed
falsely — at a larger lr that does not lower the windows' level — with probability ≤
``ladder_pairs``·P(N(0,1) ≥ z) (the warmdown's sequential test: simulated with 2 pairs, 20 % at z = 1 and
7 % at z = 1.64 for δ = 0; 3 % and 0.6 % when the larger lr is worse by one noise scale per pair).
Each rung runs at most ``ladder_pairs`` windows at ℓ·u, a rung whose pair sums below zero stops the
ladder at once, and a blow-up inside such a window ends it at the step it is seen (the step before
it, at ℓ·u, is the one the guard cannot take back). What the test does not see: a larger lr that lowers
the level now and raises it later (which is what a tuned lr does at the start of a run, measured above), the
cost of its windows on a chaotic run, and the held-out loss: a larger lr that lowers the training loss and
raises the held-out one (cnn/FusedGate, above) passes every test the brain can make.
"""

from __future__ import annotations

import math

import numpy as np

from fusedgate.brain.warmdown import sequential_verdict

TEST, DONE = range(2)
STATUS = ("testing", "done")


class LadderTest:
    """The state machine above. ``knobs_for(reward, s, rng, alignment)`` once per window from the first
    window after the warm-up on, for the window about to start (``reward``: that of the one just ended);
    returns its scale over ℓ while testing (u or 1), ``None`` once the ladder is done (the main learner
    decides, on top of ``level``)."""

    ARRAYS = ("status", "rungs", "level", "pairs", "sum_d", "order", "pos", "rewards", "align_sum", "align_n")

    def __init__(self, rungs: int, step: float, z: float, max_pairs: int, align: float = -1.0):
        self.max_rungs, self.step, self.z, self.max_pairs = int(rungs), float(step), float(z), int(max_pairs)
        self.align = float(align)
        self.status = TEST if rungs > 0 else DONE
        self.rungs = 0                          # rungs climbed
        self.level = 1.0                        # ℓ = step ** rungs
        self.pairs, self.sum_d = 0, 0.0         # of the current rung
        self.order = np.zeros(2, dtype=np.int64)  # this pair's roles: 1 = at ℓ·u, 0 = at ℓ
        self.pos = 0                            # windows of this pair started (0: the rung's first pair is due)
        self.rewards = np.zeros(2)              # by role
        self.align_sum, self.align_n = 0.0, 0   # this rung's alignment readings at ℓ (persist)

    @classmethod
    def of(cls, config) -> LadderTest:
        return cls(config.ladder, config.ladder_step, config.ladder_z, config.ladder_pairs, config.ladder_align)

    @property
    def testing(self) -> bool:
        return self.status == TEST

    def knobs_for(self, reward: float, s: float, rng: np.random.Generator, alignment: float = 1.0) -> float | None:
        """The next window's scale over ℓ while testing (None once done), after folding the last one's
        reward; ``alignment``: the gradients' cosine one window apart, which a rung needs to start."""
        if self.status != TEST:
            return None
        if self.pos > 0:                        # the window that just ended was one of this pair's
            self._fold(reward, s, alignment)
        if self.status == TEST and self.pos == 0 and self.pairs == 0:
            if not alignment >= self.align:     # a new rung, but the gradients no longer persist
                self.status = DONE
            else:
                self.align_sum, self.align_n = alignment, 1
        if self.status != TEST:
            return None
        if self.pos == 0:
            self.order = rng.permutation(np.array([1, 0], dtype=np.int64))
        self.pos += 1
        return self.step if int(self.order[self.pos - 1]) == 1 else 1.0

    def _fold(self, reward: float, s: float, alignment: float) -> None:
        """The window just finished (of the current pair) had ``reward`` and the gradients turned by
        ``alignment`` across it; decide after the pair's second. A window without a usable level stops
        the ladder, and so do an alignment at ℓ that cannot be read and a mean alignment at ℓ below a at
        the pair's end."""
        role = int(self.order[self.pos - 1])
        if not math.isfinite(reward) or (role == 0 and not math.isfinite(alignment)):
            self.status = DONE
            return
        self.rewards[role] = reward
        if role == 0:
            self.align_sum, self.align_n = self.align_sum + alignment, self.align_n + 1
        if self.pos < 2:
            return
        self.pos = 0
        self.pairs += 1
        self.sum_d += float(self.rewards[1] - self.rewards[0])
        if not self.align_sum / self.align_n >= self.align:
            self.status = DONE                  # the gradients turn at ℓ: the start reading was noise
            return
        verdict = sequential_verdict(self.sum_d, self.pairs, s, self.z, self.max_pairs)
        if verdict is False:
            self.status = DONE
        elif verdict:
            self.rungs += 1
            self.level *= self.step
            self.pairs, self.sum_d = 0, 0.0
            if self.rungs >= self.max_rungs:
                self.status = DONE

    def stop(self) -> None:
        """Done at the level reached (a guarded window blew up: ``BrainCore.guarded_step``)."""
        self.status = DONE

    def report(self) -> dict:
        status = STATUS[self.status] if self.max_rungs else "off"
        return {"status": status, "rungs": self.rungs, "level": self.level}

    def state(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.ARRAYS}

    def load(self, values: dict) -> None:
        for name in ("status", "rungs", "pairs", "pos", "align_n"):
            setattr(self, name, int(values[name]))
        self.level, self.sum_d = float(values["level"]), float(values["sum_d"])
        self.align_sum = float(values["align_sum"])
        self.order = np.array(values["order"], dtype=np.int64)
        self.rewards = np.array(values["rewards"], dtype=np.float64)
