"""``fusedgate search run|resume|report|calibrate|noise``.

    fusedgate search noise --seeds 0-7 --horizons 100,300   # the noise floor: which horizons can tell
    fusedgate search run --preset tiny --generations 4 --population 6 --survivors 2 \\
        --screen-steps 100 --confirm-steps 300 --seeds 0-4  # writes search.sqlite
    fusedgate search report                                 # writes search_report/report.md + PNGs
    fusedgate search resume                                 # after a kill: continues where it stopped
    fusedgate search calibrate --n 8 --screen-steps 100 --confirm-steps 300

Errors in what the user gave (a flag, a spec or archive file, an unreachable cluster) are one line on
stderr and exit code 2. ``resume`` never runs a command stored in the archive: an external mutator
must be given again with ``--mutator-cmd`` on the resuming command line.
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import sys
import time

from fusedgate.search.archive import Archive, ArchiveError
from fusedgate.search.mutations import OPERATORS
from fusedgate.search.tournament import LR_SCALES
from fusedgate.spec import GateSpec, SpecError

# val tokens of a final evaluation: on the tiny preset's stdlib corpus this puts the val-set sampling
# error of a paired difference (candidate - baseline on the same val windows) near 0.0018 bpb
FINAL_EVAL_TOKENS = 524_288


def _ints(text: str) -> list[int]:
    """Comma-separated integers and ranges: "0,1,2", "0-4", "0-4,10"."""
    values = []
    try:
        for part in (x.strip() for x in text.split(",")):
            if not part:
                continue
            lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
            values += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers or ranges (0-4), got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"repeated values in {text!r}")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


class UsageError(ValueError):
    """Bad input from the user: one line on stderr, exit code 2."""


def load_spec_file(path: str) -> GateSpec:
    """A spec file (``GateSpec.load``: a regular UTF-8 file, size-capped), errors as one UsageError line."""
    try:
        return GateSpec.load(path)
    except SpecError as exc:
        raise UsageError(f"spec file {path}: {exc}") from None


def _add_executor_args(p) -> None:
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="local process pool (default) or Ray")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local workers (default: --jobs-per-gpu per GPU, else one single-threaded worker per CPU core)",
    )
    p.add_argument("--jobs-per-gpu", type=int, default=1, help="local workers sharing each GPU (default 1)")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto, ray://host:10001)")
    p.add_argument(
        "--connect-timeout", type=float, default=10.0, help="Ray: seconds to wait for --address (default 10)"
    )
    p.add_argument("--gpus-per-job", type=float, default=0.0, help="Ray: GPUs per job (default 0)")
    p.add_argument("--cpus-per-job", type=int, default=1, help="Ray: CPUs per job (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="search_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="start a new search")
    run.add_argument("--db", default="search.sqlite", help="archive file to create (default search.sqlite)")
    run.add_argument("--preset", default="tiny", help="NanoChat preset (test, tiny, small, d12, d20)")
    run.add_argument("--data", default=None, help="corpus path (default: the python stdlib)")
    run.add_argument("--generations", type=int, default=2)
    run.add_argument("--population", type=int, default=4, help="candidates per generation, elites included")
    run.add_argument("--survivors", type=int, default=2, help="confirmed per generation, and elites kept")
    run.add_argument("--screen-steps", type=int, default=100, help="screening horizon (default 100)")
    run.add_argument("--confirm-steps", type=int, default=300, help="confirmation horizon (default 300)")
    run.add_argument("--screen-seeds", type=_ints, default=[0], help="comma-separated (default 0)")
    run.add_argument("--seeds", type=_ints, default=[0, 1, 2, 3, 4], help="confirmation seeds (default 0-4)")
    run.add_argument(
        "--lr-scales",
        type=_floats,
        default=list(LR_SCALES),
        help="baseline lr scales swept at confirmation; the best is the tuned baseline (default 0.5,0.7,1,1.4,2)",
    )
    run.add_argument(
        "--final-eval-tokens",
        type=int,
        default=FINAL_EVAL_TOKENS,
        help=f"val tokens of the final evaluation at confirmation and transfer (default {FINAL_EVAL_TOKENS})",
    )
    run.add_argument("--transfer-steps", type=int, default=None, help="transfer horizon (default 2x --confirm-steps)")
    run.add_argument(
        "--transfer-seeds", type=_ints, default=None, help="held-out transfer seeds (default 1000, 1001, ...)"
    )
    run.add_argument(
        "--min-effect", type=float, default=None, help="minimal mean gain for a win (default: from the noise floor)"
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the mutation RNG")
    run.add_argument(
        "--init",
        action="append",
        default=None,
        metavar="SPEC.json",
        help="initial spec file (repeatable; default: a gated Muon spec and GateSpec.default())",
    )
    run.add_argument(
        "--operators",
        default=None,
        help=f"comma-separated operators, or 'all' (default: all except those the trainer "
        f"overrides). Known: {', '.join(OPERATORS)}",
    )
    run.add_argument(
        "--reuse",
        action="append",
        default=None,
        metavar="ARCHIVE",
        help="copy finished runs with the same job keys from another archive (e.g. a noise measurement)",
    )
    run.add_argument(
        "--mutator-cmd",
        default=None,
        help="external mutator, run without a shell: spec JSON on stdin -> child on stdout",
    )
    run.add_argument("--mutator-timeout", type=float, default=300.0)
    run.add_argument("--mutator-retries", type=int, default=2)
    _add_executor_args(run)

    resume = sub.add_parser("resume", help="continue a search from its archive")
    resume.add_argument("--db", default="search.sqlite")
    resume.add_argument(
        "--mutator-cmd",
        default=None,
        help="the external mutator, again: a command stored in an archive is never run",
    )
    _add_executor_args(resume)

    report = sub.add_parser("report", help="write report.md and plots from an archive")
    report.add_argument("--db", default="search.sqlite")
    report.add_argument("--out", default="search_report", help="output directory (default search_report)")

    cal = sub.add_parser("calibrate", help="rank correlation of screening vs confirmation on random specs")
    cal.add_argument("--db", default="calibrate.sqlite", help="archive (resumed if it exists)")
    cal.add_argument("--out", default="calibrate_report")
    cal.add_argument("--preset", default="tiny")
    cal.add_argument("--data", default=None)
    cal.add_argument("--n", type=int, default=8, help="number of random specs (default 8)")
    cal.add_argument("--screen-steps", type=int, default=100)
    cal.add_argument("--confirm-steps", type=int, default=300)
    cal.add_argument("--seeds", type=_ints, default=[0])
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--final-eval-tokens", type=int, default=None, help="val tokens of the final evaluation")
    _add_executor_args(cal)

    noise = sub.add_parser("noise", help="the noise floor: baseline seed spread and paired differences per horizon")
    noise.add_argument("--db", default="noise.sqlite", help="archive (resumed if it exists)")
    noise.add_argument("--out", default="noise_report")
    noise.add_argument("--preset", default="tiny")
    noise.add_argument("--data", default=None)
    noise.add_argument("--seeds", type=_ints, default=list(range(8)), help="seeds (default 0-7)")
    noise.add_argument("--horizons", type=_ints, default=[100, 300], help="training steps (default 100,300)")
    noise.add_argument(
        "--second-lr-scale",
        type=float,
        default=0.7,
        help="lr scale of the second baseline configuration (paired differences; default 0.7)",
    )
    noise.add_argument("--final-eval-tokens", type=int, default=FINAL_EVAL_TOKENS)
    _add_executor_args(noise)


def make_executor(args, cfg: dict | None = None):
    """The executor of ``args``; local workers pre-load the corpus of ``cfg``."""
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.jobs_per_gpu < 1:
        raise UsageError("--jobs-per-gpu must be at least 1")
    if args.executor == "ray":
        try:
            import ray  # noqa: F401

            from fusedgate.search.executors import RayExecutor, UnreachableError
        except ImportError:
            raise UsageError("the Ray executor needs ray: pip install 'fusedgate[ray]'") from None
        try:
            return RayExecutor(
                args.address,
                cpus_per_job=args.cpus_per_job,
                gpus_per_job=args.gpus_per_job,
                connect_timeout=None,  # checked by _check_executor_args before anything was created
            )
        except UnreachableError as exc:
            raise UsageError(str(exc)) from None
    from fusedgate.search.executors import LocalExecutor

    warm = ((cfg["data"], cfg["preset"]),) if cfg else ()
    return LocalExecutor(workers=args.workers, jobs_per_gpu=args.jobs_per_gpu, warm=warm)


def _config(args) -> dict:
    from fusedgate.nanochat.presets import get_preset
    from fusedgate.search.evaluate import corpus_fingerprint
    from fusedgate.search.tournament import default_config

    get_preset(args.preset)  # unknown preset -> TrainError
    corpus_fingerprint(args.data, args.preset)  # a bad --data fails now, before the archive is created
    for name in ("generations", "population", "survivors", "screen_steps", "confirm_steps", "final_eval_tokens"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.transfer_steps is not None and args.transfer_steps < 1:
        raise UsageError("--transfer-steps must be at least 1")
    if args.survivors > args.population:
        raise UsageError("--survivors cannot exceed --population")
    if args.mutator_cmd is not None:
        _mutator_argv(args.mutator_cmd)
    cfg = default_config(
        preset=args.preset,
        data=args.data,
        generations=args.generations,
        population=args.population,
        survivors=args.survivors,
        screen_steps=args.screen_steps,
        confirm_steps=args.confirm_steps,
        screen_seeds=args.screen_seeds,
        confirm_seeds=args.seeds,
        lr_scales=args.lr_scales,
        final_eval_tokens=args.final_eval_tokens,
        transfer_steps=args.transfer_steps,
        transfer_seeds=args.transfer_seeds,
        min_effect=args.min_effect,
        seed=args.seed,
        mutator_cmd=args.mutator_cmd,
        mutator_timeout=args.mutator_timeout,
        mutator_retries=args.mutator_retries,
    )
    if args.init:
        cfg["init_specs"] = [load_spec_file(path).to_json(indent=None) for path in args.init]
    if args.operators == "all":
        cfg["operators"] = list(OPERATORS)
    elif args.operators:
        names = [n.strip() for n in args.operators.split(",") if n.strip()]
        unknown = [n for n in names if n not in OPERATORS]
        if unknown or not names:
            raise UsageError(
                f"unknown operator(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(OPERATORS)}"
            )
        cfg["operators"] = names
    return cfg


def _check_executor_args(args) -> None:
    """Executor flags that can be refused before anything is created (an unreachable Ray address)."""
    if getattr(args, "executor", None) == "ray" and args.address:
        from fusedgate.search.executors import UnreachableError, check_reachable

        if not (args.connect_timeout > 0 and math.isfinite(args.connect_timeout)):
            raise UsageError("--connect-timeout must be a positive number of seconds")
        try:
            check_reachable(args.address, args.connect_timeout)
        except UnreachableError as exc:
            raise UsageError(str(exc)) from None


def _mutator_argv(cmd: str) -> list[str]:
    import shlex

    try:
        argv = shlex.split(cmd)
    except ValueError as exc:
        raise UsageError(f"--mutator-cmd {cmd!r}: {exc}") from None
    if not argv:
        raise UsageError("--mutator-cmd is empty")
    return argv


def _mutator_for(archive, args):
    """The external mutator of this invocation's ``--mutator-cmd`` (None without one). On resume, a
    search that was started with a mutator needs ``--mutator-cmd`` again: the command stored in the
    archive is a record, never something to execute."""
    cfg = archive.config()
    cmd = getattr(args, "mutator_cmd", None)
    if args.search_command == "resume" and cfg.get("mutator_cmd") and not cmd:
        raise UsageError(
            f"{archive.path} was started with an external mutator ({cfg['mutator_cmd']!r}); for safety a "
            f"command stored in an archive is never run: pass --mutator-cmd again to resume with it"
        )
    if not cmd:
        return None
    from fusedgate.search.external_mutator import ExternalMutator

    return ExternalMutator(_mutator_argv(cmd), cfg["mutator_timeout"], data=cfg["data"])


def _search(archive, args) -> int:
    from fusedgate.search.tournament import Search

    mutator = _mutator_for(archive, args)
    cfg = archive.config()
    try:
        executor = make_executor(args, cfg)
    except BaseException:
        if mutator:
            mutator.close()
        raise
    t0 = time.time()
    try:
        rows = Search(
            archive, executor, mutator, log=lambda m: print(m, file=sys.stderr), progress=not args.no_progress
        ).run()
    finally:
        executor.close()
        if mutator:
            mutator.close()
    confirmed = [r for r in rows if r["confirm"]]
    best = confirmed[0] if confirmed else None
    print(f"search finished in {time.time() - t0:.0f} s: {len(rows)} specs, archive {archive.path}")
    if best:
        c = best["confirm"]
        print(
            f"best: #{best['id']} {best['hash']} val bpb {c['final_val_bpb']:.4f}, gain vs the tuned baseline "
            f"{c['bpb_gain']:+.4f} bpb (95% lower bound {c['gain_lower95']:+.4f}), throughput "
            f"{c['throughput_ratio']:.3f}x, win: {'yes' if c['win'] else 'no'}"
            f"{', transfer holds' if best['announced'] else ''}"
        )
    print(f"next: fusedgate search report --db {archive.path}")
    return 0


def main(args) -> int:
    from fusedgate.nanochat.errors import TrainError

    archive = None
    try:
        _check_executor_args(args)
        if args.search_command == "run":
            cfg = _config(args)
            for path in args.reuse or ():
                Archive.open(path).close()  # a bad --reuse fails before the archive is created
            archive = Archive.create(args.db, cfg)
            for path in args.reuse or ():
                print(f"reused {archive.import_evaluations(path)} finished runs from {path}", file=sys.stderr)
            return _search(archive, args)
        if args.search_command == "resume":
            archive = Archive.open(args.db)
            if archive.config().get("mode") == "calibrate":
                raise ValueError(
                    f"{args.db} is a calibration archive: rerun `fusedgate search calibrate --db {args.db}`"
                )
            return _search(archive, args)
        if args.search_command == "report":
            from fusedgate.search.report import write_report

            archive = Archive.open(args.db)
            if archive.config().get("mode") == "calibrate":
                from fusedgate.search.calibrate import summarize
                from fusedgate.search.calibrate import write_report as write_calibration

                path = write_calibration(summarize(archive), args.out)
            else:
                path = write_report(archive, args.out)
            print(f"wrote {path}")
            return 0
        if args.search_command == "calibrate":
            return _calibrate(args)
        if args.search_command == "noise":
            return _noise(args)
    except sqlite3.DatabaseError as exc:
        print(f"fusedgate search: error: {args.db}: {exc} (the archive is damaged; restore it from a backup)",
              file=sys.stderr)
        return 2
    except (ArchiveError, SpecError, TrainError, ValueError, RuntimeError) as exc:
        print(f"fusedgate search: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"fusedgate search: interrupted; finished runs are in the archive, continue with "
            f"`fusedgate search resume --db {args.db}`",
            file=sys.stderr,
        )
        return 130
    finally:
        if archive is not None:
            archive.close()
    return 2



def _resume_archive(db: str, mode: str, what: str):
    """The existing archive at ``db`` when it holds ``mode`` runs (to resume them), None when there is none;
    a UsageError when it holds something else."""
    if not os.path.exists(db):
        return None
    archive = Archive.open(db)
    if archive.config().get("mode") != mode:
        archive.close()
        raise UsageError(f"{db} is not {what} archive; choose another --db")
    print(f"resuming {what} in {db} (its stored settings apply)", file=sys.stderr)
    return archive

def _calibrate(args) -> int:

    from fusedgate.nanochat.presets import get_preset
    from fusedgate.search.calibrate import calibration_config, run_calibration, write_report

    get_preset(args.preset)
    if args.n < 2:
        raise UsageError("--n must be at least 2 to compute a rank correlation")
    archive = _resume_archive(args.db, "calibrate", "a calibration")
    if archive is None:
        archive = Archive.create(
            args.db,
            calibration_config(
                args.preset,
                args.n,
                args.screen_steps,
                args.confirm_steps,
                args.seeds,
                args.seed,
                args.data,
                final_eval_tokens=args.final_eval_tokens,
            ),
        )
    try:
        executor = make_executor(args, archive.config())
    except BaseException:
        archive.close()
        raise
    t0 = time.time()
    try:
        summary = run_calibration(
            archive, executor, log=lambda m: print(m, file=sys.stderr), progress=not args.no_progress
        )
    finally:
        executor.close()
        archive.close()
    path = write_report(summary, args.out)
    print(
        f"calibration finished in {time.time() - t0:.0f} s: {summary['n_done']} specs; Spearman rho "
        f"score {summary['rho_score']:.3f}, val bpb {summary['rho_bpb']:.3f} (n={summary['n_bpb']}); wrote {path}"
    )
    return 0


def _noise(args) -> int:

    from fusedgate.nanochat.presets import get_preset
    from fusedgate.search.evaluate import corpus_fingerprint
    from fusedgate.search.noise import noise_config, run_noise, write_report

    get_preset(args.preset)
    if len(args.seeds) < 2:
        raise UsageError("--seeds needs at least 2 seeds to measure a spread")
    if min(args.horizons) < 1 or args.final_eval_tokens < 1:
        raise UsageError("--horizons and --final-eval-tokens must be at least 1")
    if not (args.second_lr_scale > 0 and math.isfinite(args.second_lr_scale)) or args.second_lr_scale == 1.0:
        raise UsageError("--second-lr-scale must be a positive number other than 1")
    archive = _resume_archive(args.db, "noise", "a noise measurement")
    if archive is None:
        corpus_fingerprint(args.data, args.preset)
        archive = Archive.create(
            args.db,
            noise_config(
                args.preset, args.seeds, args.horizons, args.second_lr_scale, args.final_eval_tokens, args.data
            ),
        )
    try:
        executor = make_executor(args, archive.config())
    except BaseException:
        archive.close()
        raise
    t0 = time.time()
    try:
        summary = run_noise(archive, executor, log=lambda m: print(m, file=sys.stderr), progress=not args.no_progress)
    finally:
        executor.close()
        archive.close()
    path = write_report(summary, args.out)
    print(f"noise floor measured in {time.time() - t0:.0f} s; wrote {path}")
    for h in summary["horizons"]:
        print(
            f"  {h['steps']} steps: seed sd {h['seed_sd']:.4f}, paired sd {h['paired_sd']:.4f}, "
            f"val se {h['val_se']:.4f} (paired {h['paired_val_se']:.4f}), MDE(5 seeds) {h['mde5']:.4f}"
        )
    return 0
