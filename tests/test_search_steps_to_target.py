"""Steps-to-target: the ladder, the monotone fit, the interpolation and the ratio, against hand computations."""

import math

import pytest

from fusedgate.search import steps_to_target as stt


def test_rungs_are_horizon_over_ratio():
    assert stt.rungs(300) == [261, 300, 333, 375]
    assert stt.rungs(600, (0.8, 1.0)) == [600, 750]
    with pytest.raises(ValueError, match="horizon"):
        stt.rungs(0)
    with pytest.raises(ValueError, match="ladder ratios"):
        stt.rungs(300, (0.0, 1.0))


def test_nonincreasing_fit_pools_adjacent_violators():
    assert stt.nonincreasing_fit([3.0, 2.0, 1.0]) == [3.0, 2.0, 1.0]
    assert stt.nonincreasing_fit([3.0, 2.0, 2.2, 1.0]) == pytest.approx([3.0, 2.1, 2.1, 1.0])
    assert stt.nonincreasing_fit([1.0, 2.0, 3.0]) == pytest.approx([2.0, 2.0, 2.0])


def test_ratio_interpolates_in_log_steps():
    ladder = {240: 2.10, 300: 2.06, 375: 2.02}
    # the candidate ends at 2.04 after 300 steps: halfway (in bpb) between the 300 and 375 rungs
    h = math.exp(math.log(300) + 0.5 * (math.log(375) - math.log(300)))
    ratio, where = stt.steps_ratio(ladder, 300, 2.04)
    assert where == "inside" and ratio == pytest.approx(300 / h)
    assert stt.steps_ratio(ladder, 300, 2.06) == (pytest.approx(1.0), "inside")
    assert stt.steps_ratio(ladder, 300, 1.90) == (pytest.approx(300 / 375), "beyond")   # censored: ratio < 0.8
    assert stt.steps_ratio(ladder, 300, 2.50) == (pytest.approx(300 / 240), "short")


def test_summary_bound_and_description():
    s = stt.summarize([0.9, 0.95, 0.85, 0.9, 0.92], ["inside"] * 5)
    mean = sum(s["ratios"]) / 5
    sd = math.sqrt(sum((r - mean) ** 2 for r in s["ratios"]) / 4)
    assert s["ratio"] == pytest.approx(mean) and s["ratio_upper95"] == pytest.approx(mean + 2.131847 * sd / 5**0.5)
    assert stt.describe(s).startswith(f"{mean:.3f} (≤ ")
    censored = stt.summarize([0.8, 0.8], ["beyond", "beyond"])
    assert stt.describe(censored) == "< 0.80"
