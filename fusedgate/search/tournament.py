"""The generation loop: screen, confirm at several horizons against the tuned reference, check lr
robustness, transfer and steps-to-target on held-out seeds; resumable from the archive alone.

The reference is FusedGate with the neutral spec (``nanochat``: both poles equal, so it *is* nanochat's
MuonAdamW) through the same code path as every candidate, so a candidate's gain is its gate's alone.

Per generation g (``SearchConfig`` names the settings):
    1. population  If the archive has no population for g, build it in one transaction: the elites
                   (the best ``survivors`` gated candidates so far by their *robust* score, carried over, not
                   re-run) plus children mutated from them (generation 0: the initial specs plus their
                   mutations). A child whose content hash is already in the archive is redrawn, so no
                   spec is evaluated twice. Mutations draw from ``Random(f"{seed}:{g}")``.
    2. screen      every member × ``screen_seeds`` at ``screen_steps`` against the reference at lr 1:
                   the ``survivors`` best gated ones by mean score go on (the early prune; the neutral
                   spec, a starting point of generation 0, is the reference itself).
    3. confirm     horizon by horizon (``horizons``, e.g. 300 then 600) on ``confirm_seeds``: the
                   reference at every lr scale of ``lr_scales`` (the best mean is the *tuned* reference
                   at that horizon), the survivors at lr 1. A survivor significantly worse at one
                   horizon (its one-sided 95 % upper bound on the gain below 0) is not run at the next.
    4. robustness  a candidate that wins at every horizon is run at the other lr scales at the first
                   horizon, against the reference at the same scale: it must not be significantly worse.
After the last generation:
    transfer       every winner on the held-out configuration (``transfer_preset``, e.g. depth 4, on
                   ``transfer_seeds``): the gain must hold (one-sided 95 % lower bound above 0).
    holdout        the announced winners — or, with none, the best gated candidate by robust score, so that
                   a negative result is measured too — on ``holdout_seeds`` at every horizon, with the
                   reference's steps-to-target ladder (``fusedgate.search.steps_to_target``).

The robust score of a candidate is the minimum over the horizons of its mean confirmation rank score
(``score.compare``: the score without its wall-clock term, so that decisions replay exactly), so a
policy that helps at one horizon and hurts at another ranks by the horizon where it hurts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from fusedgate.search import score, stats
from fusedgate.search import steps_to_target as stt
from fusedgate.search.config import SearchConfig
from fusedgate.search.evaluate import FUSEDGATE, make_job
from fusedgate.search.external_mutator import Rejected
from fusedgate.search.mutations import OPERATORS, mutate
from fusedgate.search.runner import check_corpus, code_commit, run_jobs
from fusedgate.spec import GateSpec, Pole

# The search's neutral point: the GateSpec preset that reproduces the production optimizer exactly
# (nanochat's MuonAdamW: Polar Express, MuonEq, Muon+, NorMuon, cautious weight decay).
NEUTRAL_PRESET = "nanochat"
EVALS_PER_RUN = 4  # curve evaluations after step 0: enough for auc and speedup, cheap next to training


def neutral_spec() -> GateSpec:
    """FusedGate reproducing the production optimizer (both poles equal): the reference."""
    return getattr(GateSpec, NEUTRAL_PRESET)()


def gated_muon() -> GateSpec:
    """A gated start in the neutral spec's units: the neutral update while the loss falls, a damped,
    clipped step as the run ends.

    g = sigmoid(2 + 2·loss_improvement − 4·step_fraction); aggressive pole = the neutral pole exactly,
    conservative pole = 0.6× step, clip at 5·RMS.
    """
    neutral = neutral_spec()
    pole = neutral.aggressive
    return neutral.replace(
        gate_bias=2.0,
        w_loss_improvement=2.0,
        w_step_fraction=-4.0,
        conservative=Pole(update_mult=0.6, trust_mix=0.0, clip=5.0, beta2=pole.beta2, ortho=pole.ortho),
    )


# The NanoChat trainer passes param groups that carry lr, betas, eps, weight_decay, momentum and
# ns_steps, which override the spec's base settings; operators on those fields would produce runs
# identical to their parent's. They stay in the registry (for other trainers) but are off by default.
TRAINER_OVERRIDDEN = ("scale_lr", "perturb_base", "step_ns_steps")
DEFAULT_OPERATORS = tuple(name for name in OPERATORS if name not in TRAINER_OVERRIDDEN)


def seed_specs() -> list[GateSpec]:
    """The starting points: the neutral engine itself (its mutations explore gates from neutral), the
    gated default and the gated Muon start."""
    return [neutral_spec(), GateSpec.gated(), gated_muon()]


def default_config(**overrides) -> SearchConfig:
    return SearchConfig(**overrides)


# ---------------------------------------------------------------------------- settings and jobs
@dataclass(frozen=True)
class Setting:
    """Where runs of a stage happen: preset, horizon, seeds, final-evaluation size."""

    stage: str
    preset: str
    steps: int
    seeds: tuple[int, ...]
    final_eval_tokens: int | None


def eval_every(steps: int) -> int:
    return max(1, -(-steps // EVALS_PER_RUN))


def screen_setting(cfg: SearchConfig) -> Setting:
    return Setting("screen", cfg.preset, cfg.screen_steps, cfg.screen_seeds, None)


def confirm_setting(cfg: SearchConfig, steps: int) -> Setting:
    return Setting("confirm", cfg.preset, steps, cfg.confirm_seeds, cfg.final_eval_tokens)


def transfer_setting(cfg: SearchConfig) -> Setting:
    return Setting("transfer", cfg.transfer_preset, cfg.transfer_horizon, cfg.transfer_seeds, cfg.final_eval_tokens)


def holdout_setting(cfg: SearchConfig, steps: int) -> Setting:
    return Setting("holdout", cfg.preset, steps, cfg.holdout_seeds, cfg.final_eval_tokens)


def job(cfg: SearchConfig, corpus: str, setting: Setting, spec: GateSpec | None, seed: int,
        lr_scale: float = 1.0, steps: int | None = None) -> dict:
    """One FusedGate run (``spec`` None: the neutral reference) of a setting; ``steps`` overrides the
    setting's horizon (the reference's ladder rungs)."""
    steps = steps or setting.steps
    return make_job(FUSEDGATE, spec or neutral_spec(), setting.preset, steps, seed, cfg.data, corpus, setting.stage,
                    lr_scale, setting.final_eval_tokens, eval_every(steps))


def setting_jobs(cfg, corpus, setting: Setting, spec=None, lr_scale: float = 1.0, steps=None) -> list[dict]:
    return [job(cfg, corpus, setting, spec, s, lr_scale, steps) for s in setting.seeds]


def _runs(archive, cfg, corpus, setting: Setting, spec=None, lr_scale=1.0, steps=None) -> list[dict] | None:
    """The finished runs of one configuration, in seed order; None while any is missing."""
    runs = [archive.evaluation(j["job_key"]) for j in setting_jobs(cfg, corpus, setting, spec, lr_scale, steps)]
    return None if any(r is None for r in runs) else runs


def _mean_bpb(runs: list[dict] | None) -> float:
    if runs is None or not all(score.run_ok(r) for r in runs):
        return math.inf
    return sum(r["final_val_bpb"] for r in runs) / len(runs)


# ---------------------------------------------------------------------------- comparisons
def compare_runs(runs: list[dict], refs: list[dict]) -> dict | None:
    """Per-seed ``score.compare`` of candidate runs against reference runs, aggregated; with the gain's
    one-sided 95 % upper bound (``gain_upper95``: below 0 means significantly worse)."""
    if not all(score.run_ok(r) for r in refs):
        return None
    per_seed = [score.compare(run, ref) for run, ref in zip(runs, refs)]
    agg = score.aggregate(per_seed)
    agg["per_seed"] = per_seed
    bpbs = [run["final_val_bpb"] if score.run_ok(run) else math.nan for run in runs]
    agg["final_val_bpb"] = sum(bpbs) / len(bpbs)
    agg["gain_upper95"] = stats.upper_bound(agg["gains"])
    ses = [m["val_se_paired"] for m in per_seed if not m["failed"] and math.isfinite(m["val_se_paired"])]
    agg["val_se_paired"] = max(ses) if ses else math.nan
    return agg


def tuned_scale(archive, cfg, corpus, setting: Setting) -> float | None:
    """The lr scale whose reference runs have the lowest mean final val bpb at this setting (ties: the
    scale nearest 1); None while the sweep is incomplete or every scale failed."""
    means = {sc: _mean_bpb(_runs(archive, cfg, corpus, setting, None, sc)) for sc in cfg.lr_scales}
    if any(_runs(archive, cfg, corpus, setting, None, sc) is None for sc in cfg.lr_scales):
        return None
    best = min(means, key=lambda sc: (means[sc], abs(math.log(sc))))
    return best if math.isfinite(means[best]) else None


def evaluate_spec(archive, cfg, corpus, spec, setting: Setting, lr_scale: float = 1.0,
                  reference_scale: float | None = None) -> dict | None:
    """A spec's runs at ``lr_scale`` against the reference at ``reference_scale`` (default: the same
    scale) on a setting's seeds; None while any run is missing."""
    refs = _runs(archive, cfg, corpus, setting, None, lr_scale if reference_scale is None else reference_scale)
    runs = _runs(archive, cfg, corpus, setting, spec, lr_scale)
    if refs is None or runs is None:
        return None
    agg = compare_runs(runs, refs)
    if agg is not None:
        agg["reference_lr_scale"] = lr_scale if reference_scale is None else reference_scale
    return agg


