"""``fusedgate search calibrate``: does the screening horizon rank specs like the confirmation horizon?

N random specs (each ``n_mutations`` chained random mutations of the gated seed, ``gated_muon()``, so they
spread from good to bad) are trained at both horizons on the same seeds, with the baselines. The
evidence is Spearman's rho between the screening and confirmation rankings, of the composite score
and of the final val bpb: rho near 1 means screening separates good from bad as the longer run
would; near 0 means screening is noise at that horizon. Everything lives in a search archive, so a
killed calibration resumes like a search.
"""

from __future__ import annotations

import math
import os
import random

from fusedgate.files import markdown_table, write_atomic
from fusedgate.search import score
from fusedgate.search.archive import Archive
from fusedgate.search.evaluate import FUSEDGATE, make_job
from fusedgate.search.mutations import random_spec
from fusedgate.search.runner import check_corpus, run_jobs
from fusedgate.search.tournament import DEFAULT_OPERATORS, compare_runs, eval_every, gated_muon, neutral_spec


def calibration_config(
    preset: str,
    n: int,
    screen_steps: int,
    confirm_steps: int,
    seeds: list[int],
    seed: int = 0,
    data: str | None = None,
    n_mutations: int = 6,
    final_eval_tokens: int | None = None,
) -> dict:
    return {
        "mode": "calibrate",
        "preset": preset,
        "data": data,
        "n": n,
        "screen_steps": screen_steps,
        "confirm_steps": confirm_steps,
        "screen_seeds": seeds,
        "confirm_seeds": seeds,
        "seed": seed,
        "n_mutations": n_mutations,
        "generations": 1,
        "population": n,
        "survivors": n,
        "operators": list(DEFAULT_OPERATORS),
        "init_specs": [],
        "mutator_cmd": None,
        "lr_scales": [1.0],
        "final_eval_tokens": final_eval_tokens,
    }


def stage_jobs(cfg: dict, corpus: str, stage: str, spec=None) -> list[dict]:
    """A spec's runs (None: the neutral reference) at the screening or confirmation horizon."""
    steps = cfg[f"{stage}_steps"]
    final = cfg["final_eval_tokens"] if stage == "confirm" else None
    return [make_job(FUSEDGATE, spec or neutral_spec(), cfg["preset"], steps, s, cfg["data"], corpus, stage, 1.0,
                     final, eval_every(steps)) for s in cfg["screen_seeds"]]


def stage_aggregate(archive: Archive, cfg: dict, corpus: str, stage: str, spec) -> dict | None:
    """A spec's aggregate against the neutral reference at a stage; None while a run is missing."""
    runs = [archive.evaluation(j["job_key"]) for j in stage_jobs(cfg, corpus, stage, spec)]
    refs = [archive.evaluation(j["job_key"]) for j in stage_jobs(cfg, corpus, stage)]
    if any(r is None for r in runs + refs):
        return None
    return compare_runs(runs, refs)


def run_calibration(archive: Archive, executor, log=print, progress: bool = True) -> dict:
    cfg = archive.config()
    corpus = check_corpus(archive, cfg["data"], cfg["preset"])
    if not archive.population(0):
        rng = random.Random(f"calibrate:{cfg['seed']}")
        children, seen = [], set()
        while len(children) < cfg["n"]:
            spec, ops = random_spec(gated_muon(), rng, cfg["n_mutations"], tuple(cfg["operators"]))
            if spec.content_hash() not in seen:
                seen.add(spec.content_hash())
                children.append({"spec": spec, "operator": "random:" + "+".join(ops), "parents": []})
        archive.add_generation(0, children, [])
    members = archive.population(0)
    for stage in ("screen", "confirm"):
        jobs = stage_jobs(cfg, corpus, stage)
        for m in members:
            jobs += stage_jobs(cfg, corpus, stage, m["spec"])
        run_jobs(archive, executor, jobs, f"calibrate {stage} ({cfg[stage + '_steps']} steps)", log, progress)
    archive.set_meta("finished", "1")
    return summarize(archive)


def summarize(archive: Archive) -> dict:
    cfg = archive.config()
    corpus = archive.get_meta("corpus")
    rows = []
    for m in archive.population(0):
        s = stage_aggregate(archive, cfg, corpus, "screen", m["spec"])
        c = stage_aggregate(archive, cfg, corpus, "confirm", m["spec"])
        rows.append({"id": m["id"], "hash": m["hash"], "operator": m["operator"], "screen": s, "confirm": c})
    done = [r for r in rows if r["screen"] and r["confirm"]]
    scores = ([r["screen"]["score"] for r in done], [r["confirm"]["score"] for r in done])
    both = [
        r for r in done if math.isfinite(r["screen"]["final_val_bpb"]) and math.isfinite(r["confirm"]["final_val_bpb"])
    ]
    bpbs = ([r["screen"]["final_val_bpb"] for r in both], [r["confirm"]["final_val_bpb"] for r in both])
    return {
        "config": cfg,
        "rows": rows,
        "n_done": len(done),
        "rho_score": score.spearman(*scores),
        "rho_bpb": score.spearman(*bpbs),
        "n_bpb": len(both),
    }


def write_report(summary: dict, out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    cfg = summary["config"]
    fig, ax = plt.subplots(figsize=(5, 4))
    pts = [
        (r["screen"]["final_val_bpb"], r["confirm"]["final_val_bpb"])
        for r in summary["rows"]
        if r["screen"] and r["confirm"]
    ]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts])
    ax.set_xlabel(f"val bpb after {cfg['screen_steps']} steps (screening)")
    ax.set_ylabel(f"val bpb after {cfg['confirm_steps']} steps (confirmation)")
    ax.set_title(f"Spearman rho (bpb) = {summary['rho_bpb']:.3f}")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "calibration.png"), dpi=120)
    plt.close(fig)
    lines = [
        "# Screening calibration",
        "",
        f"{cfg['n']} random specs (each {cfg['n_mutations']} random mutations of the gated seed: the neutral "
        f"spec with a gate), preset "
        f"`{cfg['preset']}`, seeds {cfg['screen_seeds']}: screening at {cfg['screen_steps']} steps vs "
        f"confirmation at {cfg['confirm_steps']} steps.",
        "",
        f"- finished at both horizons: {summary['n_done']} of {len(summary['rows'])}",
        f"- Spearman rho of the composite score: **{summary['rho_score']:.3f}**",
        f"- Spearman rho of the final val bpb (finished runs only, n={summary['n_bpb']}): **{summary['rho_bpb']:.3f}**",
        "",
    ]
    table = []
    for r in summary["rows"]:
        s, c = r["screen"] or {}, r["confirm"] or {}
        table.append([r["id"], r["operator"][7:], _f(s.get("final_val_bpb")), _f(s.get("score")),
                      _f(c.get("final_val_bpb")), _f(c.get("score"))])
    lines += [markdown_table(["id", "mutations", "screen bpb", "screen score", "confirm bpb", "confirm score"], table),
              "", "![screening vs confirmation](calibration.png)", ""]
    return str(write_atomic(os.path.join(out_dir, "calibration.md"), "\n".join(lines)))


def _f(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"
