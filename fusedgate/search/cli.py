"""``fusedgate search run|resume|report|calibrate|noise``.

    fusedgate search noise --seeds 0-7 --horizons 100,300   # the noise floor: which horizons can tell
    fusedgate search run --preset tiny --generations 3 --population 6 --survivors 2 \\
        --screen-steps 100 --horizons 300,600 --seeds 10-17  # writes search.sqlite
    fusedgate search report                                 # writes search_report/report.md + PNGs
    fusedgate search resume                                 # after a kill: continues where it stopped
    fusedgate search calibrate --n 8 --screen-steps 100 --confirm-steps 300

Errors in what the user gave (a flag, a spec or archive file, an unreachable cluster) are one line on
stderr and exit code 2. ``resume`` never runs a command stored in the archive: an external mutator
must be given again with ``--mutator-cmd`` on the resuming command line.
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
import time

from fusedgate.argtypes import int_in, int_list, number_in, number_list
from fusedgate.files import ReadError, WriteError, check_regular_file, check_writable_folder
from fusedgate.search.archive import Archive, ArchiveError
from fusedgate.search.mutations import OPERATORS
from fusedgate.spec import GateSpec, SpecError

# val tokens of a final evaluation: on the tiny preset's stdlib corpus this puts the val-set sampling
# error of a paired difference (candidate - baseline on the same val windows) near 0.0018 bpb
FINAL_EVAL_TOKENS = 524_288


class UsageError(ValueError):
    """Bad input from the user: one line on stderr, exit code 2."""


def load_spec_file(path: str) -> GateSpec:
    """A spec file (``GateSpec.load``: a regular UTF-8 file, size-capped), errors as one UsageError line."""
    try:
        return GateSpec.load(path)
    except SpecError as exc:
        raise UsageError(f"spec file {path}: {exc}") from None


# bounds on what a user types (issue 22): checked by the parser, before anything is allocated or created
MAX_SEED = 2**32 - 1
MAX_SEEDS = 1000           # per seed list; a range is sized before it is expanded
MAX_STEPS = 10**9          # the trainer's own bound
MAX_GENERATIONS = 1000
MAX_POPULATION = 1000
MAX_EVAL_TOKENS = 10**12   # the trainer's bound on final_eval_tokens
MAX_WORKERS = 1024
MAX_LR_SCALE = 100.0
MAX_TIMEOUT_S = 86_400.0


def _seeds(most: int = MAX_SEEDS):
    return int_list(0, MAX_SEED, most)


def _steps_flag(p, name: str, default: int | None, what: str) -> None:
    shown = "" if default is None else f" (default {default})"
    p.add_argument(name, type=int_in(1, MAX_STEPS), default=default, help=f"{what}, 1 to {MAX_STEPS:,}{shown}")


def _add_executor_args(p) -> None:
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="local process pool (default) or Ray")
    p.add_argument("--workers", type=int_in(1, MAX_WORKERS), default=None,
                   help=f"local workers, 1 to {MAX_WORKERS} (default: --jobs-per-gpu per GPU, else one "
                        "single-threaded worker per CPU core)")
    p.add_argument("--jobs-per-gpu", type=int_in(1, 64), default=1,
                   help="local workers sharing each GPU, 1 to 64 (default 1)")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto, ray://host:10001; default: none)")
    p.add_argument("--connect-timeout", type=number_in(0, 3600, lo_open=True), default=10.0,
                   help="Ray: seconds to wait for --address, at most 3600 (default 10)")
    p.add_argument("--gpus-per-job", type=number_in(0, 64), default=0.0, help="Ray: GPUs per job, 0 to 64 (default 0)")
    p.add_argument("--cpus-per-job", type=int_in(1, MAX_WORKERS), default=1,
                   help=f"Ray: CPUs per job, 1 to {MAX_WORKERS} (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_corpus_args(p, db: str, out: str | None) -> None:
    """--db, --out, --preset and --data, shared by run, calibrate and noise."""
    p.add_argument("--db", default=db, metavar="ARCHIVE", help=f"archive file (default {db})")
    if out is not None:
        p.add_argument("--out", default=out, metavar="DIR", help=f"report folder (default {out})")
    p.add_argument("--preset", default="tiny", help="NanoChat preset: test, tiny, small, d12, d20 (default tiny)")
    p.add_argument("--data", default=None, metavar="PATH", help="corpus path (default: the python stdlib)")


def _add_run_args(run) -> None:
    _add_corpus_args(run, "search.sqlite", None)
    run.add_argument("--generations", type=int_in(1, MAX_GENERATIONS), default=3,
                     help=f"generations, 1 to {MAX_GENERATIONS} (default 3)")
    run.add_argument("--population", type=int_in(1, MAX_POPULATION), default=6,
                     help=f"candidates per generation, elites included, 1 to {MAX_POPULATION} (default 6)")
    run.add_argument("--survivors", type=int_in(1, MAX_POPULATION), default=2,
                     help="confirmed per generation, and elites kept; at most --population (default 2)")
    _steps_flag(run, "--screen-steps", 100, "screening horizon, the early prune")
    run.add_argument("--screen-seeds", type=_seeds(), default=[0, 1],
                     help=f"screening seeds, comma-separated or ranges, at most {MAX_SEEDS} (default 0,1)")
    run.add_argument("--horizons", type=int_list(1, MAX_STEPS, 8), default=[300, 600],
                     help="confirmation horizons: a win must hold at every one, at most 8 (default 300,600)")
    run.add_argument("--seeds", type=_seeds(), default=list(range(10, 18)),
                     help=f"confirmation seeds, e.g. 10-17, from 0 to {MAX_SEED} (default 10-17)")
    run.add_argument("--lr-scales", type=number_list(0, MAX_LR_SCALE, 16, lo_open=True), default=[0.7, 1.0, 1.4],
                     help="reference lr scales swept at each horizon (the best is the tuned reference), including "
                          "1; a winner must not be significantly worse at the others (default 0.7,1,1.4)")
    run.add_argument("--holdout-seeds", type=_seeds(), default=list(range(30, 38)),
                     help="held-out seeds of the steps-to-target stage (default 30-37)")
    run.add_argument("--ladder", type=number_list(0.1, 10, 16), default=[0.8, 0.9, 1.0, 1.15],
                     help="steps-to-target ratios r, including 1: the reference also runs H/r steps "
                          "(default 0.8,0.9,1,1.15)")
    run.add_argument("--final-eval-tokens", type=int_in(1, MAX_EVAL_TOKENS), default=FINAL_EVAL_TOKENS,
                     help=f"val tokens of the final evaluation after screening (default {FINAL_EVAL_TOKENS})")
    run.add_argument("--transfer-preset", default="tiny-d4",
                     help="held-out transfer configuration (default tiny-d4: the tiny preset at depth 4)")
    _steps_flag(run, "--transfer-steps", None, "transfer horizon (default: the first of --horizons)")
    run.add_argument("--transfer-seeds", type=_seeds(), default=list(range(50, 58)),
                     help="held-out transfer seeds (default 50-57)")
    run.add_argument("--min-effect", type=number_in(0, 10), default=None,
                     help="minimal mean gain in bpb for a win, 0 to 10 (default: from the noise floor)")
    run.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, help="seed of the mutation RNG (default 0)")
    run.add_argument("--init", action="append", default=None, metavar="SPEC.json",
                     help="initial spec file (repeatable; default: nanochat(), GateSpec.gated() and a gated "
                          "Muon spec)")
    run.add_argument("--operators", default=None,
                     help=f"comma-separated operators, or 'all' (default: all except those the trainer "
                          f"overrides). Known: {', '.join(OPERATORS)}")
    run.add_argument("--reuse", action="append", default=None, metavar="ARCHIVE",
                     help="copy finished runs with the same job keys from another archive (e.g. a noise "
                          "measurement; repeatable; default: none)")
    run.add_argument("--mutator-cmd", default=None,
                     help="external mutator, run without a shell: spec JSON on stdin -> child on stdout "
                          "(default: none, the built-in operators)")
    run.add_argument("--mutator-timeout", type=number_in(0, MAX_TIMEOUT_S, lo_open=True), default=300.0,
                     help="seconds the external mutator may take per child (default 300)")
    run.add_argument("--mutator-retries", type=int_in(0, 100), default=2,
                     help="attempts after a rejected or failed child, 0 to 100 (default 2)")
    _add_executor_args(run)


def _add_resume_args(resume) -> None:
    resume.add_argument("--db", default="search.sqlite", metavar="ARCHIVE",
                        help="the archive to continue (default search.sqlite)")
    resume.add_argument("--mutator-cmd", default=None,
                        help="the external mutator, again: a command stored in an archive is never run "
                             "(default: none)")
    _add_executor_args(resume)


def _add_report_args(report) -> None:
    report.add_argument("--db", default="search.sqlite", metavar="ARCHIVE",
                        help="archive to report on (default search.sqlite)")
    report.add_argument("--out", default="search_report", metavar="DIR",
                        help="output directory (default search_report)")


def _add_calibrate_args(cal) -> None:
    _add_corpus_args(cal, "calibrate.sqlite", "calibrate_report")
    cal.add_argument("--n", type=int_in(2, 10_000), default=8, help="number of random specs, 2 to 10,000 (default 8)")
    _steps_flag(cal, "--screen-steps", 100, "screening horizon")
    _steps_flag(cal, "--confirm-steps", 300, "confirmation horizon")
    cal.add_argument("--seeds", type=_seeds(), default=[0], help="confirmation seeds (default 0)")
    cal.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, help="seed of the random specs (default 0)")
    cal.add_argument("--final-eval-tokens", type=int_in(1, MAX_EVAL_TOKENS), default=None,
                     help="val tokens of the final evaluation (default: the preset's eval set)")
    _add_executor_args(cal)


def _add_noise_args(noise) -> None:
    _add_corpus_args(noise, "noise.sqlite", "noise_report")
    noise.add_argument("--seeds", type=_seeds(), default=list(range(8)), help="seeds, at least 2 (default 0-7)")
    noise.add_argument("--horizons", type=int_list(1, MAX_STEPS, 100), default=[100, 300],
                       help="training steps, comma-separated, at most 100 (default 100,300)")
    noise.add_argument("--second-lr-scale", type=number_in(0, MAX_LR_SCALE, lo_open=True), default=0.7,
                       help="lr scale of the second baseline configuration (paired differences; default 0.7)")
    noise.add_argument("--final-eval-tokens", type=int_in(1, MAX_EVAL_TOKENS), default=FINAL_EVAL_TOKENS,
                       help=f"val tokens of the final evaluation (default {FINAL_EVAL_TOKENS})")
    _add_executor_args(noise)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="search_command", metavar="ACTION", required=True)
    _add_run_args(sub.add_parser("run", help="start a new search"))
    _add_resume_args(sub.add_parser("resume", help="continue a search from its archive"))
    _add_report_args(sub.add_parser("report", help="write report.md and plots from an archive"))
    _add_calibrate_args(sub.add_parser("calibrate", help="rank correlation of screening vs confirmation on random "
                                                         "specs; resumed when --db exists"))
    _add_noise_args(sub.add_parser("noise", help="the noise floor: baseline seed spread and paired differences per "
                                                 "horizon; resumed when --db exists"))


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


def _config(args):
    """The SearchConfig of ``search run``'s flags (one validator: ``SearchConfig.validate``)."""
    from fusedgate.search.config import ConfigError, SearchConfig
    from fusedgate.search.evaluate import corpus_fingerprint

    if args.mutator_cmd is not None:
        _mutator_argv(args.mutator_cmd)
    operators = None
    if args.operators == "all":
        operators = list(OPERATORS)
    elif args.operators:
        operators = [n.strip() for n in args.operators.split(",") if n.strip()]
        if not operators:
            raise UsageError(f"--operators: none given; known: {', '.join(OPERATORS)}")
    fields = dict(
        preset=args.preset, data=args.data, generations=args.generations, population=args.population,
        survivors=args.survivors, screen_steps=args.screen_steps, screen_seeds=args.screen_seeds,
        horizons=args.horizons, confirm_seeds=args.seeds, lr_scales=args.lr_scales, holdout_seeds=args.holdout_seeds,
        ladder=args.ladder, final_eval_tokens=args.final_eval_tokens, transfer_preset=args.transfer_preset,
        transfer_steps=args.transfer_steps, transfer_seeds=args.transfer_seeds, min_effect=args.min_effect,
        seed=args.seed, mutator_cmd=args.mutator_cmd, mutator_timeout=args.mutator_timeout,
        mutator_retries=args.mutator_retries,
    )
    if operators is not None:
        fields["operators"] = operators
    if args.init:
        fields["init_specs"] = [load_spec_file(path).to_json(indent=None) for path in args.init]
    try:
        cfg = SearchConfig(**fields)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    corpus_fingerprint(args.data, args.preset)  # a bad --data fails now, before the archive is created
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
    print(f"search finished in {time.time() - t0:.0f} s: {len(rows)} specs, archive {archive.path}")
    best = rows[0] if rows and rows[0]["confirm"]["robust_score"] is not None else None
    if best:
        conf = best["confirm"]
        gains = ", ".join(f"{h} steps {a['bpb_gain']:+.4f} (95% lower bound {a['gain_lower95']:+.4f})"
                          for h, a in conf["horizons"].items() if a)
        print(f"best: #{best['id']} {best['hash']}: gain vs the tuned reference {gains}; multi-horizon win: "
              f"{'yes' if conf['win'] else 'no'}{', transfer holds' if best['announced'] else ''}")
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
                _open_archive(path, "--reuse").close()  # a bad --reuse fails before the archive is created
            archive = Archive.create(args.db, cfg)
            for path in args.reuse or ():
                print(f"reused {archive.import_evaluations(path)} finished runs from {path}", file=sys.stderr)
            return _search(archive, args)
        if args.search_command == "resume":
            archive = _open_archive(args.db, "--db")
            if archive.config().get("mode") == "calibrate":
                raise ValueError(
                    f"{args.db} is a calibration archive: rerun `fusedgate search calibrate --db {args.db}`"
                )
            return _search(archive, args)
        if args.search_command == "report":
            from fusedgate.search.report import write_report

            _check_out(args.out)
            archive = _open_archive(args.db, "--db")
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
    except OSError as exc:  # a report folder that turned unwritable during the run
        reason = str(exc) if isinstance(exc, WriteError) else f"{exc.filename or ''}: {exc.strerror or exc}"
        print(f"fusedgate search: error: {reason}", file=sys.stderr)
        return 2
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


