"""The sweep that chose OptBrain's trust-gate defaults (issue 23), on the tuning family only.

For each candidate ``BrainConfig`` override (a JSON object of name → overrides), on the tasks given
(regression, mlp) × SGD/AdamW/FusedGate and seeds 10–14 (``--seeds``: another range, never one that reaches
the evaluation's seeds 0–4) — never the held-out family — it trains the arms of three scenarios (tuned lr, 3×
lr, ⅓ lr; ``fusedgate.brain.tasks``) and prints one JSON line per candidate: the worst tuned-lr geomean ratio
brain/base, how many pairs are ≤ 1.01, how many ⅓-lr pairs close ≥ 50 % of the gap, how many SGD/AdamW 3×-lr
pairs reach ≤ 0.9. The rule, fixed before the runs: every tuned ratio ≤ 1.01, then the most rescues, then the
smallest worst ratio.

    python -m fusedgate.bench.brain_sweep --tasks regression,mlp --candidates c.json --out results.json
    python -m fusedgate.bench.brain_sweep --seeds 10-29 --candidates c.json --out results.json
"""

from __future__ import annotations

import argparse
import json
import time

from fusedgate.brain.scenarios import ARMS, summarise

SEEDS = range(10, 15)
EVALUATION_SEEDS = range(0, 5)    # brain-eval's: never a sweep's
OPTIMIZERS = ("sgd", "adamw", "fusedgate")
SCENARIOS = {"tuned": "tuned", "x3": "lr_x3", "div3": "lr_div3"}


def seed_range(text: str) -> range:
    """``"A-B"`` (inclusive) as a range of seeds, refused in one line if malformed or reaching seeds 0–4."""
    try:
        first, last = (int(v) for v in text.split("-"))
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected FIRST-LAST, e.g. 10-29") from None
    if first > last or first < EVALUATION_SEEDS.stop:
        raise SystemExit(f"--seeds {text!r}: expected FIRST ≤ LAST and FIRST ≥ {EVALUATION_SEEDS.stop} "
                         f"(seeds {EVALUATION_SEEDS.start}–{EVALUATION_SEEDS.stop - 1} are the evaluation's)")
    return range(first, last + 1)


def pair_row(final, task: str, optimizer: str, overrides: dict, seeds: range = SEEDS) -> dict:
    """Tuned, 3× and ⅓ lr for one task × optimizer over the sweep's seeds, summarised as ``brain-eval`` does
    (``scenarios.summarise``: geomean ratios brain/base, the ⅓-lr gap closed)."""
    rows = {}
    for short, scenario in SCENARIOS.items():
        finals = {name: {s: final(task, optimizer, s, arm, overrides if arm.brain else None) for s in seeds}
                  for name, arm in ARMS[scenario].items()}
        rows[short] = summarise(scenario, task, optimizer, finals)
    return {"tuned": rows["tuned"]["ratio"], "x3": rows["x3"]["ratio"], "div3_closed": rows["div3"]["gap_closed"]}


def summary(name: str, overrides: dict, rows: dict, wall: float) -> dict:
    return {"name": name, "kw": overrides, "worst_tuned": max(r["tuned"] for r in rows.values()),
            "n_tuned_ok": sum(r["tuned"] <= 1.01 for r in rows.values()),
            "div3_ok": sum(r["div3_closed"] >= 0.5 for r in rows.values()),
            "x3_ok": sum(r["x3"] <= 0.9 for k, r in rows.items() if not k.endswith("fusedgate")),
            "wall": wall, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    import torch

    from fusedgate.brain.tasks import run_arm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="regression,mlp")
    parser.add_argument("--candidates", required=True, help="JSON file: {name: {BrainConfig field: value}}")
    parser.add_argument("--out", required=True, help="JSON file the results are written to (after each candidate)")
    parser.add_argument("--seeds", type=seed_range, default=SEEDS, help="FIRST-LAST (default 10-14; never 0-4)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with open(args.candidates) as f:
        candidates = json.load(f)
    cache: dict = {}

    def final(task, optimizer, seed, arm, overrides):
        key = (task, optimizer, seed, arm, json.dumps(overrides, sort_keys=True))
        if key not in cache:
            cache[key] = run_arm(task, optimizer, seed, arm, brain_kwargs=overrides)["final"]
        return cache[key]

    results = []
    for name, overrides in candidates.items():
        t0 = time.time()
        rows = {f"{task}/{opt}": pair_row(final, task, opt, overrides, args.seeds)
                for task in args.tasks.split(",") for opt in OPTIMIZERS}
        results.append({**summary(name, overrides, rows, time.time() - t0),
                        "seeds": [args.seeds.start, args.seeds.stop - 1]})
        print(json.dumps({k: v for k, v in results[-1].items() if k != "rows"}), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
