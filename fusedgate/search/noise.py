"""``fusedgate search noise``: the noise floor of the evaluator, per training horizon.

At each horizon (a separate run length: the lr schedule depends on it) and on every seed, three
configurations are trained on the same batches: nanochat's Muon+AdamW at lr scale 1 (the baseline),
the same at a second lr scale (``second_lr_scale``, a real but small configuration change), and
FusedGate with the neutral spec (a re-implementation of the baseline: its paired difference is pure
numerical noise plus any implementation gap). Per horizon the report gives

    seed sd          sd over seeds of the baseline's final val bpb
    paired sd        sd over seeds of bpb(second) − bpb(baseline): the noise a paired comparison of two
                     configurations faces (used for the minimal detectable effect)
    neutral sd       sd over seeds of bpb(neutral) − bpb(baseline)
    val se           val-set sampling error of one run's final val bpb (median over the baseline runs)
    paired val se    val-set sampling error of the paired difference second − baseline (same val windows)
    MDE(n)           minimal detectable mean paired gain, one-sided 5 %, power 80 %, at n seeds
    resolves         whether the lr change is detected: the 95 % paired-t bound on |mean difference|
                     excludes 0

The archive is a search archive (mode "noise"), so a killed measurement resumes.
"""

from __future__ import annotations

import math
import os

from fusedgate.files import markdown_table, write_atomic
from fusedgate.search import score, stats
from fusedgate.search.evaluate import BASELINE, FUSEDGATE, make_job
from fusedgate.search.runner import check_corpus, run_jobs
from fusedgate.search.tournament import eval_every, neutral_spec


def noise_config(
    preset: str,
    seeds: list[int],
    horizons: list[int],
    second_lr_scale: float,
    final_eval_tokens: int,
    data: str | None = None,
) -> dict:
    return {
        "mode": "noise",
        "preset": preset,
        "data": data,
        "seeds": list(seeds),
        "horizons": sorted(set(horizons)),
        "second_lr_scale": second_lr_scale,
        "final_eval_tokens": final_eval_tokens,
        "mutator_cmd": None,
    }


def _jobs(cfg: dict, corpus: str, steps: int, seed: int) -> dict[str, dict]:
    final, every = cfg["final_eval_tokens"], eval_every(steps)
    common = (cfg["preset"], steps, seed, cfg["data"], corpus, f"noise-{steps}")
    return {
        "baseline": make_job(BASELINE, None, *common, 1.0, final, every),
        "second": make_job(BASELINE, None, *common, cfg["second_lr_scale"], final, every),
        "neutral": make_job(FUSEDGATE, neutral_spec(), *common, 1.0, final, every),
    }


def run_noise(archive, executor, log=print, progress: bool = True) -> dict:
    cfg = archive.config()
    corpus = check_corpus(archive, cfg["data"], cfg["preset"])
    for steps in cfg["horizons"]:
        jobs = [j for s in cfg["seeds"] for j in _jobs(cfg, corpus, steps, s).values()]
        run_jobs(archive, executor, jobs, f"noise {steps} steps", log, progress)
    archive.set_meta("finished", "1")
    return summarize(archive)


