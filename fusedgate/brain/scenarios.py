"""The promises ``fusedgate brain-eval`` measures, as scenarios over paired training arms.

Every scenario compares arms (``fusedgate.brain.tasks.Arm``) trained with the same seed — same init,
same batches, same planted spikes — and summarises each task × optimizer pair over the seeds. With
L(arm) a final loss (lower is better), every ratio with its 95 % t interval over the seeds (of the
mean log-ratio: with few seeds and a chaotic pair it is wide, and says so):

* ``tuned``    — the brain at the base's tuned constant lr: ratio L(brain)/L(base). Promise: never
  more than 1 % worse (geometric-mean ratio ≤ 1.01).
* ``nudge``    — no brain: the base at 1.01× its tuned lr against the base, L(base×1.01)/L(base). The
  pair's *perturbation floor*: how far a change too small to matter moves the final loss of 5 seeds.
  On a chaotic pair (the last iterate's noise dominates its final loss) any deviation from the exact
  base trajectory spreads the tuned-lr ratio this much, whatever the brain does.
* ``lr_x3`` / ``lr_div3`` — the base at 3× and ⅓ of its tuned lr, with and without the brain:
  ratio L(brain@m)/L(base@m), and the fraction of the gap to the tuned lr that the brain closes,
  (L(base@m) − L(brain@m)) / (L(base@m) − L(base@1)). Promise (3×): ratio ≤ 0.9. Beside them, no
  brain, ``restored@m``: the mis-set lr through the brain's neutral warm-up and the tuned lr from its
  first window on (``Arm.restore_lr``) — what setting the lr right as early as a brain may act reaches:
  L(restored@m)/L(base@m) and its gap closed. Where that ratio is above 0.9 at 3×, the cost of the
  mis-set lr is paid during the warm-up, and returning to the tuned lr does not rescue the run.
* ``schedule`` — constant lr + brain vs constant lr vs the warmup + warmdown schedule: the fraction of
  the schedule's gain the brain recovers, (L(const) − L(const+brain)) / (L(const) − L(schedule)).
  Promise: ≥ 30 % on NanoChat.
* ``clipping`` — planted gradient spikes: the brain vs a fixed clip vs neither; ratios to "neither".
* ``fusedgate`` — the brain driving FusedGate's gate keys vs FusedGate alone on NanoChat: the
  ``tuned`` arms of the ``fusedgate`` optimizer on ``nanochat``, shown as a row of its own.

A fraction is computed from the seed-mean losses (the gap of one seed can be ~0 and its ratio
meaningless) and is reported only when the gap is at least 1 % of the loss; ratios are geometric
means over seeds (a diverged run counts as missing and is listed).
"""

from __future__ import annotations

import math
import statistics

from fusedgate.brain.tasks import FAMILIES, Arm
from fusedgate.search.stats import mean_sd, t_quantile

SCENARIOS = ("tuned", "nudge", "lr_x3", "lr_div3", "schedule", "clipping", "fusedgate")

# scenario -> {arm name: Arm}; arms shared by several scenarios are trained once
ARMS: dict[str, dict[str, Arm]] = {
    "tuned": {"base": Arm(), "brain": Arm(brain=True)},
    "nudge": {"base": Arm(), "base×1.01": Arm(lr_mult=1.01)},
    "lr_x3": {"base": Arm(), "base@m": Arm(lr_mult=3.0), "brain@m": Arm(brain=True, lr_mult=3.0)},
    "lr_div3": {"base": Arm(), "base@m": Arm(lr_mult=1 / 3), "brain@m": Arm(brain=True, lr_mult=1 / 3)},
    "schedule": {"const": Arm(), "const+brain": Arm(brain=True), "schedule": Arm(schedule=True)},
    "clipping": {"none": Arm(spikes=True), "fixed clip": Arm(spikes=True, clip=True),
                 "brain": Arm(spikes=True, brain=True)},
    "fusedgate": {"base": Arm(), "brain": Arm(brain=True)},
}
# arms a scenario trains and reports beside its own, but does without: runs saved before them have none
EXTRA_ARMS: dict[str, dict[str, Arm]] = {
    "lr_x3": {"restored@m": Arm(lr_mult=3.0, restore_lr=True)},
    "lr_div3": {"restored@m": Arm(lr_mult=1 / 3, restore_lr=True)},
}
MIN_GAP = 0.01


