"""The OptBrain's safety mechanism: the trust α, grown only on a passed one-sided paired test.

Every cycle of the learner (``fusedgate.brain.policy``) holds, in a random order, one window at the
policy mean (knobs z = α·μ) and one exactly neutral window (z = 0), of the same length K, plus the two
exploration windows z = α·(μ ± σ⊙ε). Their rewards R (minus the change of the late log-loss level,
``window_reward``) give one paired difference per cycle,

    d = R_mean − R_neutral        (> 0: the policy's knobs made more progress than the base's own)

and the random order makes the loss's drift over time a zero-mean noise term in d. At the current
trust level the gate keeps n (pairs at this level) and Σd; the noise scale is s = max(RMS of every d
so far, the pair noise the windows' own loss residuals predict). After each cycle, with the one-sided
statistic t = Σd / (s·√n):

    grow    if n ≥ 2 and t ≥ z_grow (1):            α ← min(grow·α, 1)        (grow = 2)
    shrink  if n ≥ shrink_pairs (1), Σd < 0 and t ≤ −z_shrink (0):   α ← α/4, and α ← 0 below α_min (1/16)
    hold    otherwise

and on a grow or shrink the level's n and Σd restart (a level is judged on its own windows only).
α = 0 is exactly neutral and final: every window of the rest of the run is the base optimizer's own
(bit-identical steps from there on). A brain window without a usable loss, or whose late level is 2×
the previous window's (a blow-up), shrinks α at once. The brain starts at α = ``alpha_start`` (⅛)
after its neutral warm-up windows.

**The bound.** Deterministic: the proposals μ and μ ± σ⊙ε are clamped to the knob ranges in policy
space (``policy.Z_LOW``/``Z_HIGH``) before α multiplies them, so at trust α the scale is within
[0.01^α, 10^α], the clip within [0.1^α, 5^α] and dampen ≤ α; α ≤ ⅛ until a test has passed (the scale
within [0.56, 1.33], the clip within [0.75, 1.22]), ≤ ¼ until two have; and from α = ⅛ the first level whose pairs
sum below zero ends the policy: ⅛ · ¼ < α_min, so α = 0 — one cycle (4K steps) of evidence against it
and the run is the base optimizer's for good. From α = 1 it takes ⌈log₄(16)⌉ + 1 = 3 such cycles.
Measured (``tests/test_brain_safety.py`` reproduces it; 5000 simulated runs of 100 cycles, d drawn
N(δ·s, s²), s known, α read during each cycle): a policy worse than neutral by δ = 0.5 noise scales
per pair runs at α > 0 for 1.8 cycles on average (95 % within 5), a total trust Σα of 0.23
cycle-equivalents, and never reaches full trust; worse by δ = 1: 1.2 cycles (95 % within 3), Σα = 0.16.
So the expected excess of a harmful policy over the base is at most Σα × (its per-cycle excess at full
trust, if the harm grows at most linearly in α): ≈ 0.2 cycles' worth, then nothing. The price is paid
by helpful policies: one better by δ = 1 at the trust it runs at reaches full trust in 70 % of runs
(Σα = 62 of 100 cycles; δ = 0.5: 24 %, Σα = 15), since an unlucky first pair ends it too — and at
α = ⅛ a policy's δ is about ⅛ of what it would be at full trust.

The bound is the policy's, relative to the lr ladder's level ℓ (``fusedgate.brain.ladder``, off by default; with its own
bound: ℓ ∈ {1, 2, 4}, each doubling on a passed paired test, and it only ever raises the lr): the neutral
windows run at ℓ and the policy's at ℓ × its knobs. Over the last ``warmdown`` fraction of a run of known length
the policy's knobs end and the warmdown test takes over (``fusedgate.brain.warmdown``, with its own bound): outside
its at most ``warmdown_pairs`` guarded partner windows (at 1.5 ℓ) it only ever lowers the lr from ℓ.

What the bound does *not* cover, stated because it is measured rather than assumed: the test's d is
the progress over one window (a short horizon), so a knob whose cost appears only later (a smaller lr
that wins now and loses at the end) measures *better*, and the bound's δ is the measured δ, not the
final-loss one; and on a chaotic pair (its final loss moves by more than 1 % when the lr moves by 1 %:
``fusedgate brain-eval``'s ``nudge`` scenario measures this floor) any deviation at all — even α = ⅛
for one cycle — spreads the final loss as far as that floor, whatever the policy's worth. The tuned-lr
scenario measures the resulting final-loss ratio on both task families, beside that floor.

**The probe** (``BrainConfig.probe``, default 1). The tested window — the policy mean — runs at
min(1, probe·α)·μ while the exploration windows stay at α (``probe_up``, default 1: the same for the scale alone
where it raises the lr, min(1, max(probe, probe_up)·α)·μ_scale for μ_scale > 0; the bound's scale ceiling is then
10^min(1, max(probe, probe_up)·α)): the test then sees the effect of the trust it
would grow into, not an eighth of it. Simulated with an effect linear in the trust (d ~ N(δ·trust of the
tested window, 1), s known, 3000 runs of 100 cycles from the defaults; exposure = Σ over cycles of the brain
windows' mean trust (2α + min(1, probe·α))/3, in full-trust cycles; ``tests/test_brain_safety.py`` checks it):

    δ at full trust       −2        −1        −½        +½        +1        +2
    probe 1   cycles>0    2.4       3.0       3.3       (P(full trust) 4 %, 7 %, 19 % for +½, +1, +2)
              exposure    0.31      0.41      0.48
    probe 4   cycles>0    1.2       1.8       2.4       (P(full trust) 14 %, 41 %, 79 %)
              exposure    0.31      0.45      0.62
    probe 8   cycles>0    1.0       1.2       1.8       (P(full trust) 22 %, 66 %, 97 %)
              exposure    0.43      0.52      0.73

so a probe costs a harmful policy little more exposure and lets a helpful one through. On the tuning
family it did not pass the rule below (``bench/results/brain_tuning/README.md``, second sweep): the
probes that rescued more failed one tuned pair through the short-horizon bias above.

**What the growth schedule costs a rescue.** t ≤ √n whenever s ≥ the RMS of the pairs, so even a policy
that wins every pair needs two pairs per level: ``fastest`` gives α = ⅛, ⅛, ¼, ¼, ½, ½, 1, … per cycle,
a mean of 0.29 over the six cycles of a 300-step run. ``python -m fusedgate.bench.brain_ceiling`` trains the
best ⅓-lr policy the bound allows (the scale at min(3, 10^α), every test passed) under that schedule: it
closes ≥ 50 % of the ⅓-lr gap on 6 of 6 tuning pairs (64–100 %) but on only 5 of 9 held-out pairs
(35–123 %), where the window structure alone (α = 1 from the first cycle) allows 63–108 % on every pair
(``bench/results/brain_ceiling.md``): in runs this short the growth schedule, not the policy, caps the
held-out rescues.

The defaults (α₀ = ⅛, z_shrink = 0, grow = 2) were chosen on the tuning family (regression, mlp; seeds
10–14) over 17 candidate settings, by the rule fixed before the runs: every tuned-lr ratio ≤ 1.01, then
the most rescues (⅓ and 3× lr), then the smallest worst ratio; the earlier α₀ = ½, z_shrink = ½ failed
the first (regression/sgd 1.042, mlp/fusedgate 1.074) — see ``bench/results/brain_tuning/``; the
evaluation on seeds 0–4 and the held-out family is ``bench/results/brain_eval_gate_only.md``, at a second
horizon (600 steps) ``bench/results/brain_eval_600_gate_only/`` (with the warmdown test, today's defaults:
``bench/results/brain_eval.md`` and ``brain_eval_600/``). A second sweep (18 settings: the probe, shorter windows, a
reward horizon) and a third (7: a slower hypergradient) found nothing that rescues more and keeps the
tuned pairs within 1 %; a fourth (5: ``probe_up``, the probe only where the proposal raises the lr, which the
short-horizon bias works against) rescued 3 of 6 ⅓-lr pairs but failed both tuned FusedGate pairs: one tested
window at a much larger lr does lasting damage to a tuned Muon run that the window's loss does not show.
"""