def _median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x is not None and math.isfinite(x))
    if not xs:
        return math.nan
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def summarize(archive) -> dict:
    cfg = archive.config()
    corpus = archive.get_meta("corpus")
    horizons = []
    for steps in cfg["horizons"]:
        runs = {"baseline": [], "second": [], "neutral": []}
        for s in cfg["seeds"]:
            for name, job in _jobs(cfg, corpus, steps, s).items():
                run = archive.evaluation(job["job_key"])
                if run is not None and score.run_ok(run):
                    runs[name].append((s, run))
        by_seed = {name: dict(v) for name, v in runs.items()}
        both = sorted(set(by_seed["baseline"]) & set(by_seed["second"]))
        neut = sorted(set(by_seed["baseline"]) & set(by_seed["neutral"]))
        base = [r["final_val_bpb"] for _, r in runs["baseline"]]
        d_second = [by_seed["second"][s]["final_val_bpb"] - by_seed["baseline"][s]["final_val_bpb"] for s in both]
        d_neutral = [by_seed["neutral"][s]["final_val_bpb"] - by_seed["baseline"][s]["final_val_bpb"] for s in neut]
        paired_sd = stats.mean_sd(d_second)[1]
        mean_second = stats.mean_sd(d_second)[0]
        # |mean| bound: the lower bound of the differences taken in the direction of their mean
        lb = stats.lower_bound([d if mean_second >= 0 else -d for d in d_second]) if len(d_second) > 1 else math.nan
        horizons.append(
            {
                "steps": steps,
                "n_baseline": len(base),
                "n_paired": len(d_second),
                "baseline_mean": stats.mean_sd(base)[0],
                "seed_sd": stats.mean_sd(base)[1],
                "second_minus_baseline": mean_second,
                "paired_sd": paired_sd,
                "neutral_minus_baseline": stats.mean_sd(d_neutral)[0],
                "neutral_sd": stats.mean_sd(d_neutral)[1],
                "val_se": _median([r.get("final_val_se") for _, r in runs["baseline"]]),
                "paired_val_se": _median(
                    [
                        stats.paired_val_se(
                            by_seed["second"][s]["final_val_batches"], by_seed["baseline"][s]["final_val_batches"]
                        )
                        for s in both
                    ]
                ),
                "mde5": stats.mde(paired_sd, 5),
                "mde_n": stats.mde(paired_sd, len(d_second)),
                "resolves": bool(math.isfinite(lb) and lb > 0),
                "overhead": _median(
                    [(r["total_s"] - r["wall_s"]) / r["wall_s"] for _, r in runs["baseline"] if r.get("total_s")]
                ),
                "job_s": _median([r.get("total_s") for _, r in runs["baseline"]]),
            }
        )
    return {"config": cfg, "corpus": corpus, "horizons": horizons}


def write_report(summary: dict, out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    cfg, rows = summary["config"], summary["horizons"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [h["steps"] for h in rows]
    for key, label in (
        ("seed_sd", "seed sd of val bpb"),
        ("paired_sd", f"sd of paired diff (lr x{cfg['second_lr_scale']:g} − lr x1)"),
        ("neutral_sd", "sd of paired diff (neutral FusedGate − nanochat)"),
        ("mde5", "minimal detectable effect, 5 seeds"),
        ("paired_val_se", "val-set sampling error of a paired diff"),
    ):
        ax.plot(xs, [h[key] for h in rows], "o-", label=label)
    ax.set_xlabel("training steps (horizon)")
    ax.set_ylabel("bpb")
    ax.set_xscale("log")
    ax.legend(fontsize=7)
    ax.set_title(f"noise floor, preset {cfg['preset']}, {len(cfg['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "noise.png"), dpi=120)
    plt.close(fig)
    f = lambda x: "—" if x is None or not math.isfinite(x) else f"{x:.4f}"
    pct = lambda x: "—" if x is None or not math.isfinite(x) else f"{100 * x:.1f} %"
    lines = [
        "# Noise floor",
        "",
        f"Preset `{cfg['preset']}`, corpus `{summary['corpus']}`, seeds {cfg['seeds']}; final evaluation on "
        f"{cfg['final_eval_tokens']} val tokens spread over the val split. Configurations per seed: nanochat "
        f"Muon+AdamW at lr scale 1 (baseline) and {cfg['second_lr_scale']:g} (second), and FusedGate with the "
        "neutral spec. Paired differences use the same seed (same init and batches). MDE: one-sided 5 %, "
        "power 80 %, paired t.",
        "",
        markdown_table(
            ["steps", "runs", "baseline bpb", "seed sd", "second − baseline", "paired sd", "resolves the lr change",
             "neutral − baseline", "neutral sd", "val se (level)", "val se (paired)", "MDE 5 seeds", "MDE all seeds",
             "job overhead"],
            [[h["steps"], h["n_baseline"], f(h["baseline_mean"]), f(h["seed_sd"]), f(h["second_minus_baseline"]),
              f(h["paired_sd"]), "yes" if h["resolves"] else "no", f(h["neutral_minus_baseline"]), f(h["neutral_sd"]),
              f(h["val_se"]), f(h["paired_val_se"]), f(h["mde5"]), f(h["mde_n"]), pct(h["overhead"])] for h in rows]),
    ]
    lines += [
        "",
        "Job overhead: (whole job − training loop) / training loop, median over the baseline runs: model build "
        "and every evaluation, the large final evaluation included, in a warm worker that had tokenised the "
        "corpus already.",
        "",
        "![noise floor by horizon](noise.png)",
        "",
    ]
    path = os.path.join(out_dir, "noise.md")
    write_atomic(path, "\n".join(lines))
    return path
