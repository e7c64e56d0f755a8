"""cnn × FusedGate without any brain: the base at twice its tuned lr against the base, at 300 and 600 steps.

    python bench/results/brain_eval_ladder_fresh_seeds/cnn_lr2.py     # ≈ 2 min on one core

What the lr ladder does when it climbs on this pair (ℓ = 2 from its first rung on), here without the ladder's
test windows: per seed (30–49, the fresh seeds), the final loss (cross-entropy on the 1000 held-out images) and
the training level (the mean of the last 10 points of the run's train-loss curve, one minibatch every 10 steps),
each as the ratio ×2 / ×1; geometric means over seeds, and the count of seeds where ×2 is higher.
"""

from __future__ import annotations

import torch

from fusedgate.brain.scenarios import geomean, train_level
from fusedgate.brain.tasks import Arm, run_arm

SEEDS = range(30, 50)


def main() -> None:
    torch.set_num_threads(1)
    print("| steps | held-out loss ×2/×1 (geomean) | seeds ×2 worse | training level ×2/×1 (geomean) "
          "| seeds ×2 lower |")
    print("|---|---|---|---|---|")
    for steps in (300, 600):
        final, train = [], []
        for seed in SEEDS:
            runs = [run_arm("cnn", "fusedgate", seed, Arm(lr_mult=m), steps=steps) for m in (1.0, 2.0)]
            final.append(runs[1]["final"] / runs[0]["final"])
            train.append(train_level(runs[1]["curve"]) / train_level(runs[0]["curve"]))
        print(f"| {steps} | {geomean(final):.3f} | {sum(r > 1 for r in final)} of {len(final)} | "
              f"{geomean(train):.3f} | {sum(r < 1 for r in train)} of {len(train)} |")


if __name__ == "__main__":
    main()
