"""``fusedgate.brain.features.sketch_features``: the feature table against a plain per-group reference."""

import math

import numpy as np
import pytest

from fusedgate.brain.features import TINY, sketch_features


def reference_row(gnorm, m_prev, g, g_prev, p, p_prev, pnorm) -> list[float]:
    """The module docstring's table for one group, written out with numpy's norms and dots."""
    log = lambda x: math.log(max(x, TINY))   # noqa: E731
    row = [log(gnorm), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    if math.isfinite(m_prev):
        row[1] = log(gnorm) - log(m_prev)
    if g_prev is not None:
        denom = np.linalg.norm(g) * np.linalg.norm(g_prev)
        row[2] = float(g @ g_prev / denom) if denom > 0 else 0.0
        row[3] = float(np.mean(np.sign(g) * np.sign(g_prev) < 0))
    if p is not None and p_prev is not None:
        dp = p - p_prev
        row[4] = log(np.linalg.norm(dp)) - log(np.linalg.norm(p_prev))
        denom = np.linalg.norm(g) * np.linalg.norm(dp)
        row[5] = float(g @ dp / denom) if denom > 0 else 0.0
    if pnorm is not None:
        row[6] = log(pnorm)
    return row


@pytest.mark.parametrize("history", ["first window", "gradients only", "everything"])
def test_sketch_features_match_a_per_group_reference(history):
    rng = np.random.default_rng(3)
    groups, size = 4, 32
    gnorm = rng.uniform(0.5, 2.0, groups)
    gnorm[1] = 0.0                                        # a zero gradient: log of the floor
    m_prev = np.array([1.0, 0.7, math.nan, 1.5])          # group 2 has no running norm yet
    g, g_prev, p, p_prev = (rng.standard_normal((groups, size)) for _ in range(4))
    g[1] = 0.0                                            # ... and a zero sketch: cosines 0
    p_prev[3] = p[3]                                      # a group whose sketch did not move
    pnorm = rng.uniform(1.0, 5.0, groups)
    if history == "first window":
        g_prev = p_prev = None
    elif history == "gradients only":
        p = p_prev = pnorm = None
    got = sketch_features(gnorm, m_prev, g, g_prev, p, p_prev, pnorm)
    for k in range(groups):
        g_k, gp_k, p_k, pp_k, pn_k = (None if a is None else a[k] for a in (g, g_prev, p, p_prev, pnorm))
        expect = reference_row(gnorm[k], m_prev[k], g_k, gp_k, p_k, pp_k, pn_k)
        np.testing.assert_allclose(got[k], expect, rtol=1e-12, atol=1e-12)
    assert got.shape == (groups, 7) and np.isfinite(got).all()


def test_sketch_features_keep_a_nan_norm_nan():
    got = sketch_features([math.nan, 1.0], [1.0, 1.0], np.ones((2, 4)))
    assert math.isnan(got[0, 0]) and math.isnan(got[0, 1]) and got[1, 0] == 0.0
