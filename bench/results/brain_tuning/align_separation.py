"""Does a window's mean gradient tell a too-small lr from a tuned one better than one step's gradient?

No brain: the base optimizer alone at ⅓ and at 1× its tuned lr, on the tuning family's 9 pairs, seeds 10-29. In
windows of K = 10 steps, the cosine between the gradients of the last steps of two consecutive windows (what the
lr ladder's alignment reads, there on a 64-coordinate sketch per group; here on the whole gradient) and between
the two windows' mean gradients. Per pair and signal: the readings at the end of window 3 (the ladder's start
reading, right after the brain's warm-up), their median at each lr, and the AUC — the probability that a ⅓-lr
seed reads higher than a tuned-lr seed (1: a threshold separates them; 0.5: no information).

    python align_separation.py > align_separation.txt      # ≈ 1.5 min on one CPU thread
"""
import statistics

import torch

from fusedgate.brain.tasks import BUILDERS, TUNING_TASKS, make_optimizer

K, SEEDS = 10, range(10, 30)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm() + 1e-30))


def start_readings(task: str, opt_name: str, seed: int, mult: float) -> tuple[float, float]:
    """(one-step, window-mean) cosine between windows 2 and 3 (0-based: the brain's third and fourth)."""
    problem = BUILDERS[task](seed)
    groups = [dict(g) for g in problem.groups[opt_name]]
    for g in groups:
        g["lr"] *= mult
    opt = make_optimizer(opt_name, groups, problem.steps)
    params = [p for g in opt.param_groups for p in g["params"]]
    last, means, acc = [], [], None
    for step in range(4 * K):
        loss = problem.loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        flat = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None]).double()
        acc = flat.clone() if acc is None else acc + flat
        if step % K == K - 1:
            last.append(flat)
            means.append(acc / K)
            acc = None
        opt.step(loss=loss.detach()) if opt_name == "fusedgate" else opt.step()
    return cosine(last[2], last[3]), cosine(means[2], means[3])


def auc(high: list[float], low: list[float]) -> float:
    """P(a reading of ``high`` > one of ``low``), ties ½."""
    return statistics.fmean(1.0 if h > lo else 0.5 if h == lo else 0.0 for h in high for lo in low)


def main() -> None:
    torch.set_num_threads(1)
    print("| pair | one-step: median at ⅓ / at 1× | AUC | window-mean: median at ⅓ / at 1× | AUC |")
    print("|---|---|---|---|---|")
    for task in TUNING_TASKS:
        for opt_name in ("sgd", "adamw", "fusedgate"):
            read = {m: [start_readings(task, opt_name, s, m) for s in SEEDS] for m in (1 / 3, 1.0)}
            cells = []
            for i in (0, 1):
                small, tuned = [r[i] for r in read[1 / 3]], [r[i] for r in read[1.0]]
                cells += [f"{statistics.median(small):+.2f} / {statistics.median(tuned):+.2f}",
                          f"{auc(small, tuned):.2f}"]
            print(f"| {task}/{opt_name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nseeds {SEEDS.start}-{SEEDS.stop - 1}, K = {K}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
