"""Composite scoring, the win criterion and the Pareto frontier.

A candidate run is compared with the baseline run of the same (preset, steps, seed, corpus): the
same data order, init, LR schedule and budget. From the two runs (``final_val_bpb``, ``val_curve``,
``train_curve``, ``tokens_per_s``) we compute, per seed:

    bpb_gain          baseline final val bpb − candidate final val bpb          (> 0 is better)
    auc_gain          mean val bpb of the baseline curve − that of the candidate, where the mean is the
                      trapezoid area under val_bpb(step) divided by the number of steps
    speedup           1 − t/T, t = the first step (linearly interpolated between evals) at which the
                      candidate's val bpb reaches the baseline's final val bpb, T = the run length;
                      0 if it never does
    throughput_ratio  baseline median step time ÷ candidate median step time (the step times are the
                      differences of the train curve's cumulative wall_s; both runs process the same
                      tokens per step). The median ignores the compile/warm-up first steps and the
                      odd stall of a shared machine; without a train curve, tokens/s is used.
    spikes            train steps whose loss exceeds 1.25 × the EMA (decay 0.9) of the losses before it
    stability         1 / (1 + spikes); 0 for a diverged or failed run

    score = bpb_gain + 0.5·auc_gain + 0.01·speedup + 0.02·ln(clamp(throughput_ratio, 0.5, 2))
            − 0.02·(1 − stability)

in bpb units, so a 0.01 bpb gain at the end outweighs everything else of similar size. The search
*ranks* by ``rank_score``, the same sum without the throughput term: wall-clock ratios vary from run to
run, and a ranking that depends on them would make a resumed search choose differently from the
uninterrupted one; throughput enters the decision only through the win rule's threshold. A diverged
(NaN/inf) or failed run scores ``FAIL_SCORE`` and ranks below every finished run.

Across seeds the score is the mean. The **win** rule is statistical (``judge``, with the numbers
from ``fusedgate.search.stats`` and the noise floor measured at the confirmation horizon): over at least
``WIN_MIN_SEEDS`` seeds with none failed, the one-sided 95 % paired-t lower bound on the mean bpb gain
over the *tuned* baseline is above 0, the mean gain is at least the minimal effect (the larger of the
minimal detectable effect at that horizon and seed count, and ``VAL_SE_TARGET``), the mean throughput
ratio is at least ``WIN_THROUGHPUT``, and the horizon is not too short to tell lr scales apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fusedgate.search import stats

FAIL_SCORE = -10.0
WIN_MIN_SEEDS = 5
WIN_THROUGHPUT = 0.95
VAL_SE_TARGET = 0.002  # bpb: the val-set sampling error a final evaluation must reach
SPIKE_FACTOR = 1.25
SPIKE_EMA = 0.9


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def mean_curve(curve: Sequence[dict], key: str = "val_bpb") -> float:
    """Trapezoid area under key(step) divided by the step span (= the mean over the run)."""
    pts = [(c["step"], c[key]) for c in curve]
    if len(pts) == 1:
        return float(pts[0][1])
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


def time_to_target(curve: Sequence[dict], target: float) -> float | None:
    """First step (linearly interpolated) at which val_bpb <= target, or None if never."""
    prev = None
    for c in curve:
        if c["val_bpb"] <= target:
            if prev is None or prev["val_bpb"] == c["val_bpb"]:
                return float(c["step"])
            frac = (prev["val_bpb"] - target) / (prev["val_bpb"] - c["val_bpb"])
            return prev["step"] + frac * (c["step"] - prev["step"])
        prev = c
    return None


def count_spikes(train_curve: Sequence[dict]) -> int:
    """Steps whose loss is non-finite or exceeds SPIKE_FACTOR × the EMA of the previous losses."""
    spikes, ema = 0, None
    for c in train_curve:
        loss = c["loss"]
        if not _finite(loss):
            spikes += 1
            continue
        if ema is not None and loss > SPIKE_FACTOR * ema:
            spikes += 1
        ema = loss if ema is None else SPIKE_EMA * ema + (1 - SPIKE_EMA) * loss
    return spikes


def median_step_time(train_curve: Sequence[dict]) -> float | None:
    """Median of the per-step wall times (differences of the cumulative ``wall_s``; the first step's
    time is its own ``wall_s``)."""
    walls = [c["wall_s"] for c in train_curve]
    if not walls:
        return None
    dts = sorted([walls[0]] + [b - a for a, b in zip(walls, walls[1:])])
    mid = len(dts) // 2
    return dts[mid] if len(dts) % 2 else (dts[mid - 1] + dts[mid]) / 2


def throughput_ratio(candidate: dict, baseline: dict) -> float:
    tc, tb = median_step_time(candidate.get("train_curve") or []), median_step_time(baseline.get("train_curve") or [])
    if tc and tb:
        return tb / tc
    return candidate["tokens_per_s"] / baseline["tokens_per_s"] if baseline.get("tokens_per_s") else 1.0


def run_ok(run: dict) -> bool:
    return run.get("status") == "ok" and _finite(run.get("final_val_bpb"))


def compare(candidate: dict, baseline: dict) -> dict:
    """Per-seed metrics of a candidate run against the baseline run (see the module docstring)."""
    if not run_ok(baseline):
        raise ValueError("the baseline run itself failed; cannot score against it")
    if not run_ok(candidate):
        return {
            "failed": True,
            "bpb_gain": None,
            "auc_gain": None,
            "speedup": 0.0,
            "throughput_ratio": None,
            "spikes": None,
            "stability": 0.0,
            "score": FAIL_SCORE,
            "rank_score": FAIL_SCORE,
        }
    bpb_gain = baseline["final_val_bpb"] - candidate["final_val_bpb"]
    auc_gain = mean_curve(baseline["val_curve"]) - mean_curve(candidate["val_curve"])
    horizon = candidate["val_curve"][-1]["step"] or 1
    t = time_to_target(candidate["val_curve"], baseline["final_val_bpb"])
    speedup = 0.0 if t is None else max(0.0, 1.0 - t / horizon)
    ratio = throughput_ratio(candidate, baseline)
    spikes = count_spikes(candidate["train_curve"])
    stability = 1.0 / (1.0 + spikes)
    rank_score = bpb_gain + 0.5 * auc_gain + 0.01 * speedup - 0.02 * (1.0 - stability)
    score = rank_score + 0.02 * math.log(min(max(ratio, 0.5), 2.0))
    return {
        "failed": False,
        "val_se_paired": stats.paired_val_se(
            baseline.get("final_val_batches") or [], candidate.get("final_val_batches") or []
        ),
        "bpb_gain": bpb_gain,
        "auc_gain": auc_gain,
        "speedup": speedup,
        "throughput_ratio": ratio,
        "spikes": spikes,
        "stability": stability,
        "score": score,
        "rank_score": rank_score,
    }


def aggregate(per_seed: Sequence[dict]) -> dict:
    """Combine per-seed ``compare`` results: mean score, mean metrics over finished seeds, and the
    paired statistics of the bpb gain (sd, one-sided 95 % lower bound). ``win`` is False until
    ``judge`` decides it against a noise floor."""
    n = len(per_seed)
    ok = [m for m in per_seed if not m["failed"]]
    avg = lambda key: sum(m[key] for m in ok) / len(ok) if ok else None
    gains = [m["bpb_gain"] for m in ok]
    out = {
        "n_seeds": n,
        "n_failed": n - len(ok),
        "score": sum(m["score"] for m in per_seed) / n if n else FAIL_SCORE,
        "rank_score": sum(m.get("rank_score", m["score"]) for m in per_seed) / n if n else FAIL_SCORE,
        "bpb_gain": avg("bpb_gain"),
        "auc_gain": avg("auc_gain"),
        "speedup": avg("speedup"),
        "throughput_ratio": avg("throughput_ratio"),
        "stability": sum(m["stability"] for m in per_seed) / n if n else 0.0,
        "gains": gains,
        "gain_sd": stats.mean_sd(gains)[1],
        "gain_lower95": stats.lower_bound(gains),
        "seeds_with_gain": sum(1 for g in gains if g > 0),
        "win": False,
    }
    return out


def judge(agg: dict, floor: dict | None) -> dict:
    """The win verdict of an aggregate against a noise floor (``floor``: ``min_effect``, ``too_short``,
    from ``tournament.noise_floor``). Returns ``{"win": bool, "reasons": [why not, ...]}``."""
    reasons = []
    if floor is None:
        reasons.append("no noise floor yet (the tuned-baseline sweep is incomplete)")
    elif floor["too_short"]:
        reasons.append("horizon too short for the noise floor")
    if agg["n_seeds"] < WIN_MIN_SEEDS:
        reasons.append(f"{agg['n_seeds']} seeds < {WIN_MIN_SEEDS}")
    if agg["n_failed"]:
        reasons.append(f"{agg['n_failed']} failed seed(s)")
    lb = agg["gain_lower95"]
    if not (_finite(lb) and lb > 0):
        reasons.append("95% lower bound on the gain is not above 0")
    if floor is not None and _finite(floor.get("min_effect")) and not (
        _finite(agg["bpb_gain"]) and agg["bpb_gain"] >= floor["min_effect"]
    ):
        reasons.append(f"mean gain below the minimal effect {floor['min_effect']:.4f}")
    if not (_finite(agg["throughput_ratio"]) and agg["throughput_ratio"] >= WIN_THROUGHPUT - 1e-9):
        reasons.append(f"throughput below {WIN_THROUGHPUT}x")
    return {"win": not reasons, "reasons": reasons}


def win_criterion_multi(cfg) -> str:
    """The multi-horizon win rule of a search configuration, in words."""
    others = ", ".join(f"x{sc:g}" for sc in cfg.lr_scales if sc != 1.0) or "none"
    return (
        f"A candidate wins only if, at every confirmation horizon ({', '.join(map(str, cfg.horizons))} steps), over "
        f">= {WIN_MIN_SEEDS} seeds with none failed, the one-sided 95% paired-t lower bound on its mean val-bpb "
        f"gain over the tuned reference (FusedGate neutral at its best lr scale at that horizon) is above 0, the "
        f"mean gain is at least that horizon's minimal effect (the larger of the minimal detectable effect and "
        f"{VAL_SE_TARGET} bpb), its throughput is >= {WIN_THROUGHPUT}x, and the horizon is long enough for the "
        f"noise floor; it must not be significantly worse than the reference at the other lr scales ({others}, "
        f"same scale for both, at {cfg.horizons[0]} steps); and it is announced only if its gain also holds on the "
        f"held-out transfer configuration ({cfg.transfer_preset}, one-sided 95% lower bound above 0)."
    )


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a Pareto-dominates b (all objectives maximised)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points (every objective maximised), in input order."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def pareto_objectives(agg: dict) -> tuple[float, float, float]:
    """(bpb gain, throughput ratio, stability) of an aggregated result: the axes of the frontier."""
    return (agg["bpb_gain"], agg["throughput_ratio"], agg["stability"])


def ranks(xs: Sequence[float]) -> list[float]:
    """1-based ranks, ties get the average of the ranks they span."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the (tie-averaged) ranks. nan if undefined."""
    if len(xs) != len(ys) or len(xs) < 2:
        return math.nan
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else math.nan
