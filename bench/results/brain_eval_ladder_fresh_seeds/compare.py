"""Two ``brain-eval`` runs of the tuned-lr scenario on the same seeds, paired: the defaults against the ladder.

    python bench/results/brain_eval_ladder_fresh_seeds/compare.py defaults_300 ladder_300

Per task × optimizer: each arm's brain/base ratio (geometric mean over seeds), the number of the ladder arm's
runs that climbed (ℓ > 1) and the number of its brain runs whose final loss is the defaults' bit for bit; first
a check that every base run is the same in both (the A/B is only paired if it is).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

from fusedgate.brain.scenarios import geomean


def runs_of(folder: str) -> dict[tuple, dict]:
    with open(os.path.join(folder, "brain_eval.json")) as f:
        runs = json.load(f)["runs"]
    return {(r["task"], r["optimizer"], r["seed"], r["arm"]["brain"]): r for r in runs if r["arm"]["lr_mult"] == 1.0}


def main(defaults_dir: str, ladder_dir: str) -> None:
    defaults, ladder = runs_of(defaults_dir), runs_of(ladder_dir)
    bases = [k for k in defaults if not k[3]]
    same_base = sum(defaults[k]["final"] == ladder[k]["final"] for k in bases)
    print(f"base runs identical: {same_base} of {len(bases)}")
    logs = defaultdict(lambda: ([], [], 0, 0))
    for key in (k for k in defaults if k[3]):
        base = key[:3] + (False,)
        d, l_, climbed, same = logs[key[:2]]
        d.append(defaults[key]["final"] / defaults[base]["final"])
        l_.append(ladder[key]["final"] / ladder[base]["final"])
        logs[key[:2]] = (d, l_, climbed + (ladder[key]["report"]["ladder"]["level"] > 1),
                         same + (ladder[key]["final"] == defaults[key]["final"]))
    print("| task | optimizer | defaults brain/base | ladder brain/base | ladder climbed | brain runs identical |")
    print("|---|---|---|---|---|---|")
    for (task, opt), (d, l_, climbed, same) in logs.items():
        print(f"| {task} | {opt} | {geomean(d):.4f} | {geomean(l_):.4f} | "
              f"{climbed} of {len(d)} | {same} of {len(d)} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("defaults_dir", help="a brain-eval --out folder of the defaults' run")
    parser.add_argument("ladder_dir", help="the ladder's run on the same seeds and steps")
    args = parser.parse_args()
    try:
        main(args.defaults_dir, args.ladder_dir)
    except (OSError, ValueError, KeyError) as exc:
        parser.exit(1, f"compare.py: cannot read the runs: {exc}\n")
