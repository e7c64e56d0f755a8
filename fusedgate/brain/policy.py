"""The OptBrain's learner: observations -> a Gaussian policy over three knobs, trained by antithetic ES,
with the scale knob also following a measured hypergradient, and its trust set by a paired test.

Pure numpy (no torch), shared by every mode of ``OptBrain``. Time is cut into *windows* of K steps;
the knobs are held fixed over a window. After a few neutral warm-up windows (evidence for the
normalisers; the run is bit-identical to the base optimizer until then) the brain runs *cycles* of
four windows in a random order:

    +  z = α·(μ + σ⊙ε)      −  z = α·(μ − σ⊙ε)      μ  z = α·μ (the policy mean)      0  z = 0 (neutral)

with ε ~ N(0, I) per group and knob, μ_g = b_g + W·o_g a linear policy of the normalised
observation o_g (N_OBS = 13: 6 loss features + 7 features of group g), σ the exploration scale and
α ∈ [α_min, 1] the trust (``fusedgate.brain.safety``). A knob vector z is mapped to (scale, clip,
dampen) by

    scale = exp(clamp(z₀, ln 0.01, ln 10))    clip = exp(clamp(z₁, ln 0.1, ln 5))    dampen = clamp(z₂, 0, 1)

so z = 0 gives exactly (1, 1, 0); with σ_dampen = 0 (the default) z₂ stays 0 — the ES updates below are
multiples of σ⊙ε and the hypergradient moves the scale alone — so dampen is never on. The reward R of a
window (``window_reward``) is minus the change of its late log-loss level from the previous window's,
minus ``horizon`` × its late slope (horizon 0 by default: the level reached). Per cycle, with s² a running mean of e²:

    e = (R₊ − R₋)/2            A = clamp(e/s, −3, 3)          (antithetic ES advantage)
    b_g ← (1−λ)·b_g + η·A·σ⊙ε_g        W ← (1−λ)·W + (η/13)·A·mean_g (σ⊙ε_g) o_gᵀ
    d = R_μ − R₀               (the cycle's paired difference: policy mean against neutral)

and d goes to the trust gate (``TrustGate.after_cycle``), which doubles α only when a one-sided test
over the pairs at the current level passes and quarters it as soon as their sum is negative.

Every window, the scale bias also follows the overshoot feature o_g (the cosine between the window-end
gradient and the window's net update): b_g,scale ← b_g,scale − κ·r_g·(o_g − o*), the sign of the
one-step hypergradient (``BrainCore._hypergradient``). It moves the *proposal* μ; what is applied is
α·μ, so it acts only as far as the gate trusts it.

Right after the warm-up the lr ladder (``fusedgate.brain.ladder``, off by default) runs its own windows, with the
policy's knobs at z = 0: pairs at 2ℓ and ℓ, doubling the level ℓ while a paired test says the larger lr
wins; every later window's scale — the neutral control's too — is ℓ times the policy's, and the cycles
start when the ladder is done.

The last ``warmdown`` fraction of a run of known length (``total_steps``) belongs to the warmdown test
(``fusedgate.brain.warmdown``): there the policy's knobs end (z = 0) and the scale of every group is the
test's (½ and 1.5 in its paired test windows, then a linear warmdown if it passed, 1 if not).

Non-finite losses (a NaN or inf ``loss=``) are skipped: a window's reward and loss features use its
finite, positive losses only, and the skipped ones are counted (``skipped_losses``). A window with
fewer than two usable losses, or a brain window whose late level is twice the previous window's (a
blow-up), is a bad window: it counts as 3·s worse than the worst finite window of its cycle, and if
the brain's knobs were on, α drops to α_min at once. The random order of the windows makes the
loss's natural decay over time an unbiased noise term in e and d.
"""

from __future__ import annotations

import math

import numpy as np

from fusedgate.brain.config import BrainConfig, BrainError
from fusedgate.brain.ladder import LadderTest
from fusedgate.brain.safety import TrustGate
from fusedgate.brain.warmdown import WarmdownTest

