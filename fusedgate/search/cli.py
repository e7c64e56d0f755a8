"""``fusedgate search run|resume|report|calibrate``.

    fusedgate search run --preset tiny --generations 2 --population 4 --survivors 2 \\
        --screen-steps 20 --confirm-steps 60            # writes search.sqlite
    fusedgate search report                             # writes search_report/report.md + PNGs
    fusedgate search resume                             # after a kill: continues where it stopped
    fusedgate search calibrate --n 6 --screen-steps 20 --confirm-steps 80
"""

from __future__ import annotations

import sys
import time

from fusedgate.search.archive import Archive, ArchiveError
from fusedgate.search.mutations import OPERATORS
from fusedgate.spec import GateSpec, SpecError


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"fusedgate search: error: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise SystemExit("fusedgate search: error: expected at least one seed")
    return values


def _add_executor_args(p) -> None:
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="local process pool (default) or Ray")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local workers (default: one per GPU, else one per CPU core)",
    )
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto, ray://host:10001)")
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
    run.add_argument("--screen-steps", type=int, default=20)
    run.add_argument("--confirm-steps", type=int, default=60)
    run.add_argument("--screen-seeds", type=_ints, default=[0], help="comma-separated (default 0)")
    run.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="confirmation seeds (default 0,1,2)")
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
    run.add_argument("--mutator-cmd", default=None, help="external mutator: spec JSON on stdin -> child on stdout")
    run.add_argument("--mutator-timeout", type=float, default=300.0)
    run.add_argument("--mutator-retries", type=int, default=2)
    _add_executor_args(run)

    resume = sub.add_parser("resume", help="continue a search from its archive")
    resume.add_argument("--db", default="search.sqlite")
    _add_executor_args(resume)

    report = sub.add_parser("report", help="write report.md and plots from an archive")
    report.add_argument("--db", default="search.sqlite")
    report.add_argument("--out", default="search_report", help="output directory (default search_report)")

    cal = sub.add_parser("calibrate", help="rank correlation of screening vs confirmation on random specs")
    cal.add_argument("--db", default="calibrate.sqlite", help="archive (resumed if it exists)")
    cal.add_argument("--out", default="calibrate_report")
    cal.add_argument("--preset", default="tiny")
    cal.add_argument("--data", default=None)
    cal.add_argument("--n", type=int, default=6, help="number of random specs")
    cal.add_argument("--screen-steps", type=int, default=20)
    cal.add_argument("--confirm-steps", type=int, default=80)
    cal.add_argument("--seeds", type=_ints, default=[0])
    cal.add_argument("--seed", type=int, default=0)
    _add_executor_args(cal)


def make_executor(args):
    if args.executor == "ray":
        try:
            from fusedgate.search.executors import RayExecutor
        except ImportError:
            raise ArchiveError("the Ray executor needs ray: pip install 'fusedgate[ray]'") from None
        return RayExecutor(args.address, cpus_per_job=args.cpus_per_job, gpus_per_job=args.gpus_per_job)
    from fusedgate.search.executors import LocalExecutor

    return LocalExecutor(workers=args.workers)


def _config(args) -> dict:
    from fusedgate.nanochat.presets import get_preset
    from fusedgate.search.evaluate import corpus_fingerprint
    from fusedgate.search.tournament import default_config

    get_preset(args.preset)  # unknown preset -> TrainError
    corpus_fingerprint(args.data, args.preset)  # a bad --data fails now, before the archive is created
    for name in ("generations", "population", "survivors", "screen_steps", "confirm_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.survivors > args.population:
        raise ValueError("--survivors cannot exceed --population")
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
        seed=args.seed,
        mutator_cmd=args.mutator_cmd,
        mutator_timeout=args.mutator_timeout,
        mutator_retries=args.mutator_retries,
    )
    if args.init:
        cfg["init_specs"] = [GateSpec.load(path).to_json(indent=None) for path in args.init]
    if args.operators == "all":
        cfg["operators"] = list(OPERATORS)
    elif args.operators:
        names = [n.strip() for n in args.operators.split(",") if n.strip()]
        unknown = [n for n in names if n not in OPERATORS]
        if unknown or not names:
            raise ValueError(
                f"unknown operator(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(OPERATORS)}"
            )
        cfg["operators"] = names
    return cfg


def _search(archive, args) -> int:
    from fusedgate.search.external_mutator import ExternalMutator
    from fusedgate.search.tournament import Search

    cfg = archive.config()
    mutator = (
        ExternalMutator(cfg["mutator_cmd"], cfg["mutator_timeout"], data=cfg["data"])
        if cfg.get("mutator_cmd")
        else None
    )
    executor = make_executor(args)
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
            f"best: #{best['id']} {best['hash']} val bpb {c['final_val_bpb']:.4f}, gain vs nanochat "
            f"{c['bpb_gain']:+.4f} bpb, throughput {c['throughput_ratio']:.3f}x, win: {'yes' if c['win'] else 'no'}"
        )
    print(f"next: fusedgate search report --db {archive.path}")
    return 0


def main(args) -> int:
    from fusedgate.nanochat.errors import TrainError

    archive = None
    try:
        if args.search_command == "run":
            cfg = _config(args)
            archive = Archive.create(args.db, cfg)
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
    except (ArchiveError, SpecError, TrainError, ValueError, RuntimeError) as exc:
        print(f"fusedgate search: error: {exc}", file=sys.stderr)
        return 1
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


def _calibrate(args) -> int:
    import os

    from fusedgate.nanochat.presets import get_preset
    from fusedgate.search.calibrate import calibration_config, run_calibration, write_report

    get_preset(args.preset)
    if args.n < 2:
        raise ValueError("--n must be at least 2 to compute a rank correlation")
    if os.path.exists(args.db):
        archive = Archive.open(args.db)
        if archive.config().get("mode") != "calibrate":
            archive.close()
            raise ValueError(f"{args.db} is a search archive, not a calibration; choose another --db")
        print(f"resuming calibration in {args.db} (its stored settings apply)", file=sys.stderr)
    else:
        archive = Archive.create(
            args.db,
            calibration_config(
                args.preset, args.n, args.screen_steps, args.confirm_steps, args.seeds, args.seed, args.data
            ),
        )
    executor = make_executor(args)
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
