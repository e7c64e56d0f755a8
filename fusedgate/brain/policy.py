"""The OptBrain's learner: observations -> a Gaussian policy over three knobs, trained by antithetic ES,
with the scale knob also following a measured hypergradient.

Pure numpy (no torch), shared by the torch wrapper and numpy mode. Time is cut into *windows* of K
steps; the knobs are held fixed over a window. After a few neutral warm-up windows (evidence for the
normalisers; the run is bit-identical to the base optimizer until then) the brain runs *cycles* of
three windows in a random order:

    +  z = α·(μ + σ⊙ε)      −  z = α·(μ − σ⊙ε)      c  the control: z = 0 (exactly neutral) in every
                                                       other cycle, z = α·μ (the policy mean) in the rest

with ε ~ N(0, I) per group and knob, μ_g = b_g + W·o_g a linear policy of the normalised
observation o_g (6 loss features + 7 features of group g), σ the exploration scale and α ∈ [α_min, 1]
the trust. A knob vector z is mapped to (scale, clip, dampen) by

    scale = exp(clamp(z₀, ln 0.01, ln 10))    clip = exp(clamp(z₁, ln 0.1, ln 5))    dampen = clamp(z₂, 0, 1)

so z = 0 gives exactly (1, 1, 0). The reward R of a window (``window_reward``) is minus the change of
its late log-loss level from the previous window's, minus ``horizon`` × its late slope (horizon 0 by
default: the level reached). Per cycle, with s² a running mean of e²:

    e = (R₊ − R₋)/2            A = clamp(e/s, −3, 3)          (antithetic ES advantage)
    b_g ← (1−λ)·b_g + η·A·σ⊙ε_g        W ← (1−λ)·W + (η/13)·A·mean_g (σ⊙ε_g) o_gᵀ
    D = (R_μ − R₀)/s      (the latest policy-mean window against the latest neutral one)

Every window, the scale bias also follows the overshoot sensor o_g (the cosine between the window-end
gradient and the window's net update): b_g,scale ← b_g,scale − α·κ·r_g·(o_g − o*), the sign of the
one-step hypergradient, a much less noisy estimate of which way the lr should go than loss differences
of minibatch losses (``BrainCore._hypergradient``).

D is the guardrail's measurement: an EMA of D below zero (the policy's mean windows did worse than the
interleaved neutral ones) multiplies α by 0.8 (toward neutral); otherwise α grows by 1.25 up to 1. It
compares the policy *mean*, not the ± windows' average, so the brain is not charged for the cost of
its own exploration (which at a too-large lr can be a blow-up of the + window) — and the neutral
windows, which undo a learnt decay or repeat a mis-set lr, are half as frequent. A window whose loss
is not finite counts as 3·s worse than the worst finite window of its cycle and halves α at once, as
does a brain window whose late loss level is twice the previous window's (a blow-up). The random order
of the windows makes the loss's natural decay over time an unbiased noise term in e and D.
"""

from __future__ import annotations

import math

import numpy as np

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
ROLES = (1, -1, 0)  # +ε, −ε, neutral control
MEAN = 2            # the role of a window at the policy mean α·μ (no noise)
BLOWUP = math.log(2.0)  # a brain window whose late loss level is 2× the previous window's: a blow-up


