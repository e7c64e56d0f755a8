"""``fusedgate brain-eval``: does OptBrain keep its promises? Paired training runs on small real tasks.

For every task × optimizer × seed it trains the arms the chosen scenarios need (see
``fusedgate.brain.scenarios``: tuned lr, 3× and ⅓ lr, constant lr vs schedule, planted gradient spikes,
FusedGate) with the same init and batches, and writes into ``--out`` (default
``./fusedgate-results/brain_eval``, under the current folder — never into the installed package):

    brain_eval.md    the scenario table (ratios, fractions, targets), per-seed losses, overhead, state size
    brain_eval.json  every run's final loss and the brain's report, the rows, the overhead timings
    brain_eval.png   one panel per scenario: ratio per task × optimizer, dots per seed

``--tasks heldout`` runs the held-out family (``fusedgate.brain.heldout``) only; the default runs both
families and reports them side by side.

Usage errors (bad counts, an unreadable ``--init`` file, an output folder that cannot be written)
are one line on stderr and exit code 2, before any training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time

from fusedgate.brain.scenarios import ARMS, SCENARIOS, applies, arms_for, family, summarise, targets
from fusedgate.brain.tasks import FAMILIES, OPTIMIZERS, TASKS
from fusedgate.files import ReadError, WriteError, check_writable_folder, read_text

DEFAULT_OUT = os.path.join("fusedgate-results", "brain_eval")
MAX_INIT_BYTES = 1_000_000  # OptBrain arguments are a few hundred bytes
MAX = {"--seeds": 1000, "--steps": 1_000_000, "--window": 100_000, "--threads": 1024}


class UsageError(Exception):
    """A bad command line or input file: reported as one line, exit code 2."""


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(choices)}, got {text!r}")
        return list(dict.fromkeys(items))
    return parse


def _tasks(text: str) -> list[str]:
    """Task names and family names (``tuning``, ``heldout``, ``all``), expanded in the registry's order."""
    families = {**FAMILIES, "all": TASKS}
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in TASKS and t not in families]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"expected a comma list of tasks ({', '.join(TASKS)}) or families "
                                         f"({', '.join(families)}), got {text!r}")
    chosen = {task for t in items for task in families.get(t, (t,))}
    return [t for t in TASKS if t in chosen]


def _count(flag: str, minimum: int = 1):
    def parse(text: str) -> int:
        try:
            value = int(text) if len(text) <= 12 else None
        except ValueError:
            value = None
        if value is None or not minimum <= value <= MAX[flag]:
            raise argparse.ArgumentTypeError(f"expected an integer in [{minimum}, {MAX[flag]:,}], got {text[:20]!r}"
                                             + ("…" if len(text) > 20 else ""))
        return value
    return parse


def _one_line_error(parser: argparse.ArgumentParser):
    def error(message: str):
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    return error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.error = _one_line_error(parser)
    parser.add_argument("--tasks", type=_tasks, default=list(TASKS),
                        help="comma list of tasks or families: tuning = " + ",".join(FAMILIES["tuning"])
                             + " (the defaults were tuned on these); heldout = " + ",".join(FAMILIES["heldout"])
                             + " (never tuned on); all (default: all)")
    parser.add_argument("--optimizers", type=_csv(OPTIMIZERS), default=list(OPTIMIZERS),
                        help="comma list (default: sgd,adamw,fusedgate)")
    parser.add_argument("--scenarios", type=_csv(SCENARIOS), default=list(SCENARIOS),
                        help=f"comma list of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--seeds", type=_count("--seeds"), default=5, help="seeds per task × optimizer (default 5)")
    parser.add_argument("--steps", type=_count("--steps"), default=None,
                        help="override every task's step count (default: the task's own)")
    parser.add_argument("--window", type=_count("--window", 3), default=None,
                        help="OptBrain window K (default: OptBrain's own)")
    parser.add_argument("--init", metavar="FILE", default=None,
                        help="JSON object of OptBrain constructor arguments, e.g. {\"explore\": 0.5} "
                             "(default: OptBrain's defaults)")
    parser.add_argument("--threads", type=_count("--threads"), default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"folder for brain_eval.md/.json/.png (default ./{DEFAULT_OUT})")
    parser.add_argument("--no-overhead", action="store_true", help="skip the per-step overhead measurement")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---- checks before any training -------------------------------------------------------------------
