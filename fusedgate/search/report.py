"""``fusedgate search report``: a markdown report plus PNG plots from a search archive.

Plots: best val bpb by generation, the Pareto scatter (bpb gain vs throughput ratio, coloured by
stability), the lineage tree of the winners, and the gate/actuator trajectories of the best spec next
to the neutral spec's. The report gives the noise floor measured at the confirmation horizon (tuned
lr scale, paired sd, minimal detectable effect), states the statistical win criterion, shows the
transfer check, and says plainly whether any candidate met it — or that the horizon was too short.
"""

from __future__ import annotations

import math
import os
import time

from fusedgate.files import markdown_table, write_atomic
from fusedgate.search import score
from fusedgate.search.evaluate import BASELINE, FUSEDGATE
from fusedgate.search.mutations import describe
from fusedgate.search.tournament import evaluate_spec, horizon, job, neutral_spec, noise_floor, standings


def _f(x, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "—"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def baseline_bpb(archive, cfg, corpus, stage, optimizer, lr_scale: float = 1.0) -> float | None:
    vals = []
    for s in horizon(cfg, stage)[1]:
        spec = None if optimizer == BASELINE else neutral_spec()
        run = archive.evaluation(job(cfg, corpus, stage, optimizer, spec, s, lr_scale)["job_key"])
        if run is None or not score.run_ok(run):
            return None
        vals.append(run["final_val_bpb"])
    return sum(vals) / len(vals)


def plot_best_by_generation(archive, rows, base, neutral, cfg, path) -> None:
    plt = _plt()
    by_gen = {}
    for gen in archive.generations():
        ids = {m["id"] for m in archive.population(gen)}
        members = [r for r in rows if r["id"] in ids]
        conf = [r["confirm"]["final_val_bpb"] for r in members if r["confirm"] and not r["confirm"]["n_failed"]]
        scr = [r["screen"]["final_val_bpb"] for r in members if r["screen"] and not r["screen"]["n_failed"]]
        by_gen[gen] = (min(conf) if conf else None, min(scr) if scr else None)
    fig, ax = plt.subplots(figsize=(6, 4))
    gens = sorted(by_gen)
    pts = [(g, by_gen[g][0]) for g in gens if by_gen[g][0] is not None]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"best candidate, {cfg['confirm_steps']} steps")
    if base is not None:
        ax.axhline(base, color="k", ls="--", label="nanochat Muon+AdamW, tuned lr")
    if neutral is not None:
        ax.axhline(neutral, color="gray", ls=":", label="FusedGate, neutral spec")
    ax.set_xlabel("generation")
    ax.set_ylabel("val bpb (mean over confirmation seeds)")
    ax.set_xticks(gens)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pareto(points, front, labels, path, min_effect=None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        sc = ax.scatter(
            [p[1] for p in points],
            [p[0] for p in points],
            c=[p[2] for p in points],
            cmap="viridis",
            vmin=0,
            vmax=1,
        )
        fig.colorbar(sc, ax=ax, label="stability")
        ax.scatter(
            [points[i][1] for i in front],
            [points[i][0] for i in front],
            s=160,
            facecolors="none",
            edgecolors="r",
            label="Pareto frontier",
        )
        for p, lab in zip(points, labels):
            ax.annotate(lab, (p[1], p[0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if min_effect is not None and math.isfinite(min_effect):
        ax.axhline(min_effect, color="g", ls="--", lw=0.8, label=f"minimal effect {min_effect:.4f}")
    ax.axvline(score.WIN_THROUGHPUT, color="g", ls=":", lw=0.8, label=f"{score.WIN_THROUGHPUT}x throughput")
    ax.set_xlabel("throughput ratio vs the reference baseline")
    ax.set_ylabel("val bpb gain vs the reference baseline")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lineage(archive, winners, path, title: str) -> None:
    """Winners and all their ancestors: x = generation born, edges parent -> child, labelled by operator."""
    plt = _plt()
    cands = {c["id"]: c for c in archive.candidates()}
    keep, stack = set(), [w["id"] for w in winners]
    while stack:
        cid = stack.pop()
        if cid not in keep:
            keep.add(cid)
            stack += cands[cid]["parents"]
    slots, pos = {}, {}
    for cid in sorted(keep):
        gen = cands[cid]["generation"]
        pos[cid] = (gen, slots.get(gen, 0))
        slots[gen] = slots.get(gen, 0) + 1
    fig, ax = plt.subplots(figsize=(7, max(3, 0.5 * max(slots.values(), default=1) + 1)))
    win_ids = {w["id"] for w in winners}
    for cid in keep:
        x, y = pos[cid]
        for p in cands[cid]["parents"]:
            px, py = pos[p]
            ax.annotate("", (x, y), (px, py), arrowprops=dict(arrowstyle="->", color="gray"))
        ax.scatter([x], [y], s=80, c="tab:red" if cid in win_ids else "tab:blue", zorder=3)
        ax.annotate(
            f"#{cid} {cands[cid]['operator'][:24]}",
            (x, y),
            fontsize=7,
            xytext=(5, 4),
            textcoords="offset points",
        )
    ax.set_xlabel("generation")
    ax.set_yticks([])
    ax.margins(x=0.25, y=0.25)
    ax.set_title(title)
    ax.set_xticks(sorted(slots))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trajectories(trajectory, title, path, reference=None) -> None:
    """Gate, actuators and sensors of the best spec (solid) and of the neutral spec (dashed, same seed)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    steps = [r["step"] for r in trajectory]
    ax = axes[0]
    ax.plot(steps, [r["gate"] for r in trajectory], label="gate (mean)")
    ax.fill_between(
        steps,
        [r["gate_min"] for r in trajectory],
        [r["gate_max"] for r in trajectory],
        alpha=0.3,
        label="min..max over params",
    )
    ax.set_ylim(-0.02, 1.02)
    if reference:
        ax.plot([r["step"] for r in reference], [r["gate"] for r in reference], "k--", lw=0.8, label="neutral spec")
    ax.set_title("gate g")
    ax = axes[1]
    for key in ("update_mult", "trust_mix", "beta2", "ortho"):
        if key in trajectory[0]:
            ax.plot(steps, [r[key] for r in trajectory], label=key)
    if "clip" in trajectory[0]:
        ax.plot(steps, [0.0 if r["clip"] == math.inf else 1.0 / r["clip"] for r in trajectory], label="1/clip")
    if reference:
        for key in ("update_mult", "ortho"):
            if key in reference[0]:
                ax.plot([r["step"] for r in reference], [r[key] for r in reference], "--", lw=0.8,
                        label=f"{key} (neutral)")
    ax.set_title("actuators (mean over params)")
    ax = axes[2]
    for name in trajectory[0].get("sensors", {}):
        ax.plot(steps, [r["sensors"].get(name, math.nan) for r in trajectory], label=name)
    ax.set_title("normalised sensors (mean)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _best_trajectory(archive, cfg, corpus, spec):
    for stage in ("confirm", "screen"):
        steps, seeds, _ = horizon(cfg, stage)
        run = archive.evaluation(job(cfg, corpus, stage, FUSEDGATE, spec, seeds[0])["job_key"])
        if run and run["gate_trajectory"]:
            return run["gate_trajectory"], steps, seeds[0]
    return None, None, None


def write_report(archive, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    cfg, corpus = archive.config(), archive.get_meta("corpus")
    if corpus is None:
        raise RuntimeError(f"{archive.path}: the search has not started any evaluation yet")
    rows = standings(archive, cfg, corpus)
    evals = archive.evaluations()
    floor = noise_floor(archive, cfg, corpus, "confirm")
    tuned_scale = floor["lr_scale"] if floor else 1.0
    base = baseline_bpb(archive, cfg, corpus, "confirm", BASELINE, tuned_scale)
    base_1 = baseline_bpb(archive, cfg, corpus, "confirm", BASELINE)
    neutral = baseline_bpb(archive, cfg, corpus, "confirm", FUSEDGATE)
    base_s = baseline_bpb(archive, cfg, corpus, "screen", BASELINE)
    neutral_s = baseline_bpb(archive, cfg, corpus, "screen", FUSEDGATE)
    neutral_agg = evaluate_spec(archive, cfg, corpus, None, "confirm", reference="baseline")
    confirmed = [r for r in rows if r["confirm"]]
    winners = [r for r in confirmed if r["confirm"]["win"]]
    announced = [r for r in winners if r["announced"]]
    started = float(archive.get_meta("created_at"))
    last = max((e["finished_at"] for e in evals), default=started)
    compute_s = sum(e["wall_s"] or 0.0 for e in evals)
    total_s = sum(e["total_s"] or 0.0 for e in evals)

    plot_best_by_generation(archive, rows, base, neutral, cfg, os.path.join(out_dir, "best_by_generation.png"))
    # the frontier compares like with like: confirmed candidates, or (before any) screened ones
    stage = "confirm" if any(r["confirm"] for r in rows) else "screen"
    scored = [r for r in rows if r[stage] and not r[stage]["n_failed"]]
    points = [score.pareto_objectives(r[stage]) for r in scored]
    front = score.pareto_front(points)
    plot_pareto(
        points,
        front,
        [f"#{r['id']}" for r in scored],
        os.path.join(out_dir, "pareto.png"),
        floor["min_effect"] if floor and stage == "confirm" else None,
    )
    top = winners or [r for r in rows if r["confirm"] or r["screen"]][:3]
    if top:
        title = "lineage of the winners (red)" if winners else "lineage of the top 3 candidates (red); none won"
        plot_lineage(archive, top, os.path.join(out_dir, "lineage.png"), title)
    traj, traj_steps, traj_seed = _best_trajectory(archive, cfg, corpus, rows[0]["spec"]) if rows else (None,) * 3
    if traj:
        ref_traj, _, _ = _best_trajectory(archive, cfg, corpus, neutral_spec())
        plot_trajectories(
            traj,
            f"candidate #{rows[0]['id']} ({rows[0]['hash']}) vs the neutral spec (dashed), {traj_steps} steps, "
            f"seed {traj_seed}",
            os.path.join(out_dir, "trajectories.png"),
            reference=ref_traj,
        )

    n_status = {s: sum(e["status"] == s for e in evals) for s in ("ok", "diverged", "failed")}
    t_steps, t_seeds, _ = horizon(cfg, "transfer")
    lines = [
        "# FusedGate spec search report",
        "",
        f"- archive: `{archive.path}`; preset `{cfg['preset']}`, corpus `{corpus}`",
        f"- {len(archive.generations())} generation(s) of population {cfg['population']}, "
        f"{cfg['survivors']} survivors; "
        f"screening {cfg['screen_steps']} steps on seeds {cfg['screen_seeds']}, confirmation {cfg['confirm_steps']} "
        f"steps on seeds {cfg['confirm_seeds']} (final evaluation on "
        f"{cfg.get('final_eval_tokens') or 'the preset eval'} val tokens), transfer {t_steps} steps on seeds "
        f"{t_seeds}; baseline lr scales {cfg.get('lr_scales')}",
        f"- {len(archive.candidates())} distinct specs, {len(evals)} training runs ({n_status['ok']} ok, "
        f"{n_status['diverged']} diverged, {n_status['failed']} failed), "
        f"{len(archive.rejections())} rejected proposals",
        f"- wall time {(last - started) / 60:.1f} min from creation to the last finished run; "
        f"{compute_s / 60:.1f} min of training-loop time, {total_s / 60:.1f} min of job time "
        f"(fixed overhead {_pct(total_s - compute_s, compute_s)} of training)",
        "",
        "## Noise floor at the confirmation horizon",
        "",
    ]
    if floor:
        lines.append(markdown_table(["quantity", "value"], [
            ["mean val bpb per baseline lr scale",
             ", ".join(f"{k:g}: {_f(v)}" for k, v in sorted(floor["means"].items()))],
            ["tuned lr scale (the reference)", f"{floor['lr_scale']:g}"],
            ["seed sd of the tuned baseline's val bpb", _f(floor["seed_sd"])],
            ["sd of paired differences (other lr scales − tuned, pooled)", _f(floor["sigma"])],
            [f"minimal detectable effect, {floor['n_seeds']} seeds (one-sided 5 %, power 80 %)", _f(floor["mde"])],
            ["minimal effect required for a win", _f(floor["min_effect"])],
            ["val-set sampling error of a level (median, tuned baseline)", _f(floor["val_se"])],
            ["spread of the lr sweep (max − min mean bpb)", _f(floor["spread"])],
        ]))
        if floor["too_short"]:
            lines += [
                "",
                f"**This horizon is too short for the noise floor**: a 4x change of the baseline's lr moves the "
                f"mean val bpb by {_f(floor['spread'])}, less than the minimal detectable effect {_f(floor['mde'])}. "
                "No winner is declared at it.",
            ]
    else:
        lines.append("The tuned-baseline sweep at the confirmation horizon is not complete yet.")
    lines += ["", "## Verdict", "", f"Win criterion: {score.win_criterion(floor)}.", ""]
    if announced:
        lines.append(
            f"**{len(announced)} candidate(s) won and the gain held on the transfer configuration:** "
            + ", ".join(f"#{w['id']} ({w['hash']})" for w in announced)
            + "."
        )
    elif winners:
        lines.append(
            f"{len(winners)} candidate(s) met the confirmation criterion ("
            + ", ".join(f"#{w['id']}" for w in winners)
            + ") but **none held on the transfer configuration**, so no win is announced."
        )
    else:
        lines.append(
            f"**No candidate met the win criterion** ({len(confirmed)} candidate(s) reached confirmation); "
            f"the smallest mean gain this design could have seen is {_f(floor['min_effect'] if floor else None)} "
            f"bpb."
        )
    if winners:
        transfer = [[w["id"], _f((w["transfer"] or {}).get("bpb_gain")), _f((w["transfer"] or {}).get("gain_lower95")),
                     (w["transfer"] or {}).get("n_seeds", "—"),
                     "yes" if w["announced"] else ("pending" if not w["transfer"] else "no")] for w in winners]
        lines += ["", markdown_table(["#", "transfer gain", "95% lower bound", "seeds", "holds"], transfer)]
    lines += [
        "",
        "## Baselines",
        "",
        markdown_table(["run", "screening val bpb", "confirmation val bpb"], [
            ["nanochat Muon+AdamW, lr scale 1", _f(base_s), _f(base_1)],
            [f"nanochat Muon+AdamW, tuned lr scale {tuned_scale:g}", "—", _f(base)],
            ["FusedGate, neutral spec (= the production optimizer)", _f(neutral_s), _f(neutral)],
        ]),
    ]
    if neutral_agg:
        lines += [
            "",
            f"Neutral FusedGate vs nanochat (lr scale 1) at confirmation: gain {_f(neutral_agg['bpb_gain'])} bpb "
            f"(95% lower bound {_f(neutral_agg['gain_lower95'])}), throughput ratio "
            f"{_f(neutral_agg['throughput_ratio'], 3)} (the cost of the implementation alone).",
        ]
    lines += [
        "",
        "## Leaderboard",
        "",
        "Confirmation gains are against the tuned baseline on the same seeds and schedule (screening: nanochat at "
        "lr scale 1); see `fusedgate.search.score`: "
        "score = bpb_gain + 0.5·auc_gain + 0.01·speedup + 0.02·ln(throughput ratio) − 0.02·(1 − stability). "
        "`val se` is the largest per-seed val-set sampling error of the paired gain.",
        "",
    ]
    leaderboard = []
    for r in rows[:15]:
        c = r["confirm"] or {}
        vs_neutral = (
            evaluate_spec(archive, cfg, corpus, r["spec"], "confirm", reference="neutral") if r["confirm"] else None
        )
        leaderboard.append([
            r["id"], f"`{r['hash']}`", r["generation"], r["operator"][:30], ",".join(map(str, r["parents"])) or "—",
            _f((r["screen"] or {}).get("score")), _f(c.get("score")), _f(c.get("final_val_bpb")),
            _f(c.get("bpb_gain")), _f(c.get("gain_lower95")), _f(c.get("val_se_paired")),
            _f((vs_neutral or {}).get("bpb_gain")), f"{c.get('seeds_with_gain', '—')}/{c.get('n_seeds', '—')}",
            _f(c.get("throughput_ratio"), 3), "yes" if c.get("win") else "no", "; ".join(c.get("reasons", [])) or "—"])
    lines.append(markdown_table(
        ["#", "hash", "gen", "operator", "parents", "screen score", "confirm score", "val bpb", "gain vs tuned",
         "95% lower bound", "val se", "gain vs neutral", "seeds > 0", "throughput", "win", "why not"], leaderboard))
    lines += ["", "## Pareto frontier (bpb gain, throughput ratio, stability)", ""]
    for i in front:
        r = scored[i]
        lines.append(
            f"- #{r['id']} `{r['hash']}`: gain {_f(points[i][0])}, throughput {_f(points[i][1], 3)}, "
            f"stability {_f(points[i][2], 2)} ({'confirmation' if stage == 'confirm' else 'screening'})"
        )
    if rows:
        lines += ["", f"## Best spec (#{rows[0]['id']})", "", "```json", rows[0]["spec"].to_json(), "```"]
    lines += [
        "",
        "## Plots",
        "",
        "![best val bpb by generation](best_by_generation.png)",
        "",
        "![Pareto scatter](pareto.png)",
        "",
    ]
    if top:
        lines += ["![lineage](lineage.png)", ""]
    if traj:
        lines += ["![gate and actuator trajectories](trajectories.png)", ""]
    failures = [e for e in evals if e["status"] != "ok"]
    if failures:
        lines += ["## Failed or diverged runs", ""]
        lines += [
            f"- spec `{e['spec_hash'] or e['optimizer']}` seed {e['seed']} {e['steps']} steps: {e['status']}: "
            f"{(e['error'] or '').splitlines()[0] if e['error'] else ''}"
            for e in failures[:30]
        ]
        lines.append("")
    rejections = archive.rejections()
    if rejections:
        lines += ["## Rejected proposals", ""]
        lines += [f"- gen {r['generation']} ({r['source']}): {r['reason']}" for r in rejections[:30]]
        lines.append("")
    lines += [
        "## Mutation operators",
        "",
        describe(),
        "",
        f"_written {time.strftime('%Y-%m-%d %H:%M:%S')}_",
        "",
    ]
    path = os.path.join(out_dir, "report.md")
    write_atomic(path, "\n".join(lines))
    return path
