"""The statistics behind the win rule, against published tables and direct computation."""

import math
import random

import pytest

from fusedgate.nanochat.train import sampling_error
from fusedgate.search import stats

# one-sided Student t quantiles from standard tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
T_TABLE = {(0.95, 1): 6.314, (0.95, 4): 2.132, (0.95, 7): 1.895, (0.95, 30): 1.697, (0.90, 10): 1.372,
           (0.99, 5): 3.365, (0.80, 4): 0.941, (0.975, 60): 2.000}


def test_t_quantile_matches_tables():
    for (p, df), value in T_TABLE.items():
        assert stats.t_quantile(p, df) == pytest.approx(value, abs=1.5e-3)
        assert stats.t_quantile(1 - p, df) == pytest.approx(-value, abs=1.5e-3)
        assert stats.t_cdf(stats.t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)


def test_t_quantile_matches_scipy_when_present():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 9, 29, 100):
        for p in (0.6, 0.8, 0.95, 0.99):
            assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), abs=1e-7)


def test_lower_bound_covers_the_true_mean_95_percent_of_the_time():
    """Coverage of the one-sided bound on normal differences (5 seeds), 4000 trials: 95 % ± 1.2 %."""
    rng = random.Random(0)
    hits = sum(stats.lower_bound([rng.gauss(0.01, 0.02) for _ in range(5)]) <= 0.01 for _ in range(4000))
    assert abs(hits / 4000 - 0.95) < 0.012


def test_mde_has_the_stated_power():
    """A true gain equal to the MDE is detected (lower bound > 0) in ~80 % of trials."""
    rng = random.Random(1)
    sigma, n = 0.013, 5
    effect = stats.mde(sigma, n)
    assert effect == pytest.approx((2.131847 + 0.940965) * sigma / math.sqrt(n), rel=1e-5)
    hits = sum(stats.lower_bound([rng.gauss(effect, sigma) for _ in range(n)]) > 0 for _ in range(4000))
    assert abs(hits / 4000 - 0.80) < 0.025
    assert math.isnan(stats.mde(sigma, 1)) and math.isnan(stats.lower_bound([0.1]))


def test_pooled_sd():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    expected = math.sqrt((1.0 * 2 + 2.0 * 1) / 3)  # variances 1 (2 dof) and 2 (1 dof)
    assert stats.pooled_sd([a, b, [5.0]]) == pytest.approx(expected)
    assert math.isnan(stats.pooled_sd([[1.0]]))


def test_sampling_errors_against_direct_formulas():
    rng = random.Random(2)
    nbytes = [rng.randint(900, 1100) for _ in range(50)]
    nats = [b * rng.uniform(1.2, 1.6) for b in nbytes]
    ratio = sum(nats) / sum(nbytes)
    resid = [n - ratio * b for n, b in zip(nats, nbytes)]
    var = sum(r * r for r in resid) / 49
    mean_b = sum(nbytes) / 50
    assert sampling_error(nats, nbytes) == pytest.approx(math.sqrt(var / 50) / mean_b / math.log(2))
    other = [n - b * rng.uniform(0.0, 0.02) for n, b in zip(nats, nbytes)]
    d = [x - y for x, y in zip(nats, other)]
    md = sum(d) / 50
    direct = math.sqrt(50 * sum((x - md) ** 2 for x in d) / 49) / (math.log(2) * sum(nbytes))
    a, b = [[n, by] for n, by in zip(nats, nbytes)], [[n, by] for n, by in zip(other, nbytes)]
    assert stats.paired_val_se(a, b) == pytest.approx(direct)
    assert math.isnan(stats.paired_val_se(a, b[:-1]))  # different val sets are not paired
