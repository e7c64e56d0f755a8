"""The default's robustness grid (issue 19 item 5): ``GateSpec.default()`` (FusedGate ``nanochat()``) against the
baseline (``fusedgate.nanochat.muon.MuonAdamW``, the independent re-implementation of nanochat's optimizer) at
100, 300 and 600 steps and lr ×0.7 / ×1 / ×1.4, paired by seed on the same batches, final val bpb measured
as the search measures it (the confirmation stage's evaluation size).

    python bench/results/search_multi/default_vs_baseline.py SEARCH_DB ROBUST_DB [--seeds 10-14] [--workers 2]

ROBUST_DB is created on the first call from SEARCH_DB's config, with SEARCH_DB's finished runs imported (the
default's runs at 300 and 600 steps are the search's reference runs); the runs it lacks are trained into it,
and a rerun only prints. The tables: default − baseline per cell, with the one-sided 95 % bounds; and the
default's steps-equivalent ratio at lr ×1 against the tuned reference's ladder on the search's held-out seeds
(the search runs that ladder for its steps-to-target stage; the default's own held-out runs are added here).
"""

import argparse
import os

from fusedgate.argtypes import int_in, int_list
from fusedgate.files import markdown_table
from fusedgate.search import stats
from fusedgate.search import steps_to_target as stt
from fusedgate.search.archive import Archive
from fusedgate.search.config import SearchConfig
from fusedgate.search.evaluate import BASELINE, make_job
from fusedgate.search.executors import LocalExecutor
from fusedgate.search.runner import run_jobs
from fusedgate.search.tournament import Setting, compare_runs, eval_every, floors_of, holdout_setting, job

HORIZONS = (100, 300, 600)


def cell_jobs(cfg: SearchConfig, corpus: str, steps: int, lr_scale: float, seeds) -> tuple[list, list]:
    """(the default's jobs, the baseline's jobs) of one cell, in seed order."""
    setting = Setting("confirm", cfg.preset, steps, tuple(seeds), cfg.final_eval_tokens)
    default = [job(cfg, corpus, setting, None, s, lr_scale) for s in seeds]
    baseline = [make_job(BASELINE, None, cfg.preset, steps, s, cfg.data, corpus, "robustness", lr_scale,
                         cfg.final_eval_tokens, eval_every(steps)) for s in seeds]
    return default, baseline


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("search_db")
    parser.add_argument("robust_db")
    parser.add_argument("--seeds", type=int_list(0, 10**6, 100), default=list(range(10, 15)),
                        help="paired seeds (default: 10-14)")
    parser.add_argument("--workers", type=int_in(1, 64), default=2, help="training processes (default: 2)")
    args = parser.parse_args(argv)
    search = Archive.open(args.search_db)
    cfg, corpus = SearchConfig.from_dict(search.config()), search.get_meta("corpus")
    search.close()
    if not os.path.exists(args.robust_db):
        archive = Archive.create(args.robust_db, cfg)
        archive.set_meta("corpus", corpus)
    else:
        archive = Archive.open(args.robust_db)
    archive.import_evaluations(args.search_db)
    cells = {(h, sc): cell_jobs(cfg, corpus, h, sc, args.seeds) for h in HORIZONS for sc in cfg.lr_scales}
    todo = [j for default, baseline in cells.values() for pair in zip(default, baseline) for j in pair]
    todo += [job(cfg, corpus, holdout_setting(cfg, h), None, s) for h in cfg.horizons for s in cfg.holdout_seeds]
    executor = LocalExecutor(workers=args.workers)
    try:
        run_jobs(archive, executor, todo, "default vs baseline")
    finally:
        executor.close()
    rows = []
    for (h, sc), (default, baseline) in cells.items():
        runs = [(archive.evaluation(d["job_key"]), archive.evaluation(b["job_key"])) for d, b in zip(default, baseline)]
        diffs = [d["final_val_bpb"] - b["final_val_bpb"] for d, b in runs]
        m, sd = stats.mean_sd(diffs)
        rows.append([h, f"x{sc:g}", len(diffs), f"{m:+.6f} ± {sd:.6f}", f"{stats.upper_bound(diffs):+.6f}",
                     sum(d > 0 for d in diffs), sum(d == 0 for d in diffs),
                     f"{sum(b['final_val_bpb'] for _, b in runs) / len(runs):.4f}"])
    print(markdown_table(["steps", "lr", "seeds", "default − baseline (mean ± sd)", "95% upper", "seeds worse",
                          "seeds identical", "baseline bpb (mean)"], rows))
    print()
    print(markdown_table(["steps", "tuned lr of the ladder", "seeds", "default's ratio (95% upper)",
                          "default − tuned reference (mean ± sd)"], ratio_rows(archive, cfg, corpus)))
    archive.close()


def ratio_rows(archive, cfg: SearchConfig, corpus: str) -> list[list]:
    """Per horizon: the default (lr ×1) on the held-out seeds against the tuned reference's ladder there."""
    floors, rows = floors_of(archive, cfg, corpus), []
    for h in cfg.horizons:
        setting, scale = holdout_setting(cfg, h), floors[h]["lr_scale"]
        runs = [archive.evaluation(job(cfg, corpus, setting, None, s)["job_key"]) for s in cfg.holdout_seeds]
        ladder = {r: [archive.evaluation(job(cfg, corpus, setting, None, s, scale, r)["job_key"])
                      for s in cfg.holdout_seeds] for r in stt.rungs(h, cfg.ladder)}
        if any(x is None for x in runs) or any(x is None for xs in ladder.values() for x in xs):
            rows.append([h, f"x{scale:g}", "not finished", "", ""])
            continue
        per_seed = [stt.steps_ratio({r: ladder[r][i]["final_val_bpb"] for r in ladder}, h, run["final_val_bpb"])
                    for i, run in enumerate(runs)]
        summary = stt.summarize([r for r, _ in per_seed], [w for _, w in per_seed])
        gap = compare_runs(runs, ladder[h])
        diffs = [-g for g in gap["gains"]]
        m, sd = stats.mean_sd(diffs)
        rows.append([h, f"x{scale:g}", len(runs), stt.describe(summary, cfg.ladder), f"{m:+.4f} ± {sd:.4f}"])
    return rows


if __name__ == "__main__":
    main()