class BrainError(ValueError):
    """Bad input to the OptBrain, or a brain file that is corrupt or does not match."""


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
    losses = np.asarray(losses, dtype=np.float64)
    if losses.size < 2 or not np.all(np.isfinite(losses)) or np.any(losses <= 0):
        return math.nan, math.nan
    y = np.log(losses[losses.size // 2:])
    level = float(np.mean(y))
    slope = 0.0
    if y.size >= 2:
        t = np.arange(y.size, dtype=np.float64)
        t -= t.mean()
        slope = float(np.dot(t, y - level) / np.dot(t, t))
    change = level - prev_level if math.isfinite(prev_level) else 0.0
    return -(change + horizon * slope), level


def window_progress(losses: np.ndarray) -> tuple[float, float]:
    """(progress, noise) of one window: progress = -K·slope of the least-squares fit of log-loss on
    step index, noise = std of its residuals. NaN when a loss is not finite or not positive."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.size < 2 or not np.all(np.isfinite(losses)):
        return math.nan, math.nan
    y = np.log(np.maximum(losses, 1e-30))
    t = np.arange(losses.size, dtype=np.float64)
    t -= t.mean()
    slope = float(np.dot(t, y - y.mean()) / np.dot(t, t))
    resid = y - y.mean() - slope * t
    return -slope * losses.size, float(np.sqrt(np.mean(resid * resid)))


class BrainCore:
    """The learner. ``end_window(losses, group_features)`` -> the (G, 3) knobs for the next window."""

    def __init__(self, n_groups: int, window: int = 10, explore: float = 1.0, policy_lr: float = 0.3,
                 decay: float = 0.02, warmup_windows: int = 3, alpha_min: float = 0.05, seed: int = 0,
                 sigma: tuple[float, float, float] = (0.25, 0.25, 0.1), total_steps: int | None = None,
                 horizon: float = 0.0, exploit: float = 0.0, mean_control: bool = True,
                 hypergrad: float = 0.5, overshoot_target: float = 0.1):
        if not isinstance(n_groups, int) or isinstance(n_groups, bool) or not 1 <= n_groups <= 1024:
            raise BrainError(f"n_groups={n_groups!r}: expected an integer in [1, 1024]")
        if not isinstance(window, int) or isinstance(window, bool) or not 3 <= window <= 100_000:
            raise BrainError(f"window={window!r}: expected an integer >= 3")
        for name, v, lo, hi in (("explore", explore, 0.0, 10.0), ("policy_lr", policy_lr, 0.0, 10.0),
                                ("decay", decay, 0.0, 1.0), ("alpha_min", alpha_min, 0.0, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise BrainError(f"{name}={v!r}: expected a number in [{lo}, {hi}]")
        if not isinstance(warmup_windows, int) or warmup_windows < 1:
            raise BrainError(f"warmup_windows={warmup_windows!r}: expected an integer >= 1")
        if total_steps is not None and (not isinstance(total_steps, int) or isinstance(total_steps, bool)
                                        or total_steps < 1):
            raise BrainError(f"total_steps={total_steps!r}: expected a positive integer or None")
        for name, v, lo, hi in (("horizon", horizon, 0.0, 1e9), ("exploit", exploit, 0.0, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise BrainError(f"{name}={v!r}: expected a number in [{lo}, {hi:g}]")
        self.n_groups, self.window, self.seed = n_groups, window, int(seed)
        self.explore, self.policy_lr, self.decay = float(explore), float(policy_lr), float(decay)
        self.warmup_windows, self.alpha_min = warmup_windows, float(alpha_min)
        self.total_steps = int(total_steps or 0)     # 0: unknown
        self.horizon, self.exploit = float(horizon), float(exploit)
        self.mean_control = bool(mean_control)
        for name, v, lo, hi in (("hypergrad", hypergrad, 0.0, 10.0), ("overshoot_target", overshoot_target, -1.0, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise BrainError(f"{name}={v!r}: expected a number in [{lo}, {hi}]")
        self.hypergrad, self.overshoot_target = float(hypergrad), float(overshoot_target)
        self.reliability = np.ones(n_groups)        # per group: min(elements, sketch size)/sketch size
        self.last_r0 = math.nan                     # reward of the latest neutral control window
        self.last_rmu = math.nan                    # reward of the latest policy-mean window
        self.prev_level = math.nan                  # the previous window's late log-loss level
        self.sigma = np.asarray(sigma, dtype=np.float64) * self.explore
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        g = n_groups
        self.W = np.zeros((3, N_OBS))               # shared policy weights
        self.b = np.zeros((g, 3))                   # per-group policy bias
        self.loss_norm = RunningNorm(N_LOSS_FEATURES)
        self.group_norm = RunningNorm((g, N_GROUP_FEATURES))
        self.alpha = 1.0                            # trust, shrunk toward neutral by the guardrail
        self.e_sq = 0.0                             # running mean of e² (advantage scale)
        self.ema_d = 0.0                            # EMA of D, the brain-vs-neutral advantage
        self.n_windows = 0
        self.n_cycles = 0
        self.n_shrinks = 0
        self.n_bad_windows = 0
        self.sum_d = 0.0
        self.n_d = 0                                # guardrail measurements so far
        self.prev_mean = math.nan                   # log mean loss of the previous window
        self.first_mean = math.nan                  # log mean loss of the first window
        self.slow_mean = math.nan                   # slow EMA of log mean loss
        self.cycle_order = np.zeros(3, dtype=np.int64)
        self.cycle_pos = 0
        self.cycle_r = np.zeros(3)
        self.eps = np.zeros((g, 3))
        self.mu = np.zeros((g, 3))
        self.obs = np.zeros((g, N_OBS))
        self.z = np.zeros((g, 3))                   # current policy-space decision
        self.decisions = knobs_from_z(self.z)       # current knobs, exactly (1, 1, 0) at start

    # ---- observations -------------------------------------------------------------------------
    def _loss_features(self, losses: np.ndarray) -> np.ndarray:
        progress, noise = window_progress(losses)
        finite = losses[np.isfinite(losses) & (losses > 0)]
        log_mean = float(np.log(np.mean(finite))) if finite.size else math.nan
        if math.isnan(self.first_mean):
            self.first_mean = log_mean
        if math.isnan(self.slow_mean):
            self.slow_mean = log_mean
        time = ((self.n_windows + 1) * self.window / self.total_steps if self.total_steps
                else math.log1p(self.n_windows))
        feats = np.array([progress, math.log(noise + 1e-8), log_mean - self.prev_mean,
                          log_mean - self.first_mean, log_mean - self.slow_mean, time])
        if math.isfinite(log_mean):
            self.prev_mean = log_mean
            self.slow_mean = 0.9 * self.slow_mean + 0.1 * log_mean
        return feats

    # ---- the window / cycle machine -----------------------------------------------------------
    def end_window(self, losses: np.ndarray, group_features: np.ndarray) -> np.ndarray:
        """Consume one finished window: its K losses in time order and the (G, 6) group features
        averaged over it. Learns when a cycle completes and returns the knobs for the next window."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        feats = np.asarray(group_features, dtype=np.float64)
        if losses.shape != (self.window,):
            raise BrainError(f"end_window: expected {self.window} losses, got {losses.shape[0]}")
        if feats.shape != (self.n_groups, N_GROUP_FEATURES):
            raise BrainError(f"end_window: expected group features of shape "
                             f"{(self.n_groups, N_GROUP_FEATURES)}, got {feats.shape}")
        lf = self._loss_features(losses)
        self.loss_norm.update(lf)
        self.group_norm.update(feats)
        self.n_windows += 1
        done = self.n_windows * self.window
        horizon = min(self.horizon, max(self.total_steps - done, 0)) if self.total_steps else self.horizon
        reward, level = window_reward(losses, self.prev_level, horizon)
        in_cycle = self.n_windows > self.warmup_windows and self.cycle_pos < 3
        brain_window = in_cycle and int(self.cycle_order[self.cycle_pos]) != 0 and np.any(self.z != 0)
        blowup = brain_window and math.isfinite(level) and level - self.prev_level > BLOWUP
        if math.isfinite(level):
            self.prev_level = level
        if not math.isfinite(reward) or blowup:
            self.n_bad_windows += 1
            self.alpha = max(self.alpha * 0.5, self.alpha_min)
        if self.n_windows < self.warmup_windows:
            return self.decisions
        self._hypergradient(feats)
        if self.total_steps and done >= (1.0 - self.exploit) * self.total_steps and self.exploit > 0:
            # the last ``exploit`` fraction of the run: no more exploration or control windows, the
            # trusted policy mean α·μ of the current observation is applied (nothing is learnt)
            self._observe(lf, feats)
            self.z = self.alpha * (self.b + self.obs @ self.W.T)
            self.decisions = knobs_from_z(self.z)
            self.cycle_pos = 0
            return self.decisions
        if self.n_windows > self.warmup_windows:
            self.cycle_r[self.cycle_pos] = reward
            self.cycle_pos += 1
            if self.cycle_pos == 3:
                self._learn()
        if self.n_windows == self.warmup_windows or self.cycle_pos == 3:
            self._start_cycle(lf, feats)
        self._set_decision()
        return self.decisions

    def _hypergradient(self, feats: np.ndarray) -> None:
        """The scale bias follows the measured overshoot: b_scale ← b_scale − κ·(o − o*), with o the
        cosine between the window-end gradient and the window's net update (> 0: the update went past
        the valley floor along its own direction, the lr is too large for the next step; < 0: the
        gradient still points where the update went, the lr is too small), weighted by the group's
        ``reliability`` (set by the wrapper from the group sizes) — the sign of the one-step
        hypergradient d loss / d log lr, measured with far less noise than a loss difference. o* > 0
        is the overshoot tolerated (a greedy o* = 0 would shrink the lr for the next step's sake only:
        the short-horizon bias). The guardrail's α scales this bias like any other part of μ."""
        o = feats[:, GROUP_FEATURES.index("overshoot")]
        if self.hypergrad == 0.0 or self.n_windows < 2 or not np.all(np.isfinite(o)):
            return
        lo, hi = math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])
        # distrusted (α < 1): it drifts slower; a group with fewer elements than the sketch measures o on
        # fewer coordinates (a bias of 1 element: a coin flip), so it drifts by that fraction
        step = self.alpha * self.hypergrad * self.reliability * (o - self.overshoot_target)
        self.b[:, 0] = np.clip(self.b[:, 0] - step, lo, hi)

    def _observe(self, lf: np.ndarray, feats: np.ndarray) -> None:
        lo = self.loss_norm.normalise(lf)
        go = self.group_norm.normalise(feats)
        self.obs = np.concatenate([np.broadcast_to(lo, (self.n_groups, N_LOSS_FEATURES)), go], axis=1)

    def _start_cycle(self, lf: np.ndarray, feats: np.ndarray) -> None:
        self._observe(lf, feats)
        self.mu = self.b + self.obs @ self.W.T
        self.eps = self.rng.standard_normal((self.n_groups, 3))
        roles = list(ROLES)
        if self.mean_control and self.n_cycles % 2 == 1:
            roles[2] = MEAN            # every other cycle the third window tests the policy mean
        self.cycle_order = self.rng.permutation(np.array(roles, dtype=np.int64))
        self.cycle_pos = 0
        self.cycle_r[:] = 0.0

    def _set_decision(self) -> None:
        role = int(self.cycle_order[self.cycle_pos])
        if role == 0:
            self.z = np.zeros((self.n_groups, 3))
        elif role == MEAN:
            self.z = self.alpha * self.mu
        else:
            self.z = self.alpha * (self.mu + role * self.sigma * self.eps)
        self.decisions = knobs_from_z(self.z)

    def _learn(self) -> None:
        r = {int(role): float(self.cycle_r[i]) for i, role in enumerate(self.cycle_order)}
        finite = [v for v in r.values() if math.isfinite(v)]
        if not finite:
            self.n_cycles += 1
            return
        s = math.sqrt(self.e_sq) if self.e_sq > 0 else 0.0
        worst = min(finite) - 3.0 * s
        control = MEAN if MEAN in r else 0
        rp, rm, r0 = (v if math.isfinite(v) else worst for v in (r[1], r[-1], r[control]))
        e = 0.5 * (rp - rm)
        self.n_cycles += 1
        w = max(1.0 / self.n_cycles, 0.05)
        self.e_sq = (1.0 - w) * self.e_sq + w * e * e
        s = math.sqrt(self.e_sq) + 1e-12
        adv = float(np.clip(e / s, -3.0, 3.0))
        step = self.policy_lr * adv * (self.sigma * self.eps)          # (G, 3) in policy units
        self.b = (1.0 - self.decay) * self.b + step
        # W sees N_OBS inputs of unit scale: its step is divided by N_OBS so that W·o moves μ no more
        # than b does (otherwise 12 random-walking weights make the policy wander on reward noise)
        self.W = (1.0 - self.decay) * self.W + step.T @ self.obs / (self.n_groups * N_OBS)
        if not self.mean_control:
            d = float(np.clip((0.5 * (rp + rm) - r0) / s, -3.0, 3.0))
        else:
            # the guardrail's D: the latest policy-mean window against the latest neutral one (one of
            # each every two cycles); the ± windows' mean would charge the policy for its exploration
            if control == MEAN:
                self.last_rmu = r0
            else:
                self.last_r0 = r0
            if not (math.isfinite(self.last_rmu) and math.isfinite(self.last_r0)):
                return
            d = float(np.clip((self.last_rmu - self.last_r0) / s, -3.0, 3.0))
        self.sum_d += d
        self.n_d += 1
        self.ema_d = d if self.n_d == 1 else 0.8 * self.ema_d + 0.2 * d
        if self.ema_d < 0.0:
            self.alpha = max(self.alpha * 0.8, self.alpha_min)
            self.n_shrinks += 1
        else:
            self.alpha = min(self.alpha * 1.25, 1.0)

    # ---- reporting ----------------------------------------------------------------------------
    def report(self) -> dict:
        """Plain-number summary of what the brain has measured (mean D > 0: brain beat neutral)."""
        return {
            "windows": self.n_windows, "cycles": self.n_cycles, "alpha": self.alpha,
            "mean_advantage_vs_neutral": self.sum_d / self.n_d if self.n_d else 0.0,
            "ema_advantage_vs_neutral": self.ema_d, "shrinks": self.n_shrinks,
            "bad_windows": self.n_bad_windows, "policy_norm": float(np.sqrt(np.sum(self.W ** 2) +
                                                                              np.sum(self.b ** 2))),
            "mean_decisions": {k: float(np.mean(self.decisions[:, i])) for i, k in enumerate(KNOBS)},
        }