# ---------------------------------------------------------------------------- the noise floor
def noise_floor(archive, cfg: SearchConfig, corpus: str, horizon: int) -> dict | None:
    """The tuned reference and the resolvable effect at a confirmation horizon.

    lr_scale     the tuned reference's scale (``tuned_scale``)
    sigma        the paired spread where it matters: the pooled sd over seeds of the paired gains of the
                 *near-neutral* candidates at this horizon — those whose two-sided 95 % interval covers 0,
                 so their gains are noise — (``source`` "near-neutral candidates (k)"); with fewer than two
                 of them, the pooled sd of the lr sweep's pairs bpb(scale) − bpb(tuned) ("lr sweep")
    mde          the minimal detectable mean gain for the confirmation seed count at that sigma
    min_effect   max(mde, score.VAL_SE_TARGET), or the configured ``min_effect``
    too_short    the sweep's range of mean val bpb is below the mde: the horizon cannot tell
                 configurations apart, so no winner is declared
    seeds_for    {effect: seeds needed to detect it at this sigma} for 0.005, 0.01, 0.02 bpb
    None while the sweep is incomplete or the tuned reference failed.
    """
    setting = confirm_setting(cfg, horizon)
    best = tuned_scale(archive, cfg, corpus, setting)
    if best is None:
        return None
    sweep = {sc: _runs(archive, cfg, corpus, setting, None, sc) for sc in cfg.lr_scales}
    tuned = sweep[best]
    near = []
    for cand in archive.candidates():
        if cand["spec"].content_hash() == neutral_spec().content_hash():
            continue
        agg = evaluate_spec(archive, cfg, corpus, cand["spec"], setting, 1.0, best)
        if agg and not agg["n_failed"] and stats.covers_zero(agg["gains"]):
            near.append(agg["gains"])
    if len(near) >= 2:
        sigma, source = stats.pooled_sd(near), f"near-neutral candidates ({len(near)})"
    else:
        pairs = [[a["final_val_bpb"] - b["final_val_bpb"] for a, b in zip(runs, tuned)]
                 for sc, runs in sweep.items() if sc != best and all(score.run_ok(r) for r in runs)]
        sigma, source = stats.pooled_sd(pairs), "lr sweep"
    n = len(setting.seeds)
    mde = stats.mde(sigma, n)
    means = {sc: _mean_bpb(runs) for sc, runs in sweep.items()}
    finite = [m for m in means.values() if math.isfinite(m)]
    spread = max(finite) - min(finite) if finite else math.nan
    min_effect = cfg.min_effect if cfg.min_effect is not None else max(mde if math.isfinite(mde) else 0.0,
                                                                         score.VAL_SE_TARGET)
    ses = sorted(r["final_val_se"] for r in tuned if r.get("final_val_se") is not None)
    return {
        "horizon": horizon,
        "lr_scale": best,
        "means": means,
        "sigma": sigma,
        "source": source,
        "mde": mde,
        "min_effect": min_effect,
        "spread": spread,
        "too_short": bool(len(cfg.lr_scales) > 1 and math.isfinite(mde) and spread < mde),
        "seed_sd": stats.mean_sd([r["final_val_bpb"] for r in tuned])[1],
        "val_se": ses[len(ses) // 2] if ses else math.nan,
        "n_seeds": n,
        "seeds_for": {e: stats.seeds_needed(sigma, e) for e in (0.005, 0.01, 0.02)},
    }


# ---------------------------------------------------------------------------- verdicts
def confirmation(archive, cfg, corpus, spec, floors: dict) -> dict:
    """A spec's confirmation: per horizon its aggregate against the tuned reference with the win verdict,
    its lr robustness at the first horizon, and the multi-horizon verdict.

    ``win``: it wins at every horizon (``score.judge``) and is not significantly worse than the reference
    at any other lr scale (one-sided 95 % upper bound on the gain ≥ 0). ``robust_score``: the minimum over
    the finished horizons of the mean rank score (None before the first)."""
    horizons, reasons = {}, []
    for h in cfg.horizons:
        floor = floors.get(h)
        agg = evaluate_spec(archive, cfg, corpus, spec, confirm_setting(cfg, h), 1.0,
                            floor["lr_scale"] if floor else None) if floor else None
        if agg is not None:
            agg.update(score.judge(agg, floor))
            reasons += [f"{h} steps: {r}" for r in agg["reasons"]]
        else:
            reasons.append(f"{h} steps: not confirmed")
        horizons[h] = agg
    robust = {}
    for sc in cfg.lr_scales:
        if sc != 1.0:
            agg = evaluate_spec(archive, cfg, corpus, spec, confirm_setting(cfg, cfg.first_horizon), sc)
            robust[sc] = agg
            if agg is None:
                reasons.append(f"lr x{sc:g}: not run")
            elif agg["n_failed"] or not agg["gain_upper95"] >= 0:
                reasons.append(f"lr x{sc:g}: significantly worse than the reference at the same lr")
    done = [a for a in horizons.values() if a is not None]
    return {
        "horizons": horizons,
        "robust": robust,
        "win": not reasons,
        "reasons": reasons,
        "wins_every_horizon": bool(len(done) == len(horizons) and all(a["win"] for a in done)),
        "robust_score": min(a["rank_score"] for a in done) if done else None,
        "complete": len(done) == len(horizons),
    }


def transfer_holds(agg: dict | None) -> bool:
    """The gain holds on the held-out configuration: no failed seed and a one-sided 95 % lower bound
    on the mean gain above 0."""
    lb = (agg or {}).get("gain_lower95")
    return bool(agg and not agg["n_failed"] and lb is not None and math.isfinite(lb) and lb > 0)


def holdout(archive, cfg, corpus, spec, floors: dict) -> dict | None:
    """Steps-to-target of a spec on the held-out seeds, per horizon: the per-seed ratio against the
    reference's ladder at the tuned lr scale (``steps_to_target.summarize``) beside the paired bpb gap at
    the horizon itself. None while any run is missing."""
    out = {}
    for h in cfg.horizons:
        setting = holdout_setting(cfg, h)
        scale = floors[h]["lr_scale"] if floors.get(h) else 1.0
        runs = _runs(archive, cfg, corpus, setting, spec)
        ladder = {r: _runs(archive, cfg, corpus, setting, None, scale, r) for r in stt.rungs(h, cfg.ladder)}
        if runs is None or any(v is None for v in ladder.values()):
            return None
        if not all(score.run_ok(r) for rs in ladder.values() for r in rs):
            return None
        ratios, where = [], []
        for i, run in enumerate(runs):
            bpb = run["final_val_bpb"] if score.run_ok(run) else math.inf
            ratio, loc = stt.steps_ratio({r: ladder[r][i]["final_val_bpb"] for r in ladder}, h, bpb)
            ratios.append(ratio)
            where.append(loc)
        out[h] = {"steps": stt.summarize(ratios, where), "gap": compare_runs(runs, ladder[h]), "lr_scale": scale,
                  "ladder": {r: [x["final_val_bpb"] for x in ladder[r]] for r in ladder}}
    return out


def holdout_jobs(cfg, corpus, spec, floors: dict) -> list[dict]:
    jobs = []
    for h in cfg.horizons:
        setting = holdout_setting(cfg, h)
        scale = floors[h]["lr_scale"] if floors.get(h) else 1.0
        for r in stt.rungs(h, cfg.ladder):
            jobs += setting_jobs(cfg, corpus, setting, None, scale, r)
        jobs += setting_jobs(cfg, corpus, setting, spec)
    return jobs


def floors_of(archive, cfg, corpus) -> dict:
    return {h: noise_floor(archive, cfg, corpus, h) for h in cfg.horizons}


def record_code_commit(archive, commit: str, log) -> None:
    """Keep ``code_commit`` the commit the archive was started at, and ``code_commits`` every commit that
    ran it, in order (a resume at a new commit is appended and noted in the log: nothing is overwritten)."""
    started = archive.get_meta("code_commit")
    if started is None:
        archive.set_meta("code_commit", commit)
    commits = (archive.get_meta("code_commits") or started or commit).split()
    if commits[-1] != commit:
        log(f"note: this archive was started at code commit {started}, resumed at {commit}")
        commits.append(commit)
    archive.set_meta("code_commits", " ".join(commits))


def standings(archive, cfg: SearchConfig, corpus: str) -> list[dict]:
    """Every candidate with its screening aggregate, confirmation, transfer and (if run) holdout, best
    first. ``announced``: a multi-horizon win whose gain also holds at transfer."""
    floors = floors_of(archive, cfg, corpus)
    rows = []
    for cand in archive.candidates():
        screen = evaluate_spec(archive, cfg, corpus, cand["spec"], screen_setting(cfg))
        conf = confirmation(archive, cfg, corpus, cand["spec"], floors)
        ref = evaluate_spec(archive, cfg, corpus, cand["spec"], transfer_setting(cfg)) if conf["win"] else None
        rows.append({**cand, "screen": screen, "confirm": conf, "transfer": ref, "floors": floors,
                     "announced": bool(conf["win"] and transfer_holds(ref)),
                     "holdout": holdout(archive, cfg, corpus, cand["spec"], floors)})
    rows.sort(key=_rank_key)
    return rows


def _rank_key(row: dict):
    conf, scr = row["confirm"], row["screen"]
    return (
        not row["announced"],
        not conf["complete"],
        -(conf["robust_score"] if conf["robust_score"] is not None else score.FAIL_SCORE),
        scr is None,
        -(scr or {}).get("rank_score", score.FAIL_SCORE),
        row["id"],
    )


# ---------------------------------------------------------------------------- the loop
class Search:
    def __init__(self, archive, executor, mutator=None, log=print, progress: bool = True):
        self.archive, self.executor, self.mutator, self.log = archive, executor, mutator, log
        self.cfg = SearchConfig.from_dict(archive.config())   # a stored config is validated like the CLI's
        self.progress = progress

    def check_corpus(self) -> str:
        return check_corpus(self.archive, self.cfg.data, self.cfg.preset)

    def run(self) -> list[dict]:
        cfg, corpus = self.cfg, self.check_corpus()
        record_code_commit(self.archive, code_commit(), self.log)
        for gen in range(cfg.generations):
            members = self.archive.population(gen) or self.make_generation(gen, corpus)
            self.log(f"generation {gen}: {len(members)} members ({sum(m['role'] == 'elite' for m in members)} elites)")
            survivors = self.screen(gen, members, corpus)
            alive = self.confirm(gen, survivors, corpus)
            self.check_robustness(gen, alive, corpus)
        self.run_transfer(corpus)
        self.run_holdout(corpus)
        self.archive.set_meta("finished", "1")
        return standings(self.archive, cfg, corpus)

    # ------------------------------------------------------------------ stages
    def screen(self, gen: int, members: list[dict], corpus: str) -> list[dict]:
        """Screen every member; the ``survivors`` best gated ones by mean score go on."""
        cfg, setting = self.cfg, screen_setting(self.cfg)
        jobs = setting_jobs(cfg, corpus, setting)
        for m in members:
            jobs += setting_jobs(cfg, corpus, setting, m["spec"])
        self.run_jobs(jobs, f"gen {gen} screening ({setting.steps} steps)")
        neutral = neutral_spec().content_hash()   # the reference itself: nothing to confirm
        screened = [(evaluate_spec(self.archive, cfg, corpus, m["spec"], setting), m) for m in members
                    if m["hash"] != neutral]
        alive = sorted([(agg["rank_score"], m["id"], m) for agg, m in screened if agg and not agg["n_failed"]],
                       key=lambda t: (-t[0], t[1]))
        survivors = [m for _, _, m in alive[: cfg.survivors]]
        self.log(f"generation {gen}: {len(alive)}/{len(members)} finished screening; confirming "
                 f"{[m['id'] for m in survivors]}")
        return survivors

    def confirm(self, gen: int, survivors: list[dict], corpus: str) -> list[dict]:
        """Horizon by horizon: the reference's lr sweep and the survivors; a survivor significantly worse
        than the tuned reference at one horizon is not run at the next. Returns those still alive."""
        cfg, alive = self.cfg, list(survivors)
        for h in cfg.horizons:
            if not alive:
                break
            setting = confirm_setting(cfg, h)
            jobs = [j for sc in cfg.lr_scales for j in setting_jobs(cfg, corpus, setting, None, sc)]
            for m in alive:
                jobs += setting_jobs(cfg, corpus, setting, m["spec"])
            self.run_jobs(jobs, f"gen {gen} confirmation ({h} steps)")
            floor = noise_floor(self.archive, cfg, corpus, h)
            kept = []
            for m in alive:
                agg = floor and evaluate_spec(self.archive, cfg, corpus, m["spec"], setting, 1.0, floor["lr_scale"])
                if agg and not agg["n_failed"] and agg["gain_upper95"] >= 0:
                    kept.append(m)
                else:
                    self.log(f"  #{m['id']} is significantly worse than the tuned reference at {h} steps: pruned")
            alive = kept
        return alive

    def check_robustness(self, gen: int, alive: list[dict], corpus: str) -> None:
        """Candidates that win at every horizon, at the other lr scales (first horizon)."""
        cfg, floors = self.cfg, floors_of(self.archive, self.cfg, corpus)
        winners = [m for m in alive if confirmation(self.archive, cfg, corpus, m["spec"], floors)["wins_every_horizon"]]
        setting = confirm_setting(cfg, cfg.first_horizon)
        jobs = [j for m in winners for sc in cfg.lr_scales if sc != 1.0
                for j in setting_jobs(cfg, corpus, setting, m["spec"], sc)]
        self.run_jobs(jobs, f"gen {gen} lr robustness")

    def run_transfer(self, corpus: str) -> None:
        """Every multi-horizon winner on the held-out transfer configuration."""
        cfg, floors = self.cfg, floors_of(self.archive, self.cfg, corpus)
        winners = [c for c in self.archive.candidates()
                   if confirmation(self.archive, cfg, corpus, c["spec"], floors)["win"]]
        if not winners:
            return
        setting = transfer_setting(cfg)
        self.log(f"transfer check of {[w['id'] for w in winners]} on {setting.preset}, {setting.steps} steps")
        jobs = setting_jobs(cfg, corpus, setting)
        for w in winners:
            jobs += setting_jobs(cfg, corpus, setting, w["spec"])
        self.run_jobs(jobs, "transfer")

    def run_holdout(self, corpus: str) -> None:
        """Steps-to-target on the held-out seeds: of the announced winners, or else of the best candidate
        (so that a negative result is measured as carefully as a positive one)."""
        rows = standings(self.archive, self.cfg, corpus)
        neutral = neutral_spec().content_hash()
        # the neutral spec is the reference itself (its ratio is 1 by construction): the best gated candidate
        gated = [r for r in rows if r["hash"] != neutral and r["confirm"]["complete"]]
        targets = [r for r in rows if r["announced"]] or gated[:1]
        floors = rows[0]["floors"] if rows else {}
        for r in targets:
            self.log(f"holdout (steps-to-target) of #{r['id']} on seeds {list(self.cfg.holdout_seeds)}")
            self.run_jobs(holdout_jobs(self.cfg, corpus, r["spec"], floors), f"holdout #{r['id']}")

    def run_jobs(self, jobs: list[dict], desc: str) -> None:
        run_jobs(self.archive, self.executor, jobs, desc, self.log, self.progress)

    # ------------------------------------------------------------------ proposing children
    def elites(self, corpus: str) -> list[dict]:
        """The best ``survivors`` gated candidates by robust score (then by screening score), failed runs
        excluded; the neutral spec is the reference, not an elite (generation 0 mutates it)."""
        neutral = neutral_spec().content_hash()
        rows = [r for r in standings(self.archive, self.cfg, corpus) if r["hash"] != neutral and (
                (r["confirm"]["robust_score"] is not None) or (r["screen"] and not r["screen"]["n_failed"]))]
        return rows[: self.cfg.survivors]

    def make_generation(self, gen: int, corpus: str) -> list[dict]:
        cfg = self.cfg
        rng = random.Random(f"{cfg.seed}:{gen}")
        children, seen = [], set()
        if gen == 0:
            elites = []
            for text in cfg.init_specs:
                spec = GateSpec.from_json(text)
                if spec.content_hash() not in seen:
                    seen.add(spec.content_hash())
                    children.append({"spec": spec, "operator": "seed", "parents": []})
        else:
            elites = self.elites(corpus)
        pool = [c["spec"] for c in children] if gen == 0 else [e["spec"] for e in elites]
        n_children = cfg.population - len(elites) - len(children)
        if not pool:
            raise RuntimeError(f"generation {gen}: no candidate finished screening, nothing to mutate")
        for i in range(max(0, n_children)):
            child = self.propose(gen, pool[i % len(pool)], rng, seen)
            if child is None:
                continue
            seen.add(child["spec"].content_hash())
            children.append(child)
        self.archive.add_generation(gen, children, [e["id"] for e in elites])
        return self.archive.population(gen)

    def propose(self, gen: int, parent: GateSpec, rng: random.Random, seen: set) -> dict | None:
        parents = [parent.content_hash()]
        fresh = lambda s: s.content_hash() not in seen and not self.archive.has_spec(s.content_hash())
        if self.mutator is not None:
            for _ in range(self.cfg.mutator_retries):
                try:
                    child, _ = self.mutator.propose(parent, gen, rng.randrange(2**31))
                except Rejected as exc:
                    self.archive.add_rejection(gen, parent.content_hash(), "external", str(exc), exc.output)
                    self.log(f"  external mutator: child rejected: {exc}")
                    continue
                if fresh(child):
                    return {"spec": child, "operator": "external", "parents": parents}
                self.archive.add_rejection(
                    gen, parent.content_hash(), "external", "duplicate of a spec already proposed", child.to_json()
                )
            self.log("  external mutator gave no usable child; using a built-in operator")
        for _ in range(200):
            child, op = mutate(parent, rng, tuple(self.cfg.operators) if self.cfg.operators else None)
            if fresh(child):
                return {"spec": child, "operator": op, "parents": parents}
        self.archive.add_rejection(gen, parent.content_hash(), "builtin", "200 mutations gave only duplicates")
        return None
