"""``brain_eval.md`` and ``brain_eval.png`` from the scenario rows of ``fusedgate brain-eval``."""

from __future__ import annotations

import math
import statistics

import numpy as np

from fusedgate.brain.scenarios import ARMS, EXTRA_ARMS, SCENARIOS, interval_text
from fusedgate.files import markdown_table

TITLES = {
    "tuned": "Tuned lr: brain vs base (promise: never > 1 % worse)",
    "nudge": "Perturbation floor (no brain): the base at 1.01× its tuned lr vs the base",
    "lr_x3": "Mis-set lr, 3× the tuned lr (promise: brain/base ≤ 0.9)",
    "lr_div3": "Mis-set lr, ⅓ of the tuned lr",
    "schedule": "Constant lr + brain vs constant lr vs warmup + warmdown schedule",
    "clipping": "Planted gradient spikes: brain vs fixed clip vs none",
    "fusedgate": "FusedGate on NanoChat: the brain driving its gate keys vs FusedGate alone",
}


# the gray diamond beside a pair's brain ratios: the scenario's reference arm
OTHER_LABEL = {"schedule_ratio": "schedule / const", "clip_ratio": "fixed clip / none",
               "restored_ratio": "tuned lr restored after the warm-up / base@m"}


def _f(x: float, digits: int = 4) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def _pct(x: float) -> str:
    return "n/a (gap < 1 %)" if x is None or not math.isfinite(x) else f"{100 * x:+.0f} %"


def _spread(r: list[float]) -> str:
    fin = [x for x in r if math.isfinite(x)]
    return f"{_f(min(fin), 3)}–{_f(max(fin), 3)}" if fin else "nan"


def _div(row: dict) -> str:
    return ", ".join(f"{n} {k}" for n, k in row["diverged"].items() if k) or "0"


def scenario_table(scenario: str, rows: list[dict]) -> list[str]:
    extra = [a for a in EXTRA_ARMS.get(scenario, {}) if any(a in row["mean"] for row in rows)]   # where they ran
    arms = list(ARMS[scenario]) + extra
    head = ["family", "task", "optimizer"] + [f"{a} (mean)" for a in arms] + {
        "tuned": ["ratio brain/base", "95 % CI", "min–max", "brain better", "train brain/base", "α"],
        "nudge": ["ratio base×1.01/base", "95 % CI", "min–max", "lower"],
        "fusedgate": ["ratio brain/base", "95 % CI", "min–max", "brain better", "train brain/base", "α"],
        "lr_x3": ["cost of the mis-set lr", "ratio brain/base", "95 % CI", "min–max", "brain better", "gap closed",
                  "α"],
        "lr_div3": ["cost of the mis-set lr", "ratio brain/base", "95 % CI", "min–max", "brain better", "gap closed",
                    "α"],
        "schedule": ["schedule/const", "brain/const", "min–max", "brain better", "gain recovered", "α"],
        "clipping": ["fixed clip/none", "brain/none", "min–max", "brain/fixed clip", "α"],
    }.get(scenario, []) + (["restored/base@m", "restored: gap closed"] if extra else []) + ["diverged"]
    table = []
    for row in rows:
        cells = [row.get("family", ""), row["task"], row["optimizer"]] + [_f(row["mean"].get(a)) for a in arms]
        alpha = _f(statistics.fmean(row["alpha"]), 2) if row["alpha"] else "–"
        if row.get("ladder"):           # the ladder's mean level ℓ beside the trust
            alpha += f" (ℓ {_f(statistics.fmean(row['ladder']), 2)})"
        ci = interval_text(row, "–")
        if scenario in ("tuned", "fusedgate"):
            cells += [f"**{_f(row['ratio'])}**", ci, _spread(row["ratios"]), f"{row['wins']}/{len(row['seeds'])}",
                      _f(row.get("train_ratio", math.nan), 3), alpha]
        elif scenario == "nudge":
            cells += [f"**{_f(row['ratio'])}**", ci, _spread(row["ratios"]), f"{row['wins']}/{len(row['seeds'])}"]
        elif scenario in ("lr_x3", "lr_div3"):
            cells += [f"×{_f(row['mis_set_cost'], 3)}", f"**{_f(row['ratio'])}**", ci, _spread(row["ratios"]),
                      f"{row['wins']}/{len(row['seeds'])}", _pct(row["gap_closed"]), alpha]
        elif scenario == "schedule":
            cells += [_f(row["schedule_ratio"]), f"**{_f(row['ratio'])}**", _spread(row["ratios"]),
                      f"{row['wins']}/{len(row['seeds'])}", _pct(row["recovered"]), alpha]
        elif scenario == "clipping":
            cells += [_f(row["clip_ratio"]), f"**{_f(row['ratio'])}**", _spread(row["ratios"]),
                      _f(row["brain_vs_clip"]), alpha]
        if extra:
            cells += [_f(row.get("restored_ratio")), _pct(row.get("restored_gap_closed"))]
        table.append(cells + [_div(row)])
    return [f"### {TITLES[scenario]}", "", markdown_table(head, table), ""]


