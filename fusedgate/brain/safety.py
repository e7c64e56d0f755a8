"""The OptBrain's safety mechanism: the trust α, grown only on a passed one-sided paired test.

Every cycle of the learner (``fusedgate.brain.policy``) holds, in a random order, one window at the
policy mean (knobs z = α·μ) and one exactly neutral window (z = 0), of the same length K, plus the two
exploration windows. Their rewards R (minus the change of the late log-loss level, ``window_reward``)
give one paired difference per cycle,

    d = R_mean − R_neutral        (> 0: the policy's knobs made more progress than the base's own)

and the random order makes the loss's drift over time a zero-mean noise term in d. At the current
trust level the gate keeps n (pairs at this level) and Σd; the noise scale s is the running RMS of d
over every pair so far (s² = EMA of d², weight max(1/N, 0.1)), floored by the ES advantage scale.
After each cycle, with t = Σd / (s·√n) the one-sided statistic:

    grow    if n ≥ 2 and t ≥ z_grow:   α ← min(2α, 1)                   (the policy beat neutral)
    shrink  if Σd < 0:                 α ← max(α/4, α_min)              (it tested worse: at once)
    hold    otherwise                                                     (not yet decided)

and on a grow or shrink the level's n and Σd restart (a level is judged on its own windows only).
A brain window whose loss is not finite, or whose late level is 2× the previous window's (a blow-up),
sets α ← α_min at once, mid-cycle. The brain starts at α = ``alpha_start`` (¼) after its neutral
warm-up; α_min = 1/16.

**The bound.** Knobs are z = α·(μ ± σ⊙ε) with μ and z clamped to the knob ranges, so at trust α every
knob is within a factor exp(α·ln 10) ≤ 10^α of neutral in scale and clip, and dampen ≤ α.

1. *Growth needs evidence.* α only doubles after ≥ 2 pairs at the current level whose sum is z_grow
   (= 1) noise scales above zero; under the null hypothesis that the policy is no better than
   neutral each growth is a false positive of probability ≈ Φ(−z_grow) ≈ 0.16, and full trust from
   α = ¼ needs two in a row (≈ 0.03).
2. *Shrinking is immediate.* A level whose paired sum is negative at any cycle's end is left at that
   cycle's end: no level runs more than one cycle (4 windows, 4K steps) past a measurement that it is
   worse than neutral, and from α = 1 the brain is back at α_min after ⌈log₄(1/α_min)⌉ = 2 such cycles
   (8K steps); after a non-finite or blow-up window at once (the next window).
3. *Excess over the base.* Let δ(α) be the per-step excess log-loss of the brain's knobs at trust α
   over the neutral knobs. Over a run of T steps the brain's excess is at most
   T·δ(α_min) + Σ_grows 8K·δ(2α) — the near-neutral floor everywhere, plus at most two cycles at each
   level it grew into before a worse measurement sends it back. With ≤ log₂(1/α_start) + 1 = 3 grows
   from α_min to 1 before a shrink, that is ≤ 24K steps at an unproven level per shrink.

What the bound does *not* cover, stated because it is measured rather than assumed: the reward is the
progress over one window (a short horizon), so a knob whose cost appears only later (a smaller lr that
wins now and loses at the end) can pass the test; ``brain-eval``'s tuned-lr scenario measures the
resulting final-loss ratio on both task families.
"""

from __future__ import annotations

import math

GROW, SHRINK, HOLD = 2.0, 0.25, 1.0


class TrustGate:
    """α and the paired statistic of the current level. ``after_cycle(d, s_floor)`` once per cycle,
    ``bad_window()`` at once on a non-finite or blow-up brain window."""

    ARRAYS = ("alpha", "level_n", "level_sum", "d_sq", "n_pairs", "sum_d", "n_grows", "n_shrinks")

    def __init__(self, alpha_start: float, alpha_min: float, z_grow: float, z_shrink: float):
        self.alpha_min, self.z_grow, self.z_shrink = float(alpha_min), float(z_grow), float(z_shrink)
        self.alpha = float(alpha_start)
        self.level_n, self.level_sum = 0, 0.0      # pairs and Σd at the current level
        self.d_sq, self.n_pairs = 0.0, 0           # running mean of d² over every pair; pairs so far
        self.sum_d = 0.0                           # Σ of d/s over every pair (the report's mean advantage)
        self.n_grows, self.n_shrinks = 0, 0

    def after_cycle(self, d: float, s_noise: float) -> float:
        """Fold one paired difference d = R_mean − R_neutral, with s_noise its standard deviation under
        the null (from the windows' own loss noise); returns the factor α was multiplied by."""
        if not math.isfinite(d) or not math.isfinite(s_noise):
            return HOLD
        self.n_pairs += 1
        w = max(1.0 / self.n_pairs, 0.1)
        self.d_sq = (1.0 - w) * self.d_sq + w * d * d
        s = max(math.sqrt(self.d_sq), s_noise, 1e-12)
        self.sum_d += d / s
        self.level_n += 1
        self.level_sum += d
        t = self.level_sum / (s * math.sqrt(self.level_n))
        if self.level_n >= 2 and t >= self.z_grow and 0.0 < self.alpha < 1.0:
            return self._move(GROW)
        if self.level_sum < 0.0 and t <= -self.z_shrink and self.alpha > 0.0:
            return self._move(SHRINK)
        return HOLD

    def bad_window(self) -> None:
        """A non-finite or blown-up brain window: shrink at once, mid-cycle."""
        self._move(SHRINK)

    def _move(self, factor: float) -> float:
        alpha = min(self.alpha * factor, 1.0)
        self.alpha = alpha if alpha >= self.alpha_min else 0.0    # below the floor: exactly neutral
        self.n_grows += factor > 1.0
        self.n_shrinks += factor < 1.0
        self.level_n, self.level_sum = 0, 0.0
        return factor

    def mean_advantage(self) -> float:
        """Mean of d/s over every pair: > 0 when the policy's windows beat the neutral ones."""
        return self.sum_d / self.n_pairs if self.n_pairs else 0.0

    def state(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.ARRAYS}

    def load(self, values: dict) -> None:
        for name in self.ARRAYS:
            setattr(self, name, type(getattr(self, name))(values[name]))