def read_init(path: str | None) -> dict:
    """The ``--init`` file as OptBrain keyword arguments, validated by building a brain with them."""
    if path is None:
        return {}
    try:
        text = read_text(path, "--init file", MAX_INIT_BYTES)
    except ReadError as exc:
        raise UsageError(f"--init {path}: cannot read it: {exc.reason} (expected a JSON object of OptBrain "
                         "arguments)") from None
    try:
        kwargs = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise UsageError(f"--init {path}: not valid JSON ({exc})") from None
    if not isinstance(kwargs, dict):
        raise UsageError(f"--init {path}: expected a JSON object of OptBrain arguments, got {type(kwargs).__name__}")
    from fusedgate.brain import BrainError, OptBrain
    from fusedgate.brain.config import FIELDS

    allowed = [p for p in FIELDS if p != "seed"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UsageError(f"--init {path}: unknown OptBrain argument(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(allowed)}")
    try:
        OptBrain(None, n_groups=1, **kwargs)
    except (BrainError, TypeError) as exc:
        raise UsageError(f"--init {path}: {exc}") from None
    return kwargs


def check_out(out: str) -> str:
    """Create ``out`` if needed and prove it writable (a probe file), so a run never fails at the end."""
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out {out} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        check_writable_folder(path)
    except WriteError as exc:
        raise UsageError(f"--out {out}: {exc}") from None
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return path


# ---- overhead -------------------------------------------------------------------------------------
def measure_overhead(blocks: int = 7, steps: int = 20) -> dict:
    """Per-step cost of the brain on the NanoChat ``tiny`` preset model (depth 2, context 128, batch 16)
    with AdamW, one thread. Full training steps (forward, backward, step) in alternating blocks, medians;
    and — the precise number, since 0.1 % is below the full step's noise — the optimizer step alone on the
    same gradients, base vs brain interleaved step by step, median difference. Brain arms: ``neutral``
    (frozen at (1, 1, 0): the features and bookkeeping only) and ``learning`` (exploring as in a run, its
    trust held at α = 1 so that the safety gate cannot turn it neutral during the measurement)."""
    import statistics

    import torch

    from fusedgate.brain import OptBrain
    from fusedgate.nanochat.data import load_data, train_batch
    from fusedgate.nanochat.model import GPT, GPTConfig
    from fusedgate.nanochat.presets import get_preset

    preset = get_preset("tiny")
    data = load_data(None, "byte", preset.max_corpus_bytes)
    config = GPTConfig.from_depth(preset.depth, data.vocab_size, preset.seq_len, preset.aspect_ratio,
                                  preset.head_dim)

    def build(kind):
        torch.manual_seed(0)
        model = GPT(config)
        groups = model.param_groups(preset.embedding_lr, preset.unembedding_lr, preset.matrix_lr, 0.0,
                                    matrix_kind="adamw", adam_matrix_lr=preset.adam_matrix_lr)
        base = torch.optim.AdamW([{k: g[k] for k in ("params", "lr", "betas", "eps", "weight_decay")}
                                  for g in groups])
        if kind == "base":
            return model, base
        if kind == "neutral":
            brain = OptBrain(base, warmup_windows=1)
            brain.freeze()
        else:   # the trust held at 1 (no test can shrink it): the knobs stay on, exploring, the costliest case
            brain = OptBrain(base, warmup_windows=1, alpha_start=1.0, z_shrink=10.0)
        return model, brain

    arms = {kind: build(kind) for kind in ("base", "neutral", "learning")}

    def one_step(kind, t):
        model, opt = arms[kind]
        x, y = train_batch(data, 0, t, preset.batch_size, preset.seq_len)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(loss=loss.detach()) if kind != "base" else opt.step()

    full = {k: [] for k in arms}
    t = 0
    for _ in range(blocks):
        for kind in arms:
            t0 = time.perf_counter()
            for s in range(steps):
                one_step(kind, t + s)
            full[kind].append((time.perf_counter() - t0) / steps)
        t += steps
    # optimizer step only: the same gradients every time (grads of one batch, copied in)
    step_only = {k: [] for k in arms}
    for kind in arms:
        one_step(kind, 0)
    grads = [p.grad.clone() for p in arms["base"][0].parameters()]
    for _ in range(200):
        for kind, (model, opt) in arms.items():
            for p, g in zip(model.parameters(), grads):
                p.grad.copy_(g)
            loss = torch.tensor(3.0)
            t0 = time.perf_counter()
            opt.step(loss=loss) if kind != "base" else opt.step()
            step_only[kind].append(time.perf_counter() - t0)
    base_full = statistics.median(full["base"])
    out = {"model": "nanochat tiny (depth 2, context 128, batch 16), AdamW",
           "params": sum(p.numel() for p in arms["base"][0].parameters()),
           "groups": len(arms["base"][1].param_groups), "base_full_ms": 1000 * base_full,
           "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan}
    for kind in ("neutral", "learning"):
        extra = statistics.median(step_only[kind]) - statistics.median(step_only["base"])
        out[kind] = {"full_ms": 1000 * statistics.median(full[kind]),
                     "full_overhead": statistics.median(full[kind]) / base_full - 1.0,
                     "step_extra_us": 1e6 * extra, "overhead": extra / base_full}
    out["base_step_us"] = 1e6 * statistics.median(step_only["base"])
    out["learning"]["report"] = arms["learning"][1].report()
    return out


def state_bytes_8_groups() -> tuple[int, int]:
    import torch

    from fusedgate.brain import OptBrain

    layers = torch.nn.ModuleList([torch.nn.Linear(64, 64) for _ in range(8)])
    brain = OptBrain(torch.optim.AdamW([{"params": list(m.parameters())} for m in layers]))
    numpy_brain = OptBrain(None, n_groups=8)
    return brain.state_nbytes(), numpy_brain.state_nbytes()


# ---- the grid -------------------------------------------------------------------------------------
def command_line(args) -> str:
    parts = ["fusedgate brain-eval", "--tasks", ",".join(args.tasks), "--optimizers", ",".join(args.optimizers),
             "--scenarios", ",".join(args.scenarios), "--seeds", str(args.seeds), "--threads", str(args.threads)]
    for flag, value in (("--steps", args.steps), ("--window", args.window), ("--init", args.init)):
        if value is not None:
            parts += [flag, str(value)]
    if args.out != DEFAULT_OUT:
        parts += ["--out", args.out]
    return " ".join(parts + (["--no-overhead"] if args.no_overhead else []))


def run_grid(args, brain_kwargs: dict) -> tuple[list[dict], list[dict]]:
    """Train every needed arm once; return (runs, scenario rows)."""
    from tqdm.auto import tqdm

    from fusedgate.brain.tasks import run_arm

    jobs = []
    for task in args.tasks:
        for opt in args.optimizers:
            chosen = [s for s in args.scenarios if applies(s, task, opt)]
            if chosen:
                jobs += [(task, opt, seed, arm) for seed in range(args.seeds) for arm in arms_for(chosen)]
    runs = []
    bar = tqdm(jobs, desc="brain-eval", unit="run", disable=args.no_progress, file=sys.stderr)
    for task, opt, seed, arm in bar:
        bar.set_postfix_str(f"{task} {opt} seed {seed}")
        runs.append(run_arm(task, opt, seed, arm, steps=args.steps, brain_kwargs=brain_kwargs))
    bar.close()
    finals = {(r["task"], r["optimizer"], r["arm"], r["seed"]): r["final"] for r in runs}
    rows = []
    for scenario in args.scenarios:
        for task in args.tasks:
            for opt in args.optimizers:
                if not applies(scenario, task, opt):
                    continue
                per_arm = {name: {s: finals[(task, opt, arm, s)] for s in range(args.seeds)}
                           for name, arm in ARMS[scenario].items()}
                row = summarise(scenario, task, opt, per_arm)
                row["family"] = family(row)
                brain_arm = ARMS[scenario].get(_brain_arm(scenario))
                row["alpha"] = [r["report"]["alpha"] for r in runs if r["task"] == task and r["optimizer"] == opt
                                and brain_arm is not None and r["arm"] == brain_arm]
                rows.append(row)
    return runs, rows


def _brain_arm(scenario: str) -> str:
    return {"lr_x3": "brain@m", "lr_div3": "brain@m", "schedule": "const+brain", "nudge": None}.get(scenario, "brain")


def _plain(x):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def main(args: argparse.Namespace) -> int:
    from fusedgate.brain.report import markdown, plot

    try:
        brain_kwargs = read_init(args.init)
        if args.window is not None:
            brain_kwargs["window"] = args.window
        if not any(applies(s, t, o) for s in args.scenarios for t in args.tasks for o in args.optimizers):
            raise UsageError(f"no scenario of {','.join(args.scenarios)} applies to tasks {','.join(args.tasks)} × "
                             f"optimizers {','.join(args.optimizers)} (fusedgate: nanochat × fusedgate only)")
        out = check_out(args.out)
    except UsageError as exc:
        print(f"fusedgate brain-eval: error: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    runs, rows = run_grid(args, brain_kwargs)
    overhead = None if args.no_overhead else measure_overhead()
    state = state_bytes_8_groups()
    wall = time.perf_counter() - t0
    meta = {"command": command_line(args), "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
            "threads": args.threads, "wall_s": wall, "brain_kwargs": brain_kwargs,
            "steps": {r["task"]: r["steps"] for r in runs}}
    text = markdown(rows, targets(rows), meta, overhead, state)
    with open(os.path.join(out, "brain_eval.md"), "w", encoding="utf-8") as f:
        f.write(text)
    plot(rows, os.path.join(out, "brain_eval.png"))
    record = {"meta": meta, "targets": targets(rows), "overhead": overhead,
              "state_bytes_8_groups": {"torch": state[0], "numpy": state[1]},
              "rows": [{k: v for k, v in r.items()} for r in rows],
              "runs": [dict(r, arm=dataclasses.asdict(r["arm"])) for r in runs]}
    with open(os.path.join(out, "brain_eval.json"), "w", encoding="utf-8") as f:
        json.dump(_plain(record), f, indent=1, allow_nan=False)
    print(text)
    return 0
