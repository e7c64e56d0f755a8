"""The statistics of a win: paired gains over seeds, a one-sided confidence bound, the noise floor.

A candidate and the baseline are trained on the same seeds (same init, same batches), so each seed
gives one paired gain dᵢ = bpb(baseline) − bpb(candidate). Over n seeds:

    mean gain         d̄ = Σ dᵢ / n
    paired sd         s = sqrt(Σ (dᵢ − d̄)² / (n − 1))
    lower bound       L = d̄ − t(0.95; n − 1) · s / √n       (one-sided 95 % paired t bound)
    upper bound       U = d̄ + t(0.95; n − 1) · s / √n       (U < 0: significantly worse)
    MDE               (t(0.95; n − 1) + t(0.80; n − 1)) · σ / √n
                      the smallest true mean gain the one-sided 5 % test detects with 80 % power,
                      for a paired-difference standard deviation σ (the noise floor)

The paired t bound is used (not a bootstrap): with 5–10 seeds a bootstrap's resampling distribution
is too coarse, and the t bound is exact for normal differences. ``t_quantile`` is Student's t
quantile, computed by bisection on the CDF (regularised incomplete beta by continued fraction), so
no scipy is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONFIDENCE = 0.95
POWER = 0.80


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on ``t_cdf`` to 1e-10)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    lo, hi = -1e4, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return (lo + hi) / 2


def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); sd is nan for fewer than two values."""
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    m = sum(xs) / n
    if n < 2:
        return m, math.nan
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


def lower_bound(diffs: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """One-sided paired-t lower confidence bound on the mean of ``diffs`` (nan for n < 2)."""
    n = len(diffs)
    m, s = mean_sd(diffs)
    if n < 2:
        return math.nan
    return m - t_quantile(confidence, n - 1) * s / math.sqrt(n)


def upper_bound(diffs: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """One-sided paired-t upper confidence bound on the mean of ``diffs`` (nan for n < 2)."""
    n = len(diffs)
    m, s = mean_sd(diffs)
    if n < 2:
        return math.nan
    return m + t_quantile(confidence, n - 1) * s / math.sqrt(n)


def covers_zero(diffs: Sequence[float], confidence: float = CONFIDENCE) -> bool:
    """Whether the two-sided ``confidence`` paired-t interval of the mean of ``diffs`` contains 0: a
    difference the seeds cannot tell from none (False for n < 2)."""
    n = len(diffs)
    m, s = mean_sd(diffs)
    if n < 2 or not math.isfinite(s):
        return False
    return abs(m) <= t_quantile(0.5 + confidence / 2, n - 1) * s / math.sqrt(n)


def seeds_needed(sigma: float, effect: float, n_max: int = 256, confidence: float = CONFIDENCE,
                 power: float = POWER) -> int | None:
    """The fewest seeds n (2 ≤ n ≤ n_max) whose ``mde(sigma, n)`` is at most ``effect``; None if none is."""
    if not (math.isfinite(sigma) and effect > 0):
        return None
    for n in range(2, n_max + 1):
        if mde(sigma, n, confidence, power) <= effect:
            return n
    return None


def mde(sigma: float, n: int, confidence: float = CONFIDENCE, power: float = POWER) -> float:
    """Minimal detectable mean paired gain for n seeds and paired sd ``sigma`` (nan for n < 2)."""
    if n < 2 or not math.isfinite(sigma):
        return math.nan
    return (t_quantile(confidence, n - 1) + t_quantile(power, n - 1)) * sigma / math.sqrt(n)


def pooled_sd(groups: Sequence[Sequence[float]]) -> float:
    """sqrt of the (n − 1)-weighted mean of the groups' sample variances; nan if no group has 2 values."""
    num = den = 0.0
    for g in groups:
        if len(g) >= 2:
            num += mean_sd(g)[1] ** 2 * (len(g) - 1)
            den += len(g) - 1
    return math.sqrt(num / den) if den else math.nan


def paired_val_se(batches_a: Sequence[Sequence[float]], batches_b: Sequence[Sequence[float]]) -> float:
    """Val-set sampling error (bpb) of bpb(a) − bpb(b) for two models scored on the same val batches
    ([Σ nats, Σ bytes] each): the difference is Σ (aᵢ − bᵢ) / (ln2 · Σ bytes), so its standard error is
    sqrt(m · var(aᵢ − bᵢ)) / (ln2 · Σ bytes) over the m batches. nan unless both used the same batches."""
    m = len(batches_a)
    if m < 2 or m != len(batches_b) or any(x[1] != y[1] for x, y in zip(batches_a, batches_b)):
        return math.nan
    d = [x[0] - y[0] for x, y in zip(batches_a, batches_b)]
    total = sum(x[1] for x in batches_a)
    return math.sqrt(m * mean_sd(d)[1] ** 2) / (math.log(2) * total) if total else math.nan
