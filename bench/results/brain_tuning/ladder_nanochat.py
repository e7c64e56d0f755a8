"""Why the lr ladder does not climb on NanoChat at ⅓ of the tuned lr: every decision of its test, logged.

OptBrain with ``ladder=2`` on the tuning family's NanoChat at ⅓ lr, seeds 10-14. Each call of
``LadderTest.knobs_for`` while the ladder tests prints the pair position, the alignment reading it was given, the
reward of the window that ended, the pair noise s, Σd and the status after it (``fusedgate/brain/ladder.py``).
The script wraps that one method to log it; nothing else changes.

    python ladder_nanochat.py adamw > ladder_nanochat_adamw.txt    # ≈ 1 min; likewise sgd
"""

import sys

import torch

from fusedgate.brain import ladder
from fusedgate.brain.tasks import Arm, run_arm


def logging_knobs_for(log: list[dict]):
    """``LadderTest.knobs_for``, appending each decision taken while testing to ``log``."""
    original = ladder.LadderTest.knobs_for

    def knobs_for(self, reward, s, rng, alignment=1.0):
        status, pos, pairs = self.status, self.pos, self.pairs
        scale = original(self, reward, s, rng, alignment)
        if status == ladder.TEST:
            log.append({"pos": pos, "pairs": pairs, "align": round(float(alignment), 3),
                        "reward": round(float(reward), 5), "s": round(float(s), 5), "sum_d": round(self.sum_d, 5),
                        "status": ladder.STATUS[self.status], "level": self.level, "next": scale})
        return scale

    return knobs_for


def main() -> None:
    torch.set_num_threads(1)
    optimizer = sys.argv[1] if len(sys.argv) > 1 else "adamw"
    log: list[dict] = []
    ladder.LadderTest.knobs_for = logging_knobs_for(log)
    for seed in range(10, 15):
        log.clear()
        run = run_arm("nanochat", optimizer, seed, Arm(brain=True, lr_mult=1 / 3), brain_kwargs={"ladder": 2})
        print(seed, optimizer, run["report"]["ladder"], flush=True)
        for entry in log:
            print("   ", entry, flush=True)


if __name__ == "__main__":
    main()
