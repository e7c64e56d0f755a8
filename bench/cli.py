"""``fusedgate bench``: time one optimizer step (and Newton–Schulz) for every contestant, write
``<out>/<device>.json``, ``.md`` and ``.png``; ``<out>`` is ``./bench-results`` unless ``--out`` says otherwise
(never the installed package's own ``bench/results/``).

On a CUDA machine the default is the issue's full list (matrices 1024²…16384², NanoChat d12/d20/d26,
Newton–Schulz 1024²…8192²); on the CPU small sizes of the CPU paths; ``--quick`` tiny sizes (CI).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
from pathlib import Path

import torch

from fusedgate.argtypes import integer, number_in
from fusedgate.bench import contestants as C
from fusedgate.bench import report, suite
from fusedgate.bench.targets import evaluate
from fusedgate.bench.workloads import CASES, DTYPES, EXTRA_CASES, workloads
from fusedgate.cli import shorten
from fusedgate.files import ReadError, WriteError, check_regular_file, check_writable_folder

DEFAULT_OUT = Path("bench-results")  # relative: under the current directory when the command runs
MAX_SIZE = 65536  # n of an n×n matrix: 2^32 elements, beyond any single GPU's memory for a step's state
MAX_DEPTH = 64
MAX_THREADS = 1024
MAX_BUDGET_S = 3600.0


def _csv(kind=str):
    def parse(text: str) -> list:
        try:
            items = [kind(item) for item in text.split(",") if item.strip()]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} in {shorten(text, 40)!r}") from None
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{shorten(text, 40)!r} is not a comma-separated list of {kind.__name__}"
            ) from None
        if not items:
            raise argparse.ArgumentTypeError("expected at least one item")
        return items

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--cases",
        type=_csv(),
        default=list(CASES),
        help=f"subset of {','.join(CASES)} (the default), or the opt-in {','.join(EXTRA_CASES)}",
    )
    parser.add_argument(
        "--contestants",
        type=_csv(),
        default=None,
        help="subset of " + ",".join(c.name for c in C.CONTESTANTS),
    )
    parser.add_argument(
        "--dtypes", type=_csv(), default=list(DTYPES), help="subset of fp32,bf16 (step cases; default: both)"
    )
    parser.add_argument("--sizes", type=_csv(integer), default=None,
                        help=f"matrix sizes n (n×n), e.g. 1024,4096, at most {MAX_SIZE} (default: the device's list)")
    parser.add_argument("--depths", type=_csv(integer), default=None,
                        help=f"NanoChat depths, e.g. 12,20,26, at most {MAX_DEPTH} (default: the device's list)")
    parser.add_argument("--ns-sizes", type=_csv(integer), default=None,
                        help=f"Newton–Schulz sizes n (n×n), at most {MAX_SIZE} (default: the device's list)")
    parser.add_argument("--budget", type=number_in(0, MAX_BUDGET_S, lo_open=True), default=None,
                        help=f"seconds of repetitions per measurement, at most {MAX_BUDGET_S:g} (default: the "
                             "plan's)")
    parser.add_argument(
        "--threads",
        type=integer,
        default=None,
        help="CPU threads for torch (default: torch's choice; 1 is steadier on a busy machine)",
    )
    parser.add_argument(
        "--triton-interpreter",
        action="store_true",
        help="on the CPU, also run the Triton contestants under Triton's interpreter (a check "
        "that they run, not a timing; use with --quick)",
    )
    parser.add_argument(
        "--rerender",
        type=Path,
        default=None,
        metavar="JSON",
        help="only rewrite the .md and .png beside this results JSON (nothing is measured; default: measure)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device name (cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: only cpu and cuda are benchmarked")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available here; use --device cpu")
    return device


def _check(args) -> None:
    bad = [c for c in args.cases if c not in CASES + EXTRA_CASES]
    if bad:
        raise ValueError(f"--cases: unknown {', '.join(bad)}; known: {', '.join(CASES + EXTRA_CASES)}")
    bad = [d for d in args.dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"--dtypes: unknown {', '.join(bad)}; known: {', '.join(DTYPES)}")
    for flag, largest in (("sizes", MAX_SIZE), ("depths", MAX_DEPTH), ("ns_sizes", MAX_SIZE)):
        if any(n <= 0 for n in getattr(args, flag) or []):
            raise ValueError(f"--{flag.replace('_', '-')}: sizes must be positive")
        if any(n > largest for n in getattr(args, flag) or []):
            raise ValueError(f"--{flag.replace('_', '-')}: at most {largest}")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise ValueError(f"--threads must be positive and at most {MAX_THREADS}")
    if args.budget is not None and not (args.budget > 0 and math.isfinite(args.budget)):
        raise ValueError("--budget must be a positive number of seconds")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _rerender(path: Path) -> int:
    try:
        check_regular_file(path, "results JSON", report.MAX_RESULTS_BYTES)
        check_writable_folder(path.parent)
        written = report.rerender(path)
    except (ReadError, WriteError) as exc:
        print(f"fusedgate bench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fusedgate bench: error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        reason = shorten(f"{type(exc).__name__}: {str(exc).split(';')[0]}", 160)
        print(f"fusedgate bench: error: {path} is not a fusedgate bench results JSON ({reason})", file=sys.stderr)
        return 2
    for out in written:
        print(f"wrote {out}")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.rerender is not None:
        return _rerender(args.rerender)
    try:
        _check(args)
        device = _device(args.device)
        chosen = C.by_name(args.contestants)
        check_writable_folder(args.out)  # before measuring for minutes
    except (ValueError, WriteError) as exc:
        print(f"fusedgate bench: error: {exc}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    kind = "quick" if args.quick else ("gpu" if device.type == "cuda" else "cpu")
    plan = suite.PLANS[kind]
    if args.budget is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget)
    todo = workloads(kind, tuple(args.cases), args.sizes, args.depths, args.ns_sizes)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `timeout` ends the run: keep what was measured
    try:
        result = suite.run(
            device,
            kind,
            todo,
            chosen,
            list(args.dtypes),
            plan,
            progress=not args.no_progress,
            interpreter=args.triton_interpreter,
        )
    except KeyboardInterrupt:
        print("fusedgate bench: interrupted before the first measurement; nothing written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    result["targets"] = evaluate(result["results"])
    try:
        paths = report.write_all(result, args.out)
    except OSError as exc:  # WriteError from the atomic writer, or the folder could not be created
        detail = str(exc) if isinstance(exc, WriteError) else f"cannot write results to {args.out}: {exc.strerror}"
        print(f"fusedgate bench: error: {detail}", file=sys.stderr)
        return 1
    ok = sum(r["status"] == "ok" for r in result["results"])
    interrupted = len(result["results"]) < result["planned"]
    if interrupted:
        print(f"interrupted: {len(result['results'])} of {result['planned']} measurements done")
    print(
        f"{ok}/{len(result['results'])} measurements ran on {result['environment']['device']}; "
        f"copy bandwidth {result['copy']['gbps']:.0f} GB/s"
    )
    for line in report.not_run(result["results"]):
        print(line)
    for t in result["targets"]:
        print(f"target [{t['status']}] {t['target']}: {t['detail']}")
    for path in paths:
        print(f"wrote {path}")
    return 130 if interrupted else 0
