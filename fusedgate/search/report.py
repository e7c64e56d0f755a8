"""``fusedgate search report``: a markdown report plus PNG plots from a search archive.

Sections, one function each: the set-up; power (per horizon the tuned reference, the paired spread of
near-neutral candidates, the minimal detectable effect and the seeds a given effect needs); the
multi-horizon win rule; the standings (per-horizon gains, lr robustness, transfer); steps-to-target on
the held-out seeds; does the gate follow the training phase (step_fraction's share of the gate and the
gate against the loss curve); the verdict. Plots: the best robust score by generation, the lineage of
the best candidates, the gate trajectory of the best against its loss curve.
"""

from __future__ import annotations

import math
import os
import time

from fusedgate.files import markdown_table, write_atomic
from fusedgate.search import score
from fusedgate.search import steps_to_target as stt
from fusedgate.search.config import SearchConfig
from fusedgate.search.mutations import describe
from fusedgate.search.phase import step_fraction_share
from fusedgate.search.tournament import confirm_setting, job, standings


def _f(x, digits: int = 4, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------- sections
def section_setup(archive, cfg: SearchConfig, corpus: str) -> list[str]:
    commit = f"`{archive.get_meta('code_commit') or 'unknown'}`"
    resumed = (archive.get_meta("code_commits") or "").split()[1:]
    if resumed:
        commit += " (resumed at " + ", ".join(f"`{c}`" for c in resumed) + ")"
    return [
        "## Set-up",
        "",
        f"- archive `{archive.path}`, code at commit {commit}; preset `{cfg.preset}`, corpus `{corpus}`",
        f"- {len(archive.generations())} generation(s) of population {cfg.population}, {cfg.survivors} survivors",
        f"- screening {cfg.screen_steps} steps on seeds {list(cfg.screen_seeds)}; confirmation at "
        f"{', '.join(map(str, cfg.horizons))} steps on seeds {list(cfg.confirm_seeds)} "
        f"(final evaluation on {cfg.final_eval_tokens or 'the preset eval'} val tokens); reference lr scales "
        f"{list(cfg.lr_scales)}",
        f"- transfer: preset `{cfg.transfer_preset}`, {cfg.transfer_horizon} steps, seeds {list(cfg.transfer_seeds)}; "
        f"steps-to-target: held-out seeds {list(cfg.holdout_seeds)}, ladder ratios {list(cfg.ladder)}",
        "- the reference is FusedGate with the neutral spec (`nanochat`, bit-identical to nanochat's MuonAdamW) "
        "on the same code path as the candidates",
        "",
    ]


def section_power(floors: dict) -> list[str]:
    rows = []
    for h, fl in floors.items():
        if fl is None:
            rows.append([h] + ["—"] * 8)
            continue
        needed = ", ".join(f"{e:g}: {n or '>256'}" for e, n in fl["seeds_for"].items())
        means = ", ".join(f"x{sc:g} {_f(m)}" for sc, m in fl["means"].items())
        rows.append([h, f"x{fl['lr_scale']:g}", means, _f(fl["sigma"]), fl["source"], fl["n_seeds"], _f(fl["mde"]),
                     _f(fl["min_effect"]), needed + (" (too short)" if fl["too_short"] else "")])
    return [
        "## Power: what the evaluator can resolve",
        "",
        "sigma is the paired spread (sd over seeds of candidate − reference) of the near-neutral candidates "
        "(those whose 95 % interval covers 0), or of the reference's lr sweep before there are two of them; "
        "the MDE is the smallest mean gain the one-sided 5 % test detects with 80 % power at the confirmation "
        "seed count; the last column gives the seeds a 0.005 / 0.01 / 0.02 bpb effect needs at that sigma.",
        "",
        markdown_table(["steps", "tuned lr", "reference mean bpb by lr scale", "sigma", "from", "seeds", "MDE",
                        "min effect", "seeds needed per effect"], rows),
        "",
    ]


def _gain_cell(agg) -> str:
    if not agg:
        return "—"
    return f"{_f(agg['bpb_gain'], sign=True)} ± {_f(agg['gain_sd'])} [{_f(agg['gain_lower95'], sign=True)}]"


def section_standings(rows: list[dict], cfg: SearchConfig, limit: int = 30) -> list[str]:
    headers = ["#", "hash", "gen", "operator", "screen gain"] + [f"gain @{h} [95% lb]" for h in cfg.horizons]
    headers += [f"lr x{sc:g} gain [95% ub]" for sc in cfg.lr_scales if sc != 1.0] + ["transfer", "verdict"]
    table = []
    for r in rows[:limit]:
        conf = r["confirm"]
        cells = [r["id"], r["hash"][:10], r["generation"], r["operator"][:28],
                 _f((r["screen"] or {}).get("bpb_gain"), sign=True)]
        cells += [_gain_cell(conf["horizons"][h]) for h in cfg.horizons]
        for agg in conf["robust"].values():
            cells.append(f"{_f(agg['bpb_gain'], sign=True)} [{_f(agg['gain_upper95'], sign=True)}]" if agg else "—")
        cells.append(_gain_cell(r["transfer"]))
        cells.append("**announced**" if r["announced"] else ("win" if conf["win"] else
                                                           (conf["reasons"][0] if conf["reasons"] else "—")))
        table.append(cells)
    return [
        "## Standings (by robust score: the worst horizon's mean score)",
        "",
        "gain = reference bpb − candidate bpb, mean ± sd over the confirmation seeds, paired; [one-sided 95 % "
        "bound]. A candidate significantly worse at one horizon is not run at the next.",
        "",
        markdown_table(headers, table),
        "",
    ]


def section_steps_to_target(rows: list[dict], cfg: SearchConfig) -> list[str]:
    done = [r for r in rows if r["holdout"]]
    out = ["## Steps-to-target on the held-out seeds", "",
           "ratio = the candidate's steps / the steps the reference needs for the same final val bpb (each "
           "reference run with its own full schedule; per seed, monotone interpolation in log steps); "
           "mean (one-sided 95 % upper bound). Below 1: fewer steps.", ""]
    if not done:
        return out + ["Not run yet (it runs after the last generation).", ""]
    table = []
    for r in done:
        for h, cell in r["holdout"].items():
            ladder = ", ".join(f"{n}: {_f(sum(v) / len(v))}" for n, v in cell["ladder"].items())
            table.append([r["id"], r["hash"][:10], h, stt.describe(cell["steps"], cfg.ladder),
                          _gain_cell(cell["gap"]), ladder])
    out += [markdown_table(["#", "hash", "steps", "steps-equivalent ratio", "bpb gain [95% lb]",
                            "reference mean bpb by horizon"], table), ""]
    return out


def section_phase(rows: list[dict], trajectories: dict) -> list[str]:
    out = ["## Does the gate follow the training phase?", "",
           "R² = the share of the gate logit's variance over a run that step_fraction alone explains "
           "(1: a schedule; 0: it moves with the measured state).", ""]
    table = []
    for r in rows[:5]:
        for h, traj in trajectories.get(r["id"], {}).items():
            share = step_fraction_share(r["spec"], traj)
            table.append([r["id"], r["hash"][:10], h, "—" if share is None else f"{share:.2f}",
                          f"{min(t['gate'] for t in traj):.2f}–{max(t['gate'] for t in traj):.2f}" if traj else "—"])
    return out + ([markdown_table(["#", "hash", "steps", "step_fraction R²", "gate range"], table)] if table else
                  ["No gate trajectory recorded."]) + [""]


def section_verdict(rows: list[dict], floors: dict) -> list[str]:
    announced = [r for r in rows if r["announced"]]
    if announced:
        best = announced[0]
        return ["## Verdict", "", f"**#{best['id']} ({best['hash'][:10]}) wins at every horizon, is not worse at "
                f"the other lr scales, and its gain holds on the transfer configuration.**", ""]
    effects = ", ".join(f"{h} steps: {_f(fl['min_effect'])} bpb with {fl['n_seeds']} seeds"
                        for h, fl in floors.items() if fl)
    best = rows[0] if rows else None
    why = f" The best by robust score, #{best['id']}, fails: {'; '.join(best['confirm']['reasons'][:3])}." if (
        best and best["confirm"]["reasons"]) else ""
    return ["## Verdict", "", f"**No candidate wins at every horizon.** The smallest effect the evaluator resolves: "
            f"{effects or '—'}.{why}", ""]
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


def plot_gate_and_loss(trajectories: dict, train_curves: dict, title: str, path) -> None:
    """Per horizon: the gate (mean, min..max over matrices) and, on a second axis, the training loss."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(trajectories), figsize=(6 * len(trajectories), 3.8), squeeze=False)
    for ax, (h, traj) in zip(axes[0], trajectories.items()):
        steps = [t["step"] for t in traj]
        ax.plot(steps, [t["gate"] for t in traj], color="tab:blue", label="gate (mean)")
        ax.fill_between(steps, [t["gate_min"] for t in traj], [t["gate_max"] for t in traj], alpha=0.25)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("step")
        ax.set_ylabel("gate g", color="tab:blue")
        loss = train_curves.get(h) or []
        twin = ax.twinx()
        twin.plot([c["step"] for c in loss], [c["loss"] for c in loss], color="tab:orange", lw=0.6, alpha=0.7)
        twin.set_ylabel("train loss", color="tab:orange")
        ax.set_title(f"{h} steps")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_robust_by_generation(archive, rows, path) -> None:
    """The best robust score (worst-horizon mean score vs the tuned reference) among each generation's members."""
    plt = _plt()
    pts = []
    for gen in archive.generations():
        ids = {m["id"] for m in archive.population(gen)}
        vals = [r["confirm"]["robust_score"] for r in rows if r["id"] in ids and r["confirm"]["complete"]]
        if vals:
            pts.append((gen, max(vals)))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="best robust score")
    ax.axhline(0.0, color="k", lw=0.8, ls="--", label="the reference")
    ax.set_xlabel("generation")
    ax.set_ylabel("worst-horizon mean score (bpb units)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- the report
def _trajectories(archive, cfg, corpus, spec) -> tuple[dict, dict]:
    """Gate trajectory and train curve of a spec's first confirmation seed, per horizon it was run at."""
    traj, curves = {}, {}
    for h in cfg.horizons:
        setting = confirm_setting(cfg, h)
        run = archive.evaluation(job(cfg, corpus, setting, spec, setting.seeds[0])["job_key"])
        if run and run.get("gate_trajectory"):
            traj[h], curves[h] = run["gate_trajectory"], run.get("train_curve") or []
    return traj, curves


def write_report(archive, out_dir: str) -> str:
    cfg = SearchConfig.from_dict(archive.config())
    corpus = archive.get_meta("corpus")
    os.makedirs(out_dir, exist_ok=True)
    rows = standings(archive, cfg, corpus)
    floors = rows[0]["floors"] if rows else {}
    trajectories = {}
    for r in rows[:5]:
        trajectories[r["id"]] = _trajectories(archive, cfg, corpus, r["spec"])[0]
    lines = [f"# fusedgate search report ({time.strftime('%Y-%m-%d %H:%M')})", ""]
    lines += section_verdict(rows, floors) + section_setup(archive, cfg, corpus) + section_power(floors)
    lines += ["## The win rule", "", score.win_criterion_multi(cfg), ""]
    lines += section_standings(rows, cfg) + section_steps_to_target(rows, cfg) + section_phase(rows, trajectories)
    if rows:
        best = rows[0]
        lines += ["## The best candidate's spec", "", f"#{best['id']} `{best['hash']}` ({best['operator']}):", "",
                  "```json", best["spec"].to_json(), "```", ""]
        traj, curves = _trajectories(archive, cfg, corpus, best["spec"])
        if traj:
            plot_gate_and_loss(traj, curves, f"#{best['id']}: gate vs training loss, seed {cfg.confirm_seeds[0]}",
                               os.path.join(out_dir, "gate_vs_loss.png"))
            lines += ["![gate vs loss](gate_vs_loss.png)", ""]
        plot_lineage(archive, rows[:3], os.path.join(out_dir, "lineage.png"), "lineage of the 3 best")
        plot_robust_by_generation(archive, rows, os.path.join(out_dir, "robust_by_generation.png"))
        lines += ["![lineage](lineage.png) ![robust score by generation](robust_by_generation.png)", ""]
    lines += ["## Mutation operators", "", describe(), ""]
    path = os.path.join(out_dir, "report.md")
    write_atomic(path, "\n".join(lines))
    return path
