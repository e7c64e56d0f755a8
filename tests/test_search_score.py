"""Scoring, the win rule, the Pareto frontier and Spearman's rho on hand-made runs."""

import math

import pytest

from fusedgate.search import score


def run(bpb_curve, losses=None, step_s=1.0, steps=100, status="ok"):
    n = len(bpb_curve)
    val = [{"step": round(i * steps / (n - 1)), "val_bpb": v} for i, v in enumerate(bpb_curve)]
    losses = losses or [3.0] * 10
    train = [{"step": i, "loss": x, "wall_s": step_s * (i + 1)} for i, x in enumerate(losses)]
    return {
        "status": status,
        "final_val_bpb": bpb_curve[-1],
        "val_curve": val,
        "train_curve": train,
        "tokens_per_s": 1000.0 / step_s,
    }


def test_compare_by_hand():
    base = run([4.0, 3.0, 2.0], step_s=1.0)
    cand = run([4.0, 2.5, 1.9], step_s=1.25)
    m = score.compare(cand, base)
    assert m["bpb_gain"] == pytest.approx(0.1)
    # mean curves: base (3.5+2.5)/2 = 3.0, cand (3.25+2.2)/2 = 2.725
    assert m["auc_gain"] == pytest.approx(0.275)
    # target 2.0 is crossed between step 50 (2.5) and 100 (1.9): 50 + 50*(0.5/0.6)
    t = 50 + 50 * 0.5 / 0.6
    assert m["speedup"] == pytest.approx(1 - t / 100)
    assert m["throughput_ratio"] == pytest.approx(0.8)
    assert m["spikes"] == 0 and m["stability"] == 1.0
    expected = 0.1 + 0.5 * 0.275 + 0.01 * (1 - t / 100) + 0.02 * math.log(0.8)
    assert m["score"] == pytest.approx(expected)


def test_spikes_and_failures():
    losses = [3.0, 2.9, 2.8, 4.0, 2.7, float("nan"), 2.6]
    # 4.0 > 1.25 * ema (≈2.98) is a spike, the NaN is a spike, the rest are not
    assert score.count_spikes([{"loss": x} for x in losses]) == 2
    base = run([4.0, 2.0])
    m = score.compare(run([4.0, 2.0], losses=[3.0, 2.9, 2.8, 4.0, 2.7]), base)
    assert m["spikes"] == 1 and m["stability"] == 0.5
    assert m["score"] == pytest.approx(0.5 * 0.0 + 0.0 - 0.02 * 0.5)
    failed = score.compare({"status": "diverged", "final_val_bpb": None}, base)
    assert failed["failed"] and failed["score"] == score.FAIL_SCORE and failed["stability"] == 0.0
    with pytest.raises(ValueError):
        score.compare(base, {"status": "failed"})


def test_time_to_target_never_reached_and_median_throughput():
    assert score.time_to_target([{"step": 0, "val_bpb": 5}, {"step": 10, "val_bpb": 4}], 3.0) is None
    # one stalled step (10 s) does not move the median step time
    curve = [{"wall_s": w} for w in (1, 2, 3, 13, 14)]
    assert score.median_step_time(curve) == 1


def per_seed(gains, ratio=1.0, failed=()):
    out = []
    for i, g in enumerate(gains):
        if i in failed:
            out.append(
                {
                    "failed": True,
                    "bpb_gain": None,
                    "auc_gain": None,
                    "speedup": 0.0,
                    "throughput_ratio": None,
                    "stability": 0.0,
                    "score": score.FAIL_SCORE,
                }
            )
        else:
            out.append(
                {
                    "failed": False,
                    "bpb_gain": g,
                    "auc_gain": 0.0,
                    "speedup": 0.0,
                    "throughput_ratio": ratio,
                    "stability": 1.0,
                    "score": g,
                }
            )
    return out


FLOOR = {"min_effect": 0.004, "too_short": False}


def test_win_rule_is_statistical():
    # the old rule's "2 of 3 seeds >= 0.005" passed this; a paired t bound over 5 seeds does not
    noisy = score.aggregate(per_seed([0.02, 0.015, -0.01, -0.012, 0.006]))
    assert noisy["bpb_gain"] > 0.003 and noisy["gain_lower95"] < 0
    verdict = score.judge(noisy, FLOOR)
    assert not verdict["win"] and "95% lower bound on the gain is not above 0" in verdict["reasons"]
    steady = score.aggregate(per_seed([0.006, 0.005, 0.007, 0.0055, 0.0065]))
    assert score.judge(steady, FLOOR) == {"win": True, "reasons": []}
    # the bound: mean − t(0.95; 4) · sd / sqrt(5), t(0.95; 4) = 2.1318 (tables)
    gains = [0.006, 0.005, 0.007, 0.0055, 0.0065]
    m = sum(gains) / 5
    sd = math.sqrt(sum((g - m) ** 2 for g in gains) / 4)
    assert steady["gain_lower95"] == pytest.approx(m - 2.131847 * sd / math.sqrt(5), rel=1e-6)
    # significant but below the minimal effect
    small = score.aggregate(per_seed([0.002, 0.0021, 0.0019, 0.002, 0.002]))
    assert small["gain_lower95"] > 0 and not score.judge(small, FLOOR)["win"]
    assert not score.judge(score.aggregate(per_seed(gains, ratio=0.94)), FLOOR)["win"]  # too slow
    assert score.judge(score.aggregate(per_seed(gains, ratio=0.95)), FLOOR)["win"]
    assert not score.judge(score.aggregate(per_seed(gains[:4])), FLOOR)["win"]  # fewer than 5 seeds
    assert not score.judge(steady, {**FLOOR, "too_short": True})["win"]  # horizon too short
    assert not score.judge(steady, None)["win"]  # no noise floor yet
    agg = score.aggregate(per_seed([0.01] * 5, failed=(2,)))
    assert not score.judge(agg, FLOOR)["win"] and agg["n_failed"] == 1
    assert agg["score"] == pytest.approx((0.04 + score.FAIL_SCORE) / 5)
    assert agg["bpb_gain"] == pytest.approx(0.01)


def test_pareto_front():
    pts = [(0.01, 1.0, 1.0), (0.02, 0.9, 1.0), (0.005, 0.9, 1.0), (0.01, 1.0, 0.5), (0.0, 1.2, 1.0), (0.02, 0.9, 1.0)]
    # 2 is dominated by 0 and 1; 3 by 0; 1 and 5 are equal, so neither dominates the other
    assert score.pareto_front(pts) == [0, 1, 4, 5]


def test_spearman():
    assert score.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert score.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks x = (1.5, 1.5, 3, 4), y = (1, 2, 3, 4); Pearson of those by hand
    rx, ry = [1.5, 1.5, 3, 4], [1, 2, 3, 4]
    mx, my = 2.5, 2.5
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    expected = cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    assert score.spearman([5, 5, 6, 9], [1, 2, 3, 4]) == pytest.approx(expected)
    assert math.isnan(score.spearman([1, 1, 1], [1, 2, 3]))