def arms_for(scenarios: list[str]) -> list[Arm]:
    """The distinct arms the chosen scenarios train (their own and their extra ones), in a stable order."""
    out: list[Arm] = []
    for name in scenarios:
        for arm in (*ARMS[name].values(), *EXTRA_ARMS.get(name, {}).values()):
            if arm not in out:
                out.append(arm)
    return out


def applies(scenario: str, task: str, optimizer: str) -> bool:
    """The ``fusedgate`` scenario is NanoChat × FusedGate only; every other one runs on every pair."""
    return scenario != "fusedgate" or (task == "nanochat" and optimizer == "fusedgate")


def geomean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return math.exp(statistics.fmean(math.log(v) for v in finite)) if finite else math.nan


def geomean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided t interval of the geometric mean: exp(mean ± t·sd/√n) of the logs of the finite
    positive values (the seeds' paired log-ratios); (nan, nan) for fewer than two."""
    logs = [math.log(v) for v in values if math.isfinite(v) and v > 0]
    if len(logs) < 2:
        return math.nan, math.nan
    m, sd = mean_sd(logs)
    half = t_quantile(0.5 + confidence / 2, len(logs) - 1) * sd / math.sqrt(len(logs))
    return math.exp(m - half), math.exp(m + half)


TRAIN_TAIL = 10     # a run's training level: the mean of the last this many points of its train-loss curve


def train_level(curve: list[float]) -> float:
    """The level a run's training loss ends at: the mean of the last ``TRAIN_TAIL`` points of its curve (one
    minibatch loss every 10 steps: its last 100 steps), NaN if any of them is not finite or the curve is empty.
    Beside a final loss on held-out data it tells a slower optimisation from overfitting: the held-out loss up
    while this is down points to the second."""
    tail = [x if x is not None else math.nan for x in curve[-TRAIN_TAIL:]]
    return statistics.fmean(tail) if tail and all(math.isfinite(x) for x in tail) else math.nan


def train_ratio(runs: list[dict], task: str, optimizer: str, arms: dict[str, Arm], seeds) -> float:
    """brain/base of the training levels (``train_level``) of the runs of ``arms`` (its "brain" and "base"),
    paired by seed, geometric mean over ``seeds``."""
    level = {(r["arm"], r["seed"]): train_level(r["curve"]) for r in runs
             if r["task"] == task and r["optimizer"] == optimizer}
    pairs = [(level[(arms["brain"], s)], level[(arms["base"], s)]) for s in seeds]
    return geomean([b / a if a > 0 else math.nan for b, a in pairs])


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _fraction(gain: float, gap: float, level: float) -> float:
    return gain / gap if math.isfinite(gap) and gap >= MIN_GAP * level else math.nan


def summarise(scenario: str, task: str, optimizer: str, finals: dict[str, dict[int, float]]) -> dict:
    """One scenario row for one task × optimizer pair. ``finals``: arm name -> {seed: final loss}."""
    seeds = sorted(set.intersection(*(set(v) for v in finals.values())))
    per = {name: [finals[name][s] for s in seeds] for name in finals}
    mean = {name: _mean(v) for name, v in per.items()}
    row = {"scenario": scenario, "task": task, "optimizer": optimizer, "seeds": seeds, "finals": per,
           "mean": mean, "diverged": {n: sum(not math.isfinite(x) for x in v) for n, v in per.items()}}

    def ratios(a: str, b: str) -> list[float]:
        return [x / y if math.isfinite(x) and math.isfinite(y) and y > 0 else math.nan
                for x, y in zip(per[a], per[b])]

    if scenario == "nudge":
        r = ratios("base×1.01", "base")
        row.update(ratio=geomean(r), ratios=r, wins=sum(x < 1 for x in r if math.isfinite(x)))
    elif scenario in ("tuned", "fusedgate"):
        r = ratios("brain", "base")
        row.update(ratio=geomean(r), ratios=r, wins=sum(x < 1 for x in r if math.isfinite(x)))
    elif scenario in ("lr_x3", "lr_div3"):
        r = ratios("brain@m", "base@m")
        row.update(ratio=geomean(r), ratios=r, wins=sum(x < 1 for x in r if math.isfinite(x)),
                   gap_closed=_fraction(mean["base@m"] - mean["brain@m"], mean["base@m"] - mean["base"],
                                        mean["base"]),
                   mis_set_cost=mean["base@m"] / mean["base"] if mean["base"] > 0 else math.nan)
        restored = "restored@m" in per
        row.update(restored_ratio=geomean(ratios("restored@m", "base@m")) if restored else math.nan,
                   restored_gap_closed=_fraction(mean["base@m"] - mean["restored@m"], mean["base@m"] - mean["base"],
                                                 mean["base"]) if restored else math.nan)
    elif scenario == "schedule":
        r = ratios("const+brain", "const")
        row.update(ratio=geomean(r), ratios=r, wins=sum(x < 1 for x in r if math.isfinite(x)),
                   schedule_ratio=geomean(ratios("schedule", "const")),
                   recovered=_fraction(mean["const"] - mean["const+brain"], mean["const"] - mean["schedule"],
                                       mean["const"]))
    elif scenario == "clipping":
        r = ratios("brain", "none")
        row.update(ratio=geomean(r), ratios=r, wins=sum(x < 1 for x in r if math.isfinite(x)),
                   clip_ratio=geomean(ratios("fixed clip", "none")),
                   brain_vs_clip=geomean(ratios("brain", "fixed clip")))
    if "ratios" in row:
        row["ci95"] = geomean_interval(row["ratios"])
    return row


def family(row: dict) -> str:
    """The row's task family (a task outside both, as in unit tests, counts as ``tuning``)."""
    return next((name for name, tasks in FAMILIES.items() if row["task"] in tasks), "tuning")


def targets(rows: list[dict]) -> list[dict]:
    """The issue's quality targets, each checked per task family against the measured rows (not asserted)."""
    out = []
    for fam in FAMILIES:
        out += _family_targets(fam, [r for r in rows if family(r) == fam])
    return out


def interval_text(row: dict, missing: str = "n/a") -> str:
    """A row's 95 % interval as "lo–hi" (3 significant digits); ``missing`` without one (fewer than two
    seeds, or NaN read back from JSON as None)."""
    lo, hi = row.get("ci95") or (None, None)
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return missing
    return f"{lo:.3g}–{hi:.3g}"


def _pair_cost(row: dict) -> str:
    return f"{row['task']}/{row['optimizer']} ×{row['mis_set_cost']:.3f}"


X3_RESCUE = 0.9      # the 3× target: brain/base at most this


def _number(row: dict, key: str) -> float:
    """``row[key]`` as a float, NaN where it is missing (a run saved before it) or None (NaN in JSON)."""
    value = row.get(key)
    return math.nan if value is None else float(value)


def _x3_target(fam: str, x3: list[dict]) -> dict:
    """The 3× target's row: the pairs rescued (brain/base ≤ 0.9), and for the rest the measured reason a pair
    cannot count, where there is one — the base at 3× within 1 % of its tuned loss or better (nothing to
    rescue), or costing it less than ×1/0.9 (then even the tuned lr's own run is above 0.9 × the 3× run:
    restoring the lr would not reach the target, only beating the tuned lr would), or, measured, the tuned lr
    restored at the end of the brain's warm-up ending above 0.9 × the 3× run (the cost is paid before a brain
    may act) — and the pairs missed without one. ``met`` is the count alone: a reason explains a miss, it does
    not turn it into a rescue."""
    good = [r for r in x3 if r["ratio"] <= X3_RESCUE]
    rest = [r for r in x3 if r not in good]
    free = [r for r in rest if r.get("mis_set_cost", math.nan) <= 1.0 + MIN_GAP]
    short = [r for r in rest if 1.0 + MIN_GAP < r.get("mis_set_cost", math.nan) < 1.0 / X3_RESCUE]
    late = [r for r in rest if r not in free and r not in short and _number(r, "restored_ratio") > X3_RESCUE]
    missed = [r for r in rest if r not in free and r not in short and r not in late]
    reasons = []
    if free:
        reasons.append(f"{len(free)} with nothing to rescue (the base at 3× within 1 % of its tuned loss or better: "
                       f"{', '.join(_pair_cost(r) for r in free)})")
    if short:
        reasons.append(f"{len(short)} where the tuned lr itself would not reach {X3_RESCUE:g} (the base at 3× costs "
                       f"less than ×{1.0 / X3_RESCUE:.2f}: {', '.join(_pair_cost(r) for r in short)})")
    if late:
        names = ", ".join(f"{r['task']}/{r['optimizer']} {r['restored_ratio']:.3f}" for r in late)
        reasons.append(f"{len(late)} where the tuned lr restored after the brain's warm-up would not reach "
                       f"{X3_RESCUE:g} either (restored/base at 3×: {names})")
    measured = f"{len(good)} of {len(x3)}" + (f"; of the rest, {'; '.join(reasons)}" if reasons else "")
    if missed:
        names = ", ".join(f"{r['task']}/{r['optimizer']} {r['ratio']:.3f}" for r in missed)
        measured += f"; {'real misses' if reasons else 'missed'}: {names}"
    return {"family": fam, "target": "3× mis-set lr: brain/base ≤ 0.9 on ≥ 4 of the 6 task × {SGD, AdamW} pairs",
            "measured": measured, "met": len(good) >= min(4, len(x3)) and len(x3) == 6}


def _family_targets(fam: str, rows: list[dict]) -> list[dict]:
    def pick(scenario, **where):
        return [r for r in rows if r["scenario"] == scenario and all(r[k] == v for k, v in where.items())]

    out = []
    tuned = pick("tuned")
    if tuned:
        worst = max(tuned, key=lambda r: r["ratio"] if math.isfinite(r["ratio"]) else math.inf)
        out.append({"family": fam, "target": "tuned lr: never more than 1 % worse than the base (every pair's "
                    "geomean ratio ≤ 1.01)", "measured": f"worst {worst['task']}/{worst['optimizer']} "
                    f"{worst['ratio']:.3f} (95 % CI {interval_text(worst)}); {sum(r['ratio'] <= 1.01 for r in tuned)} "
                    f"of {len(tuned)} pairs ≤ 1.01",
                    "met": all(math.isfinite(r["ratio"]) and r["ratio"] <= 1.01 for r in tuned)})
    div3 = pick("lr_div3")
    if div3:
        good = [r for r in div3 if math.isfinite(r["gap_closed"]) and r["gap_closed"] >= 0.5]
        measured = f"{len(good)} of {len(div3)}"
        restored = [r for r in div3 if math.isfinite(_number(r, "restored_gap_closed"))]
        if restored:   # what the plain correction at the brain's first window reaches, beside it
            reach = sum(_number(r, "restored_gap_closed") >= 0.5 for r in restored)
            measured += f" (the tuned lr restored after the brain's warm-up, no brain: {reach} of {len(div3)})"
        out.append({"family": fam, "target": "⅓ lr: ≥ 50 % of the gap to the tuned lr closed on ≥ 7 of 9 pairs",
                    "measured": measured, "met": len(good) >= 7 and len(div3) == 9})
    x3 = [r for r in pick("lr_x3") if r["optimizer"] in ("sgd", "adamw")]
    if x3:
        out.append(_x3_target(fam, x3))
    sched = pick("schedule", task="nanochat")
    if sched:
        # a schedule that does not lower the constant lr's loss by 1 % has no gain to recover (n/a)
        applicable = [r for r in sched if math.isfinite(r["recovered"])]
        out.append({"family": fam, "target": "constant lr: ≥ 30 % of the schedule's gain recovered on NanoChat",
                    "measured": ", ".join(f"{r['optimizer']} {100 * r['recovered']:.0f} %" if math.isfinite(
                        r["recovered"]) else f"{r['optimizer']} n/a (schedule/const {r['schedule_ratio']:.3f}: no "
                        "gain)" for r in sched),
                    "met": bool(applicable) and all(r["recovered"] >= 0.3 for r in applicable)})
    return out