__all__ = ["BrainConfig", "BrainCore", "BrainError", "KNOBS", "knobs_from_z", "window_progress", "window_reward"]

KNOBS = ("scale", "clip", "dampen")
N_LOSS_FEATURES = 6
N_GROUP_FEATURES = 7
N_OBS = N_LOSS_FEATURES + N_GROUP_FEATURES
LOSS_FEATURES = ("progress", "log_noise", "log_change", "log_since_start", "log_vs_slow", "log_time")
GROUP_FEATURES = ("log_grad_norm", "grad_spike", "alignment", "oscillation", "log_update_ratio", "overshoot",
                  "log_param_norm")
SCALE_RANGE = (0.01, 10.0)
CLIP_RANGE = (0.1, 5.0)
DAMPEN_RANGE = (0.0, 1.0)
Z_LOW = np.array([math.log(SCALE_RANGE[0]), math.log(CLIP_RANGE[0]), DAMPEN_RANGE[0]])   # the knob ranges in z
Z_HIGH = np.array([math.log(SCALE_RANGE[1]), math.log(CLIP_RANGE[1]), DAMPEN_RANGE[1]])
MEAN = 2                 # the role of a window at the policy mean α·μ (no noise)
ROLES = (1, -1, MEAN, 0)  # +ε, −ε, the policy mean, the neutral control: one cycle
BLOWUP = math.log(2.0)  # a brain window whose late loss level is 2× the previous window's: a blow-up
# a loss in a warmdown partner window (1.5× the lr) this many times the largest of the window before: a
# divergence. A larger lr's own noise stays below it: on the tuning family (seeds 10–29, tuned and 3× lr)
# those windows reach at most 24× — at 3× the lr, and the runs recover — and ≤ 6.3× at the tuned lr
PARTNER_BLOWUP = 100.0


def knobs_from_z(z: np.ndarray) -> np.ndarray:
    """Map policy space (G, 3) to knobs (G, 3): scale, clip in log space, dampen clamped. z=0 -> (1,1,0)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    out[:, 0] = np.exp(np.clip(z[:, 0], math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])))
    out[:, 1] = np.exp(np.clip(z[:, 1], math.log(CLIP_RANGE[0]), math.log(CLIP_RANGE[1])))
    out[:, 2] = np.clip(z[:, 2], *DAMPEN_RANGE) + 0.0  # + 0.0 turns -0.0 into 0.0
    return out


class RunningNorm:
    """Online per-feature mean/variance: weight w = max(1/n, 1-β) on each new sample (Welford, then EMA).

    normalise(x) = clamp((x - mean)/sqrt(var + 1e-8), -5, 5), non-finite -> 0. Non-finite samples are
    not learnt from.
    """

    def __init__(self, shape, beta: float = 0.99):
        self.beta = beta
        self.mean = np.zeros(shape)
        self.var = np.zeros(shape)
        self.count = np.zeros(shape)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        ok = np.isfinite(x)
        self.count = self.count + ok
        w = np.where(ok, np.maximum(1.0 / np.maximum(self.count, 1), 1.0 - self.beta), 0.0)
        delta = np.where(ok, x - self.mean, 0.0)
        self.mean = self.mean + w * delta
        self.var = (1.0 - w) * (self.var + w * delta * delta)

    def normalise(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / np.sqrt(self.var + 1e-8)
        return np.clip(np.nan_to_num(z, nan=0.0, posinf=5.0, neginf=-5.0), -5.0, 5.0)


def line_fit(y: list[float]) -> tuple[float, float, float]:
    """(mean, slope, rms) of the least-squares line through (i, y_i), i = 0…n−1: slope = Σ tᵢ(yᵢ − ȳ)/Σ tᵢ²
    with tᵢ = i − (n−1)/2, rms = √(mean of the squared residuals); slope and rms are 0 for n < 2. In plain
    floats: a window holds a few numbers, and numpy's cost per call would be most of the work."""
    n = len(y)
    mean = sum(y) / n
    if n < 2:
        return mean, 0.0, 0.0
    centre = 0.5 * (n - 1)
    slope = sum((i - centre) * (v - mean) for i, v in enumerate(y)) / (n * (n * n - 1) / 12.0)
    rms = math.sqrt(sum((v - mean - slope * (i - centre)) ** 2 for i, v in enumerate(y)) / n)
    return mean, slope, rms


