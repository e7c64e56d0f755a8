"""How much of the ⅓-lr gap a *perfect* OptBrain policy could close under the trust gate (issue 23).

The ⅓-lr rescue needs the scale knob at 3 for most of the run; the trust gate lets the knobs move only
as far as its tests have passed. This measures the ceiling that puts on any policy, by training the base
at ⅓ of its tuned lr with every lr multiplied, window by window, by what a policy that always proposes
the lr back up to the tuned one as far as the gate lets it (μ at the top of the scale range, ln 10, until
α·μ = ln 3; nothing else) would apply if every one of its tests passed — the scale min(3, 10^trust):

    warm-up windows                    1                   (the brain is neutral)
    each cycle (+, −, mean, neutral)   min(3, 10^α), min(3, 10^α), min(3, 10^min(1, probe·α)), 1
                                       (the ± windows' antithetic noise left out: it only costs)

with α of each cycle from ``TrustGate.fastest`` (the gate fed passing pairs only). A second oracle holds
α = 1 from the first cycle: the ceiling of the window/cycle structure alone (warm-up and one neutral
window in four), without the gate's growth schedule. Each is summarised as ``brain-eval``'s ⅓-lr rows
are (``scenarios.summarise``: the gap closed, from seed-mean losses). Nothing is chosen from these runs.

    python -m fusedgate.bench.brain_ceiling --tasks regression,mlp,logreg,cnn,charrnn --seeds 5
"""

from __future__ import annotations

import argparse
import json
import math

from fusedgate.brain.config import BrainConfig
from fusedgate.brain.policy import ROLES, SCALE_RANGE
from fusedgate.brain.safety import TrustGate
from fusedgate.brain.scenarios import summarise
from fusedgate.brain.tasks import OPTIMIZERS, Arm, run_arm

MIS_SET = 1 / 3


def window_factors(config: BrainConfig, steps: int, alphas: list[float]) -> list[float]:
    """The best policy's lr factor in each window of a ``steps``-step run: 1 in the warm-up windows,
    then per cycle (``alphas``: α of each) the ROLES order +, −, mean, neutral (see the module docstring)."""
    windows = math.ceil(steps / config.window)
    out = [1.0] * min(config.warmup_windows, windows)
    cycle = 0
    while len(out) < windows:
        alpha = alphas[min(cycle, len(alphas) - 1)]
        trust = {1: alpha, -1: alpha, 2: min(1.0, config.probe * alpha), 0: 0.0}
        out += [min(1.0 / MIS_SET, SCALE_RANGE[1] ** trust[role]) for role in ROLES]
        cycle += 1
    return out[:windows]


def oracle_factor(config: BrainConfig, steps: int, gated: bool):
    """``lr_factor(step)`` for ``run_arm``: the gate's fastest growth (``gated``) or α = 1 throughout."""
    cycles = math.ceil(steps / config.window / len(ROLES)) + 1
    alphas = TrustGate.of(config).fastest(cycles) if gated else [1.0] * cycles
    factors = window_factors(config, steps, alphas)
    return lambda step: factors[step // config.window]


def ceiling_rows(tasks: list[str], seeds: range, config: BrainConfig) -> list[dict]:
    """Per task × optimizer: the gap closed by the gated oracle and by the α = 1 oracle."""
    rows = []
    for task in tasks:
        for opt in OPTIMIZERS:
            finals = {"base": {}, "base@m": {}, "gate": {}, "structure": {}}
            for seed in seeds:
                base = run_arm(task, opt, seed, Arm())
                finals["base"][seed] = base["final"]
                finals["base@m"][seed] = run_arm(task, opt, seed, Arm(lr_mult=MIS_SET))["final"]
                for name, gated in (("gate", True), ("structure", False)):
                    factor = oracle_factor(config, base["steps"], gated)
                    finals[name][seed] = run_arm(task, opt, seed, Arm(lr_mult=MIS_SET), lr_factor=factor)["final"]
            row = {"task": task, "optimizer": opt}
            for name in ("gate", "structure"):
                summary = summarise("lr_div3", task, opt, {"base": finals["base"], "base@m": finals["base@m"],
                                                            "brain@m": finals[name]})
                row[name] = summary["gap_closed"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="regression,mlp,logreg,cnn,charrnn")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--out", help="JSON file for the rows")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    torch.set_num_threads(1)
    rows = ceiling_rows([t for t in args.tasks.split(",") if t], range(args.seeds), BrainConfig())
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
