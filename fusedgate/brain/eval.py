"""``fusedgate brain-eval``: does OptBrain keep its promises? Paired training runs on small real tasks.

For every task × optimizer × seed it trains the arms the chosen scenarios need (see
``fusedgate.brain.scenarios``: tuned lr, 3× and ⅓ lr, constant lr vs schedule, planted gradient spikes,
FusedGate) with the same init and batches, and writes into ``--out`` (default
``./fusedgate-results/brain_eval``, under the current folder — never into the installed package):

    brain_eval.md    the scenario table (ratios, fractions, targets), per-seed losses, overhead, state size
    brain_eval.json  every run's final loss and the brain's report, the rows, the overhead timings
    brain_eval.png   one panel per scenario: ratio per task × optimizer, dots per seed

``--tasks heldout`` runs the held-out family (``fusedgate.brain.heldout``) only; the default runs both
families and reports them side by side. ``--from saved/brain_eval.json`` trains nothing: it rewrites the
three files from the runs saved there, summarised by the current code (a new column, another selection).

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

from fusedgate.brain.overhead import measure_overhead, state_bytes_8_groups
from fusedgate.brain.scenarios import (
    ARMS,
    EXTRA_ARMS,
    SCENARIOS,
    applies,
    arms_for,
    family,
    summarise,
    targets,
    train_ratio,
)
from fusedgate.brain.tasks import FAMILIES, OPTIMIZERS, TASKS
from fusedgate.files import ReadError, WriteError, check_writable_folder, read_text

DEFAULT_OUT = os.path.join("fusedgate-results", "brain_eval")
MAX_INIT_BYTES = 1_000_000  # OptBrain arguments are a few hundred bytes
MAX_RUNS_BYTES = 512_000_000  # a 5-seed run of every scenario writes ~1.4 MB
LATER_ARM_FIELDS = {"restore_lr"}   # ``Arm`` fields a file saved before them lacks (read as their defaults)
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


def _seeds(text: str) -> range:
    """``N`` (seeds 0…N−1) or ``FIRST-LAST`` (inclusive, e.g. 30-49: seeds no choice was made on)."""
    first, dash, last = text.partition("-")
    try:
        seeds = (range(int(first), int(last) + 1) if dash else range(int(text))) if len(text) <= 25 else None
    except ValueError:
        seeds = None
    if seeds is None or not 1 <= len(seeds) <= MAX["--seeds"] or seeds.start < 0 or seeds.stop > 10 ** 9:
        raise argparse.ArgumentTypeError(f"expected a count in [1, {MAX['--seeds']}] or FIRST-LAST (0 ≤ FIRST ≤ "
                                         f"LAST, at most {MAX['--seeds']} seeds), got {text[:25]!r}")
    return seeds


def seeds_argument(seeds: range) -> str:
    """``--seeds`` as it would be typed for ``seeds``."""
    return str(len(seeds)) if seeds.start == 0 else f"{seeds.start}-{seeds.stop - 1}"


def _one_line_error(parser: argparse.ArgumentParser):
    def error(message: str):
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)
    return error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.error = _one_line_error(parser)
    parser.add_argument("--tasks", type=_tasks, default=None,
                        help="comma list of tasks or families: tuning = " + ",".join(FAMILIES["tuning"])
                             + " (the defaults were tuned on these); heldout = " + ",".join(FAMILIES["heldout"])
                             + " (never tuned on); all (default: all; with --from, the saved run's)")
    parser.add_argument("--optimizers", type=_csv(OPTIMIZERS), default=None,
                        help="comma list (default: sgd,adamw,fusedgate; with --from, the saved run's)")
    parser.add_argument("--scenarios", type=_csv(SCENARIOS), default=None,
                        help=f"comma list of {', '.join(SCENARIOS)} (default: all; with --from, the saved run's)")
    parser.add_argument("--seeds", type=_seeds, default=range(5),
                        help="N (seeds 0…N−1) or FIRST-LAST, per task × optimizer (default 5: seeds 0…4)")
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
    parser.add_argument("--from", dest="from_json", metavar="FILE", default=None,
                        help="no training: rewrite the report in --out from the runs of a saved brain_eval.json "
                             "(its seeds; --tasks/--optimizers/--scenarios select among them; its overhead and "
                             "state figures are kept; default: none, train)")
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


def read_runs(path: str) -> tuple[dict, list[dict]]:
    """A saved ``brain_eval.json``: (its record, its runs with ``arm`` an ``Arm`` and ``final`` a float,
    None read back as NaN). Anything else is a one-line UsageError."""
    from fusedgate.brain.tasks import Arm

    try:
        record = json.loads(read_text(path, "--from file", MAX_RUNS_BYTES))
    except ReadError as exc:
        raise UsageError(f"--from {path}: cannot read it: {exc.reason}") from None
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise UsageError(f"--from {path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list) or not isinstance(
            record.get("meta"), dict):
        raise UsageError(f"--from {path}: not a brain_eval.json (no 'meta' object and 'runs' list)")
    fields = {f.name for f in dataclasses.fields(Arm)}
    required = fields - LATER_ARM_FIELDS
    runs = []
    for i, run in enumerate(record["runs"]):
        try:
            arm = run["arm"]
            if not isinstance(arm, dict) or not required <= set(arm) <= fields:
                raise TypeError(f"arm {arm!r}")
            final = math.nan if run["final"] is None else float(run["final"])
            if run["task"] not in TASKS or run["optimizer"] not in OPTIMIZERS or type(run["seed"]) is not int:
                raise TypeError(f"task/optimizer/seed {run['task']!r}/{run['optimizer']!r}/{run['seed']!r}")
            if arm["brain"] and not isinstance(run["report"]["alpha"], (int, float)):
                raise TypeError("a brain run without its report's alpha")
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"--from {path}: run {i} is not a brain-eval run ({exc})") from None
        runs.append(dict(run, arm=Arm(**arm), final=final))
    if not runs:
        raise UsageError(f"--from {path}: it holds no runs")
    return record, runs


SELECTION = (("tasks", "task", TASKS), ("optimizers", "optimizer", OPTIMIZERS), ("scenarios", "scenario", SCENARIOS))


def select(args, record: dict | None = None) -> None:
    """Fill the selections not given on the command line: with every task, optimizer and scenario, or from
    a saved run (``record``) with those of its rows, in their order (so that ``--from`` rewrites the same
    tables in the same order, and builds none the run did not ask for). One-line UsageError when no
    scenario applies to the selection."""
    rows = [r for r in (record or {}).get("rows") or [] if isinstance(r, dict)]
    for name, key, every in SELECTION:
        if getattr(args, name) is None:
            saved = [v for v in dict.fromkeys(r.get(key) for r in rows) if v in every]
            setattr(args, name, saved or list(every))
    if not any(applies(s, t, o) for s in args.scenarios for t in args.tasks for o in args.optimizers):
        raise UsageError(f"no scenario of {','.join(args.scenarios)} applies to tasks {','.join(args.tasks)} × "
                         f"optimizers {','.join(args.optimizers)} (fusedgate: nanochat × fusedgate only)")


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


# ---- the grid -------------------------------------------------------------------------------------
def command_line(args) -> str:
    parts = ["fusedgate brain-eval", "--tasks", ",".join(args.tasks), "--optimizers", ",".join(args.optimizers),
             "--scenarios", ",".join(args.scenarios), "--seeds", seeds_argument(args.seeds),
             "--threads", str(args.threads)]
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
                jobs += [(task, opt, seed, arm) for seed in args.seeds for arm in arms_for(chosen)]
    runs = []
    bar = tqdm(jobs, desc="brain-eval", unit="run", disable=args.no_progress, file=sys.stderr)
    for task, opt, seed, arm in bar:
        bar.set_postfix_str(f"{task} {opt} seed {seed}")
        runs.append(run_arm(task, opt, seed, arm, steps=args.steps, brain_kwargs=brain_kwargs))
    bar.close()
    return runs, rows_from_runs(runs, args.scenarios, args.tasks, args.optimizers, args.seeds)


def rows_from_runs(runs: list[dict], scenarios, tasks, optimizers, seeds) -> list[dict]:
    """The scenario rows of the trained runs: one per scenario × task × optimizer whose arms all ran
    on every seed (a row with a missing run is left out, never filled in)."""
    finals = {(r["task"], r["optimizer"], r["arm"], r["seed"]): r["final"] for r in runs}
    rows = []
    for scenario in scenarios:
        for task in tasks:
            for opt in optimizers:
                if not applies(scenario, task, opt) or any((task, opt, arm, s) not in finals
                                                           for arm in ARMS[scenario].values() for s in seeds):
                    continue
                extra = {name: arm for name, arm in EXTRA_ARMS.get(scenario, {}).items()   # where they ran
                         if all((task, opt, arm, s) in finals for s in seeds)}
                arms = {**ARMS[scenario], **extra}
                per_arm = {name: {s: finals[(task, opt, arm, s)] for s in seeds} for name, arm in arms.items()}
                row = summarise(scenario, task, opt, per_arm)
                row["family"] = family(row)
                brain_arm = ARMS[scenario].get(_brain_arm(scenario))
                brain_runs = [r for r in runs if r["task"] == task and r["optimizer"] == opt
                              and brain_arm is not None and r["arm"] == brain_arm]
                row["alpha"] = [r["report"]["alpha"] for r in brain_runs]
                if scenario in ("tuned", "fusedgate"):
                    row["train_ratio"] = train_ratio(runs, task, opt, ARMS[scenario], seeds)
                # the lr ladder's level ℓ, where it was on (runs saved before the ladder have none)
                row["ladder"] = [r["report"]["ladder"]["level"] for r in brain_runs
                                 if r["report"].get("ladder", {}).get("status", "off") != "off"]
                rows.append(row)
    return rows


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


def train_and_measure(args, brain_kwargs: dict):
    """The grid's runs and rows, the overhead and the state size, and the run's meta."""
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    runs, rows = run_grid(args, brain_kwargs)
    overhead = None if args.no_overhead else measure_overhead()
    state = state_bytes_8_groups()
    meta = {"command": command_line(args), "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
            "threads": args.threads, "wall_s": time.perf_counter() - t0, "brain_kwargs": brain_kwargs,
            "steps": {r["task"]: r["steps"] for r in runs}}
    return rows, runs, meta, overhead, state


def rerender(record: dict, runs: list[dict], args):
    """Rows from saved runs (their own seeds, tasks and optimizers ∩ the chosen ones); the saved meta,
    overhead and state."""
    seeds = sorted({r["seed"] for r in runs})
    tasks = [t for t in args.tasks if any(r["task"] == t for r in runs)]
    optimizers = [o for o in args.optimizers if any(r["optimizer"] == o for r in runs)]
    rows = rows_from_runs(runs, args.scenarios, tasks, optimizers, seeds)
    if not rows:
        raise UsageError(f"--from {args.from_json}: no scenario of {','.join(args.scenarios)} has all its runs there")
    saved = record.get("state_bytes_8_groups") or {}
    state = (saved["torch"], saved["numpy"]) if {"torch", "numpy"} <= set(saved) else state_bytes_8_groups()
    meta = dict(record["meta"], rewritten_from=os.path.basename(args.from_json))
    missing = {"command", "machine", "threads", "wall_s", "brain_kwargs", "steps"} - set(meta)
    if missing:
        raise UsageError(f"--from {args.from_json}: its meta lacks {', '.join(sorted(missing))}")
    return rows, meta, record.get("overhead"), state


def main(args: argparse.Namespace) -> int:
    from fusedgate.brain.report import markdown, plot

    try:
        brain_kwargs = read_init(args.init)
        if args.window is not None:
            brain_kwargs["window"] = args.window
        if args.from_json is None:
            select(args)
        out = check_out(args.out)
    except UsageError as exc:
        print(f"fusedgate brain-eval: error: {exc}", file=sys.stderr)
        return 2
    if args.from_json is not None:
        try:
            record, runs = read_runs(args.from_json)
            select(args, record)
            rows, meta, overhead, state = rerender(record, runs, args)
        except UsageError as exc:
            print(f"fusedgate brain-eval: error: {exc}", file=sys.stderr)
            return 2
    else:
        rows, runs, meta, overhead, state = train_and_measure(args, brain_kwargs)
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
