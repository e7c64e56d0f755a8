"""Steps-to-target: how many of the reference's steps a candidate's final val bpb is worth.

The reference (FusedGate with the neutral spec, i.e. nanochat's MuonAdamW) is trained on a *ladder* of
horizons around the candidate's horizon H, each run with its own complete schedule (warm-up, warm-down
over its own length, as nanochat does):

    h_k = round(H / r_k)        for the ladder ratios r_k (default 0.8, 0.9, 1.0, 1.15)

so that h_k ranges from 0.87 H to 1.25 H. Per seed the reference's final val bpb b(h) is fitted as a
non-increasing function of ln h (pool-adjacent-violators: seed noise can make two rungs cross) and
interpolated linearly in ln h between rungs. A candidate that ends at b_c after H steps has the

    steps-equivalent ratio  ρ = H / h*,   b(h*) = b_c

the candidate's steps over the steps the reference needs for the same val bpb: modded-nanogpt's
optimization-track measure (a record needing 2690 steps where tuned Muon needs 3250 is ρ = 0.83).
ρ < 1 means fewer steps. A b_c below every rung is *censored*: ρ < min r_k, recorded as min r_k (its
true value is smaller, so an upper bound stays valid); a b_c above every rung gives ρ > max r_k,
recorded as max r_k and flagged (an upper bound is then optimistic, and the report says so).

Over n seeds (the candidate and the ladder share each seed's init and batches):

    mean ρ̄, sample sd s,   one-sided 95 % upper bound  ρ̄ + t(0.95; n − 1) · s / √n

A target such as "ρ ≤ 0.90 with the upper bound below 1.0" is read off these numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from fusedgate.search import stats

LADDER_RATIOS = (0.8, 0.9, 1.0, 1.15)


def rungs(horizon: int, ratios: Sequence[float] = LADDER_RATIOS) -> list[int]:
    """The reference's horizons for a candidate horizon: round(H / r) for each ratio, ascending, distinct."""
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 step, got {horizon}")
    if not ratios or any(not (math.isfinite(r) and 0.1 <= r <= 10) for r in ratios):
        raise ValueError(f"ladder ratios must be finite numbers in [0.1, 10], got {list(ratios)}")
    return sorted({max(1, round(horizon / r)) for r in ratios})


def nonincreasing_fit(values: Sequence[float]) -> list[float]:
    """The least-squares non-increasing sequence closest to ``values`` (pool adjacent violators)."""
    blocks: list[list[float]] = []   # [mean, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def equivalent_steps(ladder: Mapping[int, float], target: float) -> tuple[float, str]:
    """The reference horizon h* at which the fitted b(h) reaches ``target``, and where it lies:
    "inside" the ladder, "beyond" (target below every rung: h* is the longest rung, a lower bound) or
    "short" (target above every rung: h* is the shortest rung, an upper bound)."""
    hs = sorted(ladder)
    if len(hs) < 2:
        raise ValueError("a ladder needs at least two horizons")
    bs = nonincreasing_fit([ladder[h] for h in hs])
    if target < bs[-1]:
        return float(hs[-1]), "beyond"
    if target > bs[0]:
        return float(hs[0]), "short"
    for (h0, b0), (h1, b1) in zip(zip(hs, bs), zip(hs[1:], bs[1:])):
        if b1 <= target <= b0:
            if b0 == b1:
                return float(h0), "inside"
            frac = (b0 - target) / (b0 - b1)
            return math.exp(math.log(h0) + frac * (math.log(h1) - math.log(h0))), "inside"
    return float(hs[-1]), "beyond"  # unreachable: the fit is monotone


def steps_ratio(ladder: Mapping[int, float], horizon: int, candidate_bpb: float) -> tuple[float, str]:
    """ρ = H / h* for one seed (see the module docstring), with ``equivalent_steps``' location."""
    h, where = equivalent_steps(ladder, candidate_bpb)
    return horizon / h, where


def summarize(ratios: Sequence[float], where: Sequence[str] = ()) -> dict:
    """Mean, sd, one-sided 95 % upper bound of per-seed ratios; how many were censored either way."""
    n = len(ratios)
    mean, sd = stats.mean_sd(list(ratios))
    upper = mean + stats.t_quantile(stats.CONFIDENCE, n - 1) * sd / math.sqrt(n) if n >= 2 else math.nan
    return {
        "n": n,
        "ratio": mean,
        "ratio_sd": sd,
        "ratio_upper95": upper,
        "ratios": list(ratios),
        "censored_below": sum(w == "beyond" for w in where),
        "censored_above": sum(w == "short" for w in where),
    }


def describe(summary: dict, ratios: Sequence[float] = LADDER_RATIOS) -> str:
    """One cell of a report: "0.93 (≤ 0.97)", "< 0.80" when every seed is censored below."""
    if not summary or summary.get("n", 0) == 0 or not math.isfinite(summary.get("ratio", math.nan)):
        return "—"
    lo, hi = min(ratios), max(ratios)
    if summary["censored_below"] == summary["n"]:
        return f"< {lo:.2f}"
    if summary["censored_above"] == summary["n"]:
        return f"> {hi:.2f}"
    upper = summary["ratio_upper95"]
    bound = f" (≤ {upper:.3f})" if math.isfinite(upper) else ""
    flags = []
    if summary["censored_below"]:
        flags.append(f"{summary['censored_below']} seed(s) < {lo:.2f}")
    if summary["censored_above"]:
        flags.append(f"{summary['censored_above']} seed(s) > {hi:.2f}")
    return f"{summary['ratio']:.3f}{bound}" + (f" [{'; '.join(flags)}]" if flags else "")