def _usable(losses) -> list[float] | None:
    """The losses as floats, or None if one is not finite or not positive."""
    values = np.asarray(losses, dtype=np.float64).reshape(-1).tolist()
    return values if all(0.0 < v < math.inf for v in values) else None


def window_reward(losses: np.ndarray, prev_level: float, horizon: float) -> tuple[float, float]:
    """(reward, level) of one window. With ℓ the log-losses of the window's second half (after the
    transient of a knob change), level = mean(ℓ) and slope = their least-squares slope per step:

        reward = −[(level − prev_level) + horizon·slope]

    i.e. minus the predicted change of the log-loss at ``horizon`` steps from now, relative to the
    previous window's level, if the window's knobs were kept (linear extrapolation of its late slope).
    ``horizon`` = 0 is the greedy reward (the level reached), which favours whatever lowers the loss
    *now* — a smaller lr, at the noise floor: the short-horizon bias; a horizon as long as the rest of
    the run weighs that against the slower progress a smaller lr makes. Without a previous level the
    level term is 0. NaN when a loss is not finite or not positive."""
    values = _usable(losses)
    if values is None or len(values) < 2:
        return math.nan, math.nan
    level, slope, _ = line_fit([math.log(v) for v in values[len(values) // 2:]])
    change = level - prev_level if math.isfinite(prev_level) else 0.0
    return -(change + horizon * slope), level


def window_progress(losses: np.ndarray) -> tuple[float, float]:
    """(progress, noise) of one window: progress = -K·slope of the least-squares fit of log-loss on
    step index, noise = std of its residuals. NaN when a loss is not finite or not positive."""
    values = _usable(losses)
    if values is None or len(values) < 2:
        return math.nan, math.nan
    _, slope, noise = line_fit([math.log(v) for v in values])
    return -slope * len(values), noise


class BrainCore:
    """The learner. ``end_window(losses, group_features)`` -> the (G, 3) knobs for the next window."""

    def __init__(self, n_groups: int, config: BrainConfig | None = None, **knobs):
        if not isinstance(n_groups, int) or isinstance(n_groups, bool) or not 1 <= n_groups <= 1024:
            raise BrainError(f"n_groups={n_groups!r}: expected an integer in [1, 1024]")
        self.config = config = BrainConfig.from_kwargs(config, **knobs)
        self.n_groups, self.window = n_groups, config.window
        self.gate = TrustGate.of(config)
        self.warmdown = WarmdownTest.of(config)
        self.ladder = LadderTest.of(config)
        self.noise_sq = math.nan                    # EMA of the windows' squared log-loss residual noise
        self.reliability = np.ones(n_groups)        # per group: min(elements, sketch size)/sketch size
        self.prev_level = math.nan                  # the previous window's late log-loss level
        self.guard = math.inf                       # a loss above this ends a guarded window (guarded_step)
        self.sigma = np.asarray(config.sigma, dtype=np.float64) * config.explore
        self.rng = np.random.Generator(np.random.PCG64(config.seed))
        g = n_groups
        self.W = np.zeros((3, N_OBS))               # shared policy weights
        self.b = np.zeros((g, 3))                   # per-group policy bias
        self.loss_norm = RunningNorm(N_LOSS_FEATURES)
        self.group_norm = RunningNorm((g, N_GROUP_FEATURES))
        self.e_sq = 0.0                             # running mean of e² (advantage scale)
        self.n_windows = 0
        self.n_cycles = 0
        self.n_bad_windows = 0
        self.n_skipped = 0                          # non-finite / non-positive losses skipped
        self.prev_mean = math.nan                   # log mean loss of the previous window
        self.first_mean = math.nan                  # log mean loss of the first window
        self.slow_mean = math.nan                   # slow EMA of log mean loss
        self.cycle_order = np.zeros(len(ROLES), dtype=np.int64)
        self.cycle_pos = 0
        self.cycle_r = np.zeros(len(ROLES))
        self.eps = np.zeros((g, 3))
        self.mu = np.zeros((g, 3))
        self.obs = np.zeros((g, N_OBS))
        self.z = np.zeros((g, 3))                   # current policy-space decision
        self.decisions = knobs_from_z(self.z)       # current knobs, exactly (1, 1, 0) at start

    @property
    def alpha(self) -> float:
        """The trust α (``fusedgate.brain.safety.TrustGate``)."""
        return self.gate.alpha

    @property
    def ended(self) -> bool:
        """α = 0: the gate has ended the policy, for good (it grows only from 0 < α), so every later
        window is exactly neutral and nothing learnt from here on would ever be applied."""
        return self.gate.alpha == 0.0

    def sensing(self, j: int) -> bool:
        """Whether window j's features are wanted: the main learner runs (not ended) or the lr ladder tests
        (its rungs read the gradient alignment), and the warmdown phase (``fusedgate.brain.warmdown``) has
        not begun."""
        return (not self.ended or self.ladder.testing) and not self.warmdown.in_phase(j)

    def listening(self, j: int) -> bool:
        """Whether window j's losses are wanted: by the main learner, the lr ladder or the warmdown test."""
        return self.sensing(j) or self.ladder.testing or self.warmdown.listening(j)

    @property
    def probe_alpha(self) -> float:
        """The trust of the tested window (the policy mean): min(1, probe·α), 0 when α is."""
        return min(1.0, self.config.probe * self.alpha)

    # ---- observations -------------------------------------------------------------------------
    def _loss_features(self, losses: np.ndarray) -> np.ndarray:
        progress, noise = window_progress(losses)
        log_mean = math.log(sum(losses.tolist()) / losses.size) if losses.size else math.nan
        if math.isnan(self.first_mean):
            self.first_mean = log_mean
        if math.isnan(self.slow_mean):
            self.slow_mean = log_mean
        total = self.config.total_steps
        time = (self.n_windows + 1) * self.window / total if total else math.log1p(self.n_windows)
        feats = np.array([progress, math.log(noise + 1e-8), log_mean - self.prev_mean,
                          log_mean - self.first_mean, log_mean - self.slow_mean, time])
        if math.isfinite(noise):
            self.noise_sq = noise * noise if math.isnan(self.noise_sq) else 0.9 * self.noise_sq + 0.1 * noise * noise
        if math.isfinite(log_mean):
            self.prev_mean = log_mean
            self.slow_mean = 0.9 * self.slow_mean + 0.1 * log_mean
        return feats

    def _check(self, losses: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """The window's usable losses (finite, positive; the rest counted as skipped)."""
        if losses.shape != (self.window,):
            raise BrainError(f"end_window: expected {self.window} losses, got {losses.shape[0]}")
        if feats.shape != (self.n_groups, N_GROUP_FEATURES):
            raise BrainError(f"end_window: expected group features of shape "
                             f"{(self.n_groups, N_GROUP_FEATURES)}, got {feats.shape}")
        usable = np.isfinite(losses) & (losses > 0)
        self.n_skipped += int(self.window - usable.sum())
        return losses[usable]

    # ---- the window / cycle machine -----------------------------------------------------------
    def end_window(self, losses: np.ndarray, group_features: np.ndarray, next_window: int | None = None) -> np.ndarray:
        """Consume one finished window: its K losses in time order and the (G, 7) group features
        of its sensed step. Learns when a cycle completes and returns the knobs for the next window.
        ``next_window``: the run's index of that window (default: the windows consumed so far — a
        wrapper whose ended brain skips windows passes its step count // K)."""
        self.guard = math.inf
        feats = np.asarray(group_features, dtype=np.float64)
        usable = self._check(np.asarray(losses, dtype=np.float64).reshape(-1), feats)
        lf = self._loss_features(usable)
        self.loss_norm.update(lf)
        self.group_norm.update(feats)
        self.n_windows += 1
        reward = self._judge_window(usable)
        j = self.n_windows if next_window is None else int(next_window)
        scale = self.warmdown.knobs_for(j, reward, self._warmdown_noise(), self.rng)
        if scale is not None:              # the warmdown phase: its scale alone, the policy's knobs end
            if self.ladder.testing:        # (a run too short for the ladder to finish: it ends at ℓ)
                self.ladder.stop()
            self._set_knobs(np.zeros((self.n_groups, 3)), scale)
            self.cycle_pos = 0
            if scale > 1.0 and usable.size:    # a partner window of the warmdown test: guarded
                self.guard = PARTNER_BLOWUP * float(np.max(usable))
            return self.decisions
        if self.n_windows < self.config.warmup_windows:
            return self.decisions
        if self.ladder.testing:            # the lr ladder: its scale alone; a fresh cycle starts after it
            rung = self.ladder.knobs_for(reward, self.pair_noise(), self.rng, self._alignment(feats))
            if rung is not None:
                self._set_knobs(np.zeros((self.n_groups, 3)), rung)
                self.cycle_pos = len(ROLES)
                if rung != 1.0 and math.isfinite(self.prev_level):
                    self.guard = math.exp(self.prev_level + BLOWUP)
                return self.decisions
        self._hypergradient(feats)
        if self._exploiting():
            # the last ``exploit`` fraction of the run: no more exploration or control windows, the
            # trusted policy mean α·μ of the current observation is applied (nothing is learnt)
            self._observe(lf, feats)
            self._set_knobs(self.alpha * self._proposal())
            self.cycle_pos = 0
            return self.decisions
        if self.n_windows > self.config.warmup_windows and self.cycle_pos < len(ROLES):
            self.cycle_r[self.cycle_pos] = reward
            self.cycle_pos += 1
            if self.cycle_pos == len(ROLES):
                self._learn()
        if self.n_windows == self.config.warmup_windows or self.cycle_pos == len(ROLES):
            self._start_cycle(lf, feats)
        self._set_decision()
        return self.decisions

    def guarded_step(self, loss: float) -> bool:
        """Per step while ``guard`` is finite (a window above the lr it started from: a ladder window at
        ℓ·u, its guard twice the level before the window; or the warmdown test's partner window, its guard
        ``PARTNER_BLOWUP`` × the largest loss before it): a loss above it or not finite stops that test —
        the ladder at ℓ, the warmdown rejected — for the rest of the run, from this step on. Returns
        whether the knobs changed."""
        if loss <= self.guard:
            return False
        self.guard = math.inf
        if self.warmdown.testing:
            self.warmdown.reject()
        else:
            self.ladder.stop()
        self._set_knobs(np.zeros((self.n_groups, 3)))
        return True

    def _alignment(self, feats: np.ndarray) -> float:
        """The groups' gradient alignment one window apart, weighted by ``reliability`` (their sketch's share)."""
        a = feats[:, GROUP_FEATURES.index("alignment")]
        w = self.reliability if self.reliability.sum() > 0 else np.ones(self.n_groups)   # no sizes seen: equal
        return float(np.dot(w, a) / w.sum()) if np.all(np.isfinite(a)) else math.nan

    def _set_knobs(self, z: np.ndarray, scale: float | None = None) -> None:
        """The next window's knobs from z, every group's scale times the ladder's level ℓ (and, if given,
        ``scale`` in place of z's), within the scale knob's range."""
        self.z = z
        self.decisions = knobs_from_z(z)
        if scale is not None:
            self.decisions[:, 0] = scale
        self.decisions[:, 0] = np.clip(self.decisions[:, 0] * self.ladder.level, *SCALE_RANGE)

    def _judge_window(self, usable: np.ndarray) -> float:
        """The finished window's reward; a bad brain window (no reward, or a blow-up) drops the trust."""
        done = self.n_windows * self.window
        total, horizon = self.config.total_steps, self.config.horizon
        horizon = min(horizon, max(total - done, 0)) if total else horizon
        reward, level = window_reward(usable, self.prev_level, horizon)
        in_cycle = self.n_windows > self.config.warmup_windows and self.cycle_pos < len(ROLES)
        brain_window = in_cycle and int(self.cycle_order[self.cycle_pos]) != 0 and bool(np.any(self.z != 0))
        blowup = brain_window and math.isfinite(level) and level - self.prev_level > BLOWUP
        if math.isfinite(level):
            self.prev_level = level
        if not math.isfinite(reward) or blowup:
            self.n_bad_windows += 1
            if brain_window:
                self.gate.bad_window()
        return reward

    def _exploiting(self) -> bool:
        c = self.config
        return c.exploit > 0 and c.total_steps > 0 and self.n_windows * self.window >= (1.0 - c.exploit) * c.total_steps

    def _hypergradient(self, feats: np.ndarray) -> None:
        """The scale bias follows the measured overshoot: b_scale ← b_scale − κ·(o − o*), with o the
        cosine between the window-end gradient and the window's net update (> 0: the update went past
        the valley floor along its own direction, the lr is too large for the next step; < 0: the
        gradient still points where the update went, the lr is too small), weighted by the group's
        ``reliability`` (set by the wrapper from the group sizes) — the sign of the one-step
        hypergradient d loss / d log lr, measured with far less noise than a loss difference. o* > 0
        is the overshoot tolerated (a greedy o* = 0 would shrink the lr for the next step's sake only:
        the short-horizon bias). This moves the proposal μ; the gate's α scales what is applied."""
        o = feats[:, GROUP_FEATURES.index("overshoot")]
        kappa = self.config.hypergrad
        if kappa == 0.0 or self.n_windows < 2 or not np.all(np.isfinite(o)):
            return
        lo, hi = math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])
        # a group with fewer elements than the sketch measures o on fewer coordinates (a bias of
        # 1 element: a coin flip), so it drifts by that fraction
        step = kappa * self.reliability * (o - self.config.overshoot_target)
        self.b[:, 0] = np.clip(self.b[:, 0] - step, lo, hi)

    def _observe(self, lf: np.ndarray, feats: np.ndarray) -> None:
        lo = self.loss_norm.normalise(lf)
        go = self.group_norm.normalise(feats)
        self.obs = np.concatenate([np.broadcast_to(lo, (self.n_groups, N_LOSS_FEATURES)), go], axis=1)

    def _start_cycle(self, lf: np.ndarray, feats: np.ndarray) -> None:
        self._observe(lf, feats)
        self.mu = self._proposal()
        self.eps = self.rng.standard_normal((self.n_groups, 3))
        self.cycle_order = self.rng.permutation(np.array(ROLES, dtype=np.int64))
        self.cycle_pos = 0
        self.cycle_r[:] = 0.0

    def _proposal(self) -> np.ndarray:
        """μ = b + W·o for the current observation, clamped to the knob ranges in policy space (so that
        z = α·μ keeps every knob within its range to the power α: the safety docstring's bound)."""
        return np.clip(self.b + self.obs @ self.W.T, Z_LOW, Z_HIGH)

    def _set_decision(self) -> None:
        role = int(self.cycle_order[self.cycle_pos])
        if role == 0:
            self.z = np.zeros((self.n_groups, 3))
        elif role == MEAN:
            self.z = self._tested()
        else:
            self.z = self.alpha * np.clip(self.mu + role * self.sigma * self.eps, Z_LOW, Z_HIGH)
        self._set_knobs(self.z)

    def _tested(self) -> np.ndarray:
        """The tested window's z: min(1, probe·α)·μ, and for a scale that raises the lr (μ_scale > 0)
        min(1, max(probe, probe_up)·α)·μ_scale — the probe in the one direction the window's short-horizon
        bias works against (a larger lr measures *worse* over one window unless it really is too small)."""
        z = self.probe_alpha * self.mu
        up = min(1.0, max(self.config.probe, self.config.probe_up) * self.alpha)
        z[:, 0] = np.where(self.mu[:, 0] > 0.0, up * self.mu[:, 0], z[:, 0])
        return z

    def _learn(self) -> None:
        """One cycle's ES step on the ± windows, then the paired difference d to the trust gate."""
        r = {int(role): float(self.cycle_r[i]) for i, role in enumerate(self.cycle_order)}
        self.n_cycles += 1
        finite = [v for v in r.values() if math.isfinite(v)]
        if not finite:
            return
        s = math.sqrt(self.e_sq) if self.e_sq > 0 else 0.0
        worst = min(finite) - 3.0 * s
        rp, rm = (v if math.isfinite(v) else worst for v in (r[1], r[-1]))
        e = 0.5 * (rp - rm)
        w = max(1.0 / self.n_cycles, 0.05)
        self.e_sq = (1.0 - w) * self.e_sq + w * e * e
        s = math.sqrt(self.e_sq) + 1e-12
        adv = float(np.clip(e / s, -3.0, 3.0))
        step = self.config.policy_lr * adv * (self.sigma * self.eps)    # (G, 3) in policy units
        decay = self.config.decay
        self.b = (1.0 - decay) * self.b + step
        # W sees N_OBS inputs of unit scale: its step is divided by N_OBS so that W·o moves μ no more
        # than b does (otherwise 12 random-walking weights make the policy wander on reward noise)
        self.W = (1.0 - decay) * self.W + step.T @ self.obs / (self.n_groups * N_OBS)
        if math.isfinite(r[0]):
            d = r[MEAN] - r[0] if math.isfinite(r[MEAN]) else worst - r[0]
            self.gate.after_cycle(d, self.pair_noise())

    def _warmdown_noise(self) -> float:
        """The warmdown test's noise scale: the larger of the main gate's RMS of d and the pair noise."""
        known = [v for v in (math.sqrt(self.gate.d_sq), self.pair_noise()) if math.isfinite(v)]
        return max(known, default=0.0)

    def pair_noise(self) -> float:
        """The standard deviation of d = R_μ − R₀ under the null: d is a difference of four late-half
        level means of K/2 log-losses each with residual noise ν, so sd = 2ν/√(K/2) = 2√2·ν/√K."""
        return 2.0 * math.sqrt(2.0 * self.noise_sq / self.window)

    # ---- reporting ----------------------------------------------------------------------------
    def report(self) -> dict:
        """Plain-number summary of what the brain has measured (mean advantage > 0: brain beat neutral)."""
        return {
            "windows": self.n_windows, "cycles": self.n_cycles, "alpha": self.alpha,
            "mean_advantage_vs_neutral": self.gate.mean_advantage(), "pairs": self.gate.n_pairs,
            "grows": self.gate.n_grows, "shrinks": self.gate.n_shrinks,
            "bad_windows": self.n_bad_windows, "skipped_losses": self.n_skipped,
            "policy_norm": float(np.sqrt(np.sum(self.W ** 2) + np.sum(self.b ** 2))),
            "mean_decisions": {k: float(np.mean(self.decisions[:, i])) for i, k in enumerate(KNOBS)},
            "warmdown": self.warmdown.report(), "ladder": self.ladder.report(),
        }