def seed_text(seeds) -> str:
    """The seeds as "a…b" when consecutive, else a comma list."""
    seeds = sorted(set(seeds))
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}…{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(map(str, seeds))


def markdown(rows: list[dict], targets: list[dict], meta: dict, overhead: dict | None, state) -> str:
    seeds = seed_text(s for row in rows for s in row["seeds"])
    lines = [
        "# OptBrain evaluation: its promises, measured",
        "",
        f"Command: `{meta['command']}`",
        f"Machine: {meta['machine']}, torch threads {meta['threads']}; total wall {meta['wall_s'] / 60:.1f} min. "
        f"Tasks, arms and learning rates: `fusedgate/brain/tasks.py`; scenarios: `fusedgate/brain/scenarios.py` "
        f"(steps: {', '.join(f'{t} {s}' for t, s in meta['steps'].items())}). "
        f"OptBrain arguments: {meta['brain_kwargs'] or 'defaults'}."
        + (f" This report was rewritten from that run's `{meta['rewritten_from']}` by `fusedgate brain-eval "
           "--from` (the same runs, summarised by the current code)." if meta.get("rewritten_from") else ""),
        "",
        "Two task families: **tuning** (regression, mlp, nanochat — OptBrain's defaults were chosen on "
        "these, on seeds 10–29) and **heldout** (logreg, cnn, charrnn — `fusedgate/brain/heldout.py`, "
        "committed before any tuning and never used for a choice). Every number is a final loss (regression: "
        "MSE; mlp, logreg, cnn: cross-entropy; nanochat, charrnn: validation bits per byte) or a ratio of "
        f"two, paired by seed (same init, batches and spikes; seeds {seeds}); ratios are geometric means over "
        "seeds, < 1 = the brain helped. Fractions (gap closed, gain recovered) use the seed-mean losses. "
        "`α` = the brain's final trust (1 = full policy, 0 = exactly neutral: its safety gate, "
        "`fusedgate/brain/safety.py`), seed mean; `(ℓ …)` beside it = the lr ladder's level, seed mean "
        "(1, 2 or 4 per run: `fusedgate/brain/ladder.py`). `train brain/base` = the same ratio of the training "
        "levels (the mean of a run's last 10 train-loss points, one minibatch each every 10 steps: its last 100 "
        "steps, so a warmdown at the very end shows in the final loss more than here): a final loss on held-out "
        "data up while this is down points to overfitting, not to a slower optimisation. `restored` (3× and ⅓ lr) = "
        "no brain: the mis-set lr for the brain's neutral warm-up, the tuned lr from its first window on — how much "
        "of a mis-set lr's cost is still to be rescued when a brain may first act.",
        "",
    ]
    if targets:
        table = [[t.get("family", ""), t["target"], t["measured"], "yes" if t["met"] else "**no**"] for t in targets]
        if overhead:
            lo, ne = overhead["learning"]["overhead"], overhead["neutral"]["overhead"]
            table.append(["", "overhead ≤ 0.1 % of a NanoChat tiny step",
                          f"neutral {100 * ne:.3f} %, learning {100 * lo:.3f} %",
                          "yes" if max(lo, ne) <= 0.001 else "**no**"])
        table.append(["", "state ≤ 50 KB (8 groups)", f"{state[0]:,} B (torch), {state[1]:,} B (numpy)",
                      "yes" if max(state) <= 51200 else "**no**"])
        lines += ["## Targets", "", markdown_table(["family", "target", "measured", "met"], table), ""]
    lines += ["## Scenarios", ""]
    for scenario in SCENARIOS:
        chosen = [r for r in rows if r["scenario"] == scenario]
        if chosen:
            lines += scenario_table(scenario, chosen)
    lines += ["![ratios per scenario](brain_eval.png)", "", "## Per-seed final losses", ""]
    if rows:
        per_seed = [[row["scenario"], row.get("family", ""), row["task"], row["optimizer"], arm]
                    + [_f(v) for v in values] for row in rows for arm, values in row["finals"].items()]
        head = ["scenario", "family", "task", "optimizer", "arm"] + [f"seed {s}" for s in rows[0]["seeds"]]
        lines.append(markdown_table(head, per_seed))
    lines += ["", "## Overhead and size", ""]
    if overhead:
        lines += overhead_paragraphs(overhead)
    lines += [f"Brain state for 8 parameter groups (what `save` writes, without dampen buffers): "
              f"{state[0]:,} bytes (torch wrapper), {state[1]:,} bytes (numpy mode); budget 51,200 bytes. "
              "While a group's dampen knob is on, the wrapper also keeps one smoothing buffer the size of "
              "that group's parameters, plus a transient copy of them during the step."]
    return "\n".join(lines) + "\n"


def overhead_paragraphs(overhead: dict) -> list[str]:
    """The overhead measurement (``fusedgate.brain.overhead.measure_overhead``) as markdown lines."""
    n, le = overhead["neutral"], overhead["learning"]
    lines = [f"{overhead['model']}, {overhead['params']:,} parameters, {overhead['groups']} groups, one thread, "
             f"load average {overhead['load_average']:.2f}. Full step (forward, backward, step; median of "
             f"alternating blocks): base {overhead['base_full_ms']:.2f} ms, brain neutral "
             f"{n['full_ms']:.2f} ms ({100 * n['full_overhead']:+.2f} %), brain learning {le['full_ms']:.2f} ms "
             f"({100 * le['full_overhead']:+.2f} %) — below this noise level the full-step ratio cannot resolve "
             f"0.1 %, so the overhead is measured on the optimizer step alone ({_step_method(overhead)}): base step "
             f"{overhead['base_step_us']:.0f} µs; the brain adds "
             f"**{n['step_extra_us']:.1f} µs neutral**{_neutral_kind(overhead)} ({100 * n['overhead']:.3f} % of "
             "the full step) and "
             f"**{le['step_extra_us']:.1f} µs while learning** ({100 * le['overhead']:.3f} %; trust held at "
             f"α = {le['report']['alpha']:g}, its knobs at the end: {le['report']['mean_decisions']}).",
             ""]
    if "sensing" in overhead:
        s = overhead["sensing"]
        lines += [f"Learning with nothing to learn (α = 1, σ = 0, no hypergradient: its knobs stay neutral — the "
                  f"sensing, the window's read and the learner's bookkeeping alone): **{s['step_extra_us']:.1f} µs** "
                  f"per step ({100 * s['overhead']:.3f} %).", ""]
    if "warmdown" in overhead:
        w = overhead["warmdown"]
        status = w["report"]["warmdown"]["status"]
        lines += [f"In the warmdown phase (the last quarter of a run of known length) a brain whose gate has ended the "
                  f"policy reads the losses again, for the warmdown test: **{w['step_extra_us']:.1f} µs** per step "
                  f"({100 * w['overhead']:.3f} %; its test kept undecided, status {status}).", ""]
    floor = _floor_sentence(overhead)
    return lines + ([floor, ""] if floor else [])


def _neutral_kind(overhead: dict) -> str:
    if overhead.get("method") == "paired":
        return " (the gate has ended the policy: α = 0)"
    return " (frozen at (1, 1, 0), still sensing)"   # the earlier measurement's neutral arm


def _step_method(overhead: dict) -> str:
    if overhead.get("method") == "paired":   # fusedgate.brain.overhead since the floor was added
        return (f"the base's step and the brain's in turn on the same model and gradients, {overhead['repeats']} "
                "pairs; per step, so the window's sensing step counts: the mean difference, 2 % trimmed, each "
                "order's averaged")
    return "same gradients, a separate model per arm, interleaved, medians of 200"   # the earlier method


def _floor_sentence(overhead: dict) -> str:
    """The generic mechanism's floor (``fusedgate.brain.overhead``) beside the measured overhead."""
    if "floor" not in overhead:
        return ""
    duty, share = overhead["duty"], overhead["pass_us"] / (1000 * overhead["base_full_ms"])
    sensing = overhead.get("sense_floor_us")
    reads = ("the brain's own: a BLAS dot per tensor on the CPU" if sensing is not None else "`torch._foreach_norm`")
    text = (f"**The floor.** One read of every gradient ({reads}) costs {overhead['pass_us']:.0f} µs "
            f"({100 * share:.3f} % of the full step). While learning, the clip acted on {100 * duty['clip']:.0f} % "
            "of the parameter-steps (≥ 1 pass: the norm; a second when a group clips) and dampen on "
            f"{100 * duty['dampen']:.0f} % (≥ 4: a copy, Δ, u, before + u), so no implementation of these knobs "
            f"costs less than {overhead['floor_us']:.0f} µs (**{100 * overhead['floor']:.3f} %**) per step here.")
    if sensing is not None:   # since the sensing floor was added
        total = overhead["floor_us"] + sensing
        text += (f" Sensing reads every gradient and parameter once per window (their norms): ≥ {sensing:.0f} µs "
                 f"per step more, so learning as measured costs at least {total:.0f} µs "
                 f"(**{total / (10 * overhead['base_full_ms']):.3f} %**); the rest of the measured cost is the "
                 "host's small work: the sketches, the window's read, the learner's bookkeeping.")
    return text


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter, LogLocator, NullFormatter

    panels = [s for s in SCENARIOS if s != "fusedgate" and any(r["scenario"] == s for r in rows)]
    if not panels:
        panels = [s for s in SCENARIOS if any(r["scenario"] == s for r in rows)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.9 * len(panels)), squeeze=False)
    rng = np.random.default_rng(0)
    colors = {"sgd": "tab:blue", "adamw": "tab:orange", "fusedgate": "tab:green"}
    for ax, scenario in zip(axes[:, 0], panels):
        chosen = [r for r in rows if r["scenario"] == scenario]
        for i, row in enumerate(chosen):
            r = np.array([x for x in row["ratios"] if math.isfinite(x)])
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(r)), r, color=colors[row["optimizer"]], alpha=0.75, s=22,
                       zorder=3)
            ax.hlines(row["ratio"], i - 0.28, i + 0.28, color="black", lw=2.2, zorder=4)
            other = {"schedule": "schedule_ratio", "clipping": "clip_ratio", "lr_x3": "restored_ratio",
                     "lr_div3": "restored_ratio"}.get(scenario)
            if other and row.get(other) is not None and math.isfinite(row[other]):
                ax.scatter([i + 0.3], [row[other]], marker="D", color="gray", s=30, zorder=4,
                           label=OTHER_LABEL[other] if i == 0 else None)
        ax.axhline(1.0, color="gray", ls="--", lw=1)
        if scenario == "lr_x3":
            ax.axhline(0.9, color="tab:red", ls=":", lw=1, label="target 0.9")
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        if hi / lo < 10:                      # under a decade: label the minor ticks too
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
        else:
            if hi / lo < 1000:
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(chosen)), [f"{r['task']}\n{r['optimizer']}" for r in chosen], fontsize=8)
        ax.set_ylabel("base×1.01 / base" if scenario == "nudge" else "brain / base")
        ax.set_title(TITLES[scenario], fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