from __future__ import annotations

import math

SHRINK, HOLD = 0.25, 1.0


class TrustGate:
    """α and the paired statistic of the current level. ``after_cycle(d, s_floor)`` once per cycle,
    ``bad_window()`` at once on a non-finite or blow-up brain window."""

    ARRAYS = ("alpha", "level_n", "level_sum", "d_sq", "n_pairs", "sum_d", "n_grows", "n_shrinks")

    def __init__(self, alpha_start: float, alpha_min: float, z_grow: float, z_shrink: float, grow: float = 2.0,
                 shrink_pairs: int = 1):
        self.alpha_min, self.z_grow, self.z_shrink = float(alpha_min), float(z_grow), float(z_shrink)
        self.grow, self.shrink_pairs = float(grow), int(shrink_pairs)
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
            return self._move(self.grow)
        if self.level_n >= self.shrink_pairs and self.level_sum < 0.0 and t <= -self.z_shrink and self.alpha > 0.0:
            return self._move(SHRINK)
        return HOLD

    @classmethod
    def of(cls, config) -> TrustGate:
        """The gate a ``BrainConfig`` describes, at α = ``alpha_start``."""
        return cls(config.alpha_start, config.alpha_min, config.z_grow, config.z_shrink, config.grow,
                   config.shrink_pairs)

    def fastest(self, cycles: int) -> list[float]:
        """α during each of the next ``cycles`` cycles if every pair passes (a copy of this gate is fed
        d = 1 with no noise floor: the fastest it can grow). Not a forecast, a ceiling."""
        gate = TrustGate(self.alpha, self.alpha_min, self.z_grow, self.z_shrink, self.grow, self.shrink_pairs)
        out = []
        for _ in range(cycles):
            out.append(gate.alpha)
            gate.after_cycle(1.0, 0.0)
        return out

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
