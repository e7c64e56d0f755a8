"""``fusedgate brain-eval``: base optimizer vs OptBrain-wrapped, paired by seed, on small real problems.

For every task × optimizer × seed it trains the base optimizer and the same optimizer wrapped in an
``OptBrain`` (same init, same batches) and compares the final loss (see ``fusedgate.brain.tasks``).
It writes ``brain_eval.md`` (table, per-seed numbers, overhead, brain state size) and
``brain_eval.png`` (final-loss ratio brain/base per task × optimizer, dots per seed, median, a line
at 1) into ``--out``. Nothing else is written.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

from fusedgate.brain.tasks import OPTIMIZERS, TASKS


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(choices)}, got {text!r}")
        return items
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=_csv(TASKS), default=list(TASKS), help="comma list (default: all)")
    parser.add_argument("--optimizers", type=_csv(OPTIMIZERS), default=list(OPTIMIZERS),
                        help="comma list (default: sgd,adamw)")
    parser.add_argument("--seeds", type=_positive_int, default=5, help="seeds per task × optimizer (default 5)")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="override every task's step count (default: the task's own)")
    parser.add_argument("--window", type=_positive_int, default=10, help="OptBrain window K (default 10)")
    parser.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default=os.path.join("bench", "results"),
                        help="folder for brain_eval.md and brain_eval.png (default bench/results)")
    parser.add_argument("--no-overhead", action="store_true", help="skip the per-step overhead measurement")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def measure_overhead(steps: int = 60, repeats: int = 5) -> list[dict]:
    """Per-step wall time, base vs brain, on the mlp and nanochat models; alternating blocks, median."""
    from fusedgate.brain import OptBrain
    from fusedgate.brain.tasks import BUILDERS, make_optimizer

    rows = []
    for task in ("mlp", "nanochat"):
        arms = {}
        for arm in ("base", "brain"):
            problem = BUILDERS[task](0)
            base = make_optimizer("adamw", problem.groups["adamw"])
            arms[arm] = (problem, OptBrain(base) if arm == "brain" else base)
        times = {"base": [], "brain": []}
        step = 0
        for _ in range(repeats):
            for arm, (problem, opt) in arms.items():
                t0 = time.perf_counter()
                for s in range(steps):
                    loss = problem.loss_at(step + s)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if arm == "brain":
                        opt.step(loss=loss.detach())
                    else:
                        opt.step()
                times[arm].append((time.perf_counter() - t0) / steps)
            step += steps
        base_ms, brain_ms = (1000 * statistics.median(times[a]) for a in ("base", "brain"))
        n_params = sum(p.numel() for p in arms["base"][0].model.parameters())
        rows.append({"task": task, "params": n_params, "groups": len(arms["brain"][1].param_groups),
                     "base_ms": base_ms, "brain_ms": brain_ms, "overhead": brain_ms / base_ms - 1.0})
    return rows


def state_bytes_8_groups() -> tuple[int, int]:
    import torch

    from fusedgate.brain import OptBrain

    layers = torch.nn.ModuleList([torch.nn.Linear(64, 64) for _ in range(8)])
    brain = OptBrain(torch.optim.AdamW([{"params": list(m.parameters())} for m in layers]))
    numpy_brain = OptBrain(None, n_groups=8)
    return brain.state_nbytes(), numpy_brain.state_nbytes()


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["task"], r["optimizer"]) for r in results}, key=lambda k: (TASKS.index(k[0]), k[1]))
    for task, opt in keys:
        pairs = {}
        for r in results:
            if r["task"] == task and r["optimizer"] == opt:
                pairs.setdefault(r["seed"], {})["brain" if r["brain"] else "base"] = r
        ratios, base_f, brain_f, alphas, advs = [], [], [], [], []
        for seed in sorted(pairs):
            b, w = pairs[seed]["base"], pairs[seed]["brain"]
            base_f.append(b["final"])
            brain_f.append(w["final"])
            ratios.append(w["final"] / b["final"] if b["final"] > 0 else math.nan)
            alphas.append(w["report"]["alpha"])
            advs.append(w["report"]["mean_advantage_vs_neutral"])
        finite = [x for x in ratios if math.isfinite(x)]
        rows.append({"task": task, "optimizer": opt, "seeds": sorted(pairs), "ratios": ratios,
                     "base": base_f, "brain": brain_f, "median": statistics.median(finite) if finite else math.nan,
                     "geomean": math.exp(statistics.fmean(math.log(x) for x in finite)) if finite else math.nan,
                     "wins": sum(x < 1.0 for x in finite), "n": len(ratios),
                     "diverged": sum(not math.isfinite(x) for x in ratios),
                     "alpha": statistics.fmean(alphas), "adv": statistics.fmean(advs)})
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4.2))
    rng = np.random.default_rng(0)
    for i, row in enumerate(rows):
        r = np.array([x for x in row["ratios"] if math.isfinite(x)])
        color = "tab:blue" if row["optimizer"] == "sgd" else "tab:orange"
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(r)), r, color=color, alpha=0.75, s=28, zorder=3)
        ax.hlines(row["median"], i - 0.28, i + 0.28, color="black", lw=2.2, zorder=4)
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
    ax.set_xticks(range(len(rows)), [f"{r['task']}\n{r['optimizer']}" for r in rows])
    ax.set_ylabel("final loss ratio  brain / base")
    ax.set_title("OptBrain vs its base optimizer (dots: seeds, bar: median, < 1 = brain better)")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4g}"


def _command(args) -> str:
    parts = ["fusedgate brain-eval", "--tasks", ",".join(args.tasks), "--optimizers", ",".join(args.optimizers),
             "--seeds", str(args.seeds), "--window", str(args.window), "--threads", str(args.threads)]
    if args.steps:
        parts += ["--steps", str(args.steps)]
    return " ".join(parts + (["--no-overhead"] if args.no_overhead else []))


def markdown(rows, results, args, overhead, state, wall) -> str:
    steps = {(r["task"]): r["steps"] for r in results}
    all_r = [x for row in rows for x in row["ratios"] if math.isfinite(x)]
    lines = [
        "# OptBrain evaluation: final loss, brain-wrapped vs base optimizer",
        "",
        f"Command: `{_command(args)}`",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, torch threads {args.threads}; "
        f"total wall {wall / 60:.1f} min. Tasks and learning rates: `fusedgate/brain/tasks.py` "
        f"(steps: {', '.join(f'{t} {s}' for t, s in steps.items())}). OptBrain defaults, window K={args.window}.",
        "",
        "Ratio = brain final loss / base final loss for the same seed (same init, same batches); "
        "< 1 means the brain helped. `α` = the brain's final trust (1 = full policy, → 0.05 = shrunk to "
        "neutral by the guardrail); `adv` = its mean measured advantage over the interleaved neutral "
        "windows (in units of its reward noise; > 0 = its windows progressed faster).",
        "",
        "| task | optimizer | base final (median) | brain final (median) | ratio median | ratio geomean "
        "| ratio min–max | brain better | diverged | α (mean) | adv (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        fin = [x for x in row["ratios"] if math.isfinite(x)]
        lines.append(
            f"| {row['task']} | {row['optimizer']} | {_fmt(statistics.median(row['base']))} | "
            f"{_fmt(statistics.median(row['brain']))} | **{_fmt(row['median'])}** | {_fmt(row['geomean'])} | "
            f"{_fmt(min(fin)) if fin else 'nan'}–{_fmt(max(fin)) if fin else 'nan'} | {row['wins']}/{row['n']} | "
            f"{row['diverged']} | {row['alpha']:.2f} | {row['adv']:+.2f} |")
    if all_r:
        lines += ["", f"Over all {len(all_r)} pairs: geometric-mean ratio "
                  f"**{math.exp(statistics.fmean(math.log(x) for x in all_r)):.3f}**, brain better in "
                  f"{sum(x < 1 for x in all_r)}/{len(all_r)}, worst ratio {max(all_r):.3f}, best {min(all_r):.3f}."]
    lines += ["", "![final-loss ratio per task](brain_eval.png)", "", "## Per-seed final losses", "",
              "| task | optimizer | seed | base | brain | ratio |", "|---|---|---|---|---|---|"]
    for row in rows:
        for seed, b, w, r in zip(row["seeds"], row["base"], row["brain"], row["ratios"]):
            lines.append(f"| {row['task']} | {row['optimizer']} | {seed} | {_fmt(b)} | {_fmt(w)} | {_fmt(r)} |")
    lines += ["", "## Overhead and size", ""]
    if overhead:
        lines += ["Per-step wall time with AdamW, median of alternating 60-step blocks "
                  "(the machine is shared, so expect noise of ±10%):", "",
                  "| model | params | groups | base ms/step | brain ms/step | overhead |", "|---|---|---|---|---|---|"]
        for o in overhead:
            lines.append(f"| {o['task']} | {o['params']:,} | {o['groups']} | {o['base_ms']:.2f} | "
                         f"{o['brain_ms']:.2f} | {100 * o['overhead']:+.1f}% |")
        lines.append("")
    lines += [f"Brain state for 8 parameter groups (what `save` writes, without dampen buffers): "
              f"{state[0]:,} bytes (torch wrapper), {state[1]:,} bytes (numpy mode); budget 51,200 bytes. "
              "While a group's dampen knob is on, the wrapper also keeps one smoothing buffer the size of "
              "that group's parameters, plus a transient copy of them during the step."]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from fusedgate.brain.tasks import run_once

    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        print(f"error: --out {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    jobs = [(t, o, s, b) for t in args.tasks for o in args.optimizers for s in range(args.seeds) for b in (False, True)]
    t0 = time.perf_counter()
    results = []
    bar = tqdm(jobs, desc="brain-eval", unit="run", disable=args.no_progress, file=sys.stderr)
    for task, opt, seed, brain in bar:
        bar.set_postfix_str(f"{task} {opt} seed {seed} {'brain' if brain else 'base'}")
        results.append(run_once(task, opt, seed, brain, steps=args.steps, brain_kwargs={"window": args.window}))
    bar.close()
    overhead = [] if args.no_overhead else measure_overhead()
    state = state_bytes_8_groups()
    rows = summarise(results)
    wall = time.perf_counter() - t0
    os.makedirs(out, exist_ok=True)
    plot(rows, os.path.join(out, "brain_eval.png"))
    text = markdown(rows, results, args, overhead, state, wall)
    with open(os.path.join(out, "brain_eval.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return 0