def _open_archive(path: str, flag: str) -> Archive:
    """``Archive.open`` of a regular file: a FIFO, a device or a folder is named as such (stat, not opened);
    a missing one is Archive.open's "no such archive"."""
    if os.path.lexists(path):
        try:
            check_regular_file(path, f"{flag} archive")
        except ReadError as exc:
            raise UsageError(str(exc)) from None
    return Archive.open(path)


def _check_out(out: str) -> None:
    """A report folder that can be written (created if missing), checked before any work: one UsageError line."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a folder")
    try:
        check_writable_folder(out)
    except WriteError as exc:
        raise UsageError(f"--out {out}: {exc}") from None


def _resume_archive(db: str, mode: str, what: str):
    """The existing archive at ``db`` when it holds ``mode`` runs (to resume them), None when there is none;
    a UsageError when it holds something else."""
    if not os.path.lexists(db):
        return None
    archive = _open_archive(db, "--db")
    if archive.config().get("mode") != mode:
        archive.close()
        raise UsageError(f"{db} is not {what} archive; choose another --db")
    print(f"resuming {what} in {db} (its stored settings apply)", file=sys.stderr)
    return archive


def _run_measurement(run, archive: Archive, args) -> dict:
    """``run(archive, executor, log=, progress=)`` on an executor made for the archive's config; the
    executor and the archive are closed however it ends (the archive too when no executor can be made)."""
    try:
        executor = make_executor(args, archive.config())
    except BaseException:
        archive.close()
        raise
    try:
        return run(archive, executor, log=lambda m: print(m, file=sys.stderr), progress=not args.no_progress)
    finally:
        executor.close()
        archive.close()


def _calibrate(args) -> int:
    _check_out(args.out)
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
    t0 = time.time()
    summary = _run_measurement(run_calibration, archive, args)
    path = write_report(summary, args.out)
    print(
        f"calibration finished in {time.time() - t0:.0f} s: {summary['n_done']} specs; Spearman rho "
        f"score {summary['rho_score']:.3f}, val bpb {summary['rho_bpb']:.3f} (n={summary['n_bpb']}); wrote {path}"
    )
    return 0


def _noise(args) -> int:
    _check_out(args.out)
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
    t0 = time.time()
    summary = _run_measurement(run_noise, archive, args)
    path = write_report(summary, args.out)
    print(f"noise floor measured in {time.time() - t0:.0f} s; wrote {path}")
    for h in summary["horizons"]:
        print(
            f"  {h['steps']} steps: seed sd {h['seed_sd']:.4f}, paired sd {h['paired_sd']:.4f}, "
            f"val se {h['val_se']:.4f} (paired {h['paired_val_se']:.4f}), MDE(5 seeds) {h['mde5']:.4f}"
        )
    return 0
