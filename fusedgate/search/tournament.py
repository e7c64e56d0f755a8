"""The generation loop: propose, screen, confirm against a tuned baseline, check transfer; resumable
from the archive alone.

Per generation g:
    1. population  If the archive has no population for g, build it in one transaction: the elites
                   (the best ``survivors`` confirmed candidates so far, carried over, not re-run) plus
                   children mutated from them (generation 0: the initial specs plus their mutations).
                   A child whose content hash is already in the archive is discarded and redrawn, so no
                   spec is ever evaluated twice. Mutations draw from ``Random(f"{seed}:{g}")``.
    2. screening   every member × ``screen_seeds`` at ``screen_steps``, plus the baselines (nanochat
                   Muon+AdamW at lr scale 1, and FusedGate with the neutral spec) on the same seeds/steps.
    3. confirm     the ``survivors`` best finished members by screening score × ``confirm_seeds`` at
                   ``confirm_steps``, plus the tuned baseline: nanochat's Muon+AdamW at every lr scale
                   of ``lr_scales`` on those seeds/steps (cached like every run). The best mean val bpb
                   among the scales is the *tuned* baseline that candidates are judged against, and the
                   sweep's paired differences give the noise floor (``noise_floor``).
After the last generation, every candidate that wins at confirmation is re-run on the held-out
*transfer* configuration (``transfer_seeds`` × ``transfer_steps``, default 2× the confirmation steps
on seeds it was not selected on) against the baseline at the tuned lr scale; a win is announced only
if the gain holds there too. Confirmation and transfer runs use the large final evaluation
(``final_eval_tokens``). A job already in the archive is never handed out again, so re-running the
loop after a kill picks up exactly the jobs that had not finished.
"""

from __future__ import annotations

import math
import random

from tqdm import tqdm

from fusedgate.search import score, stats
from fusedgate.search.evaluate import BASELINE, FUSEDGATE, corpus_fingerprint, make_job
from fusedgate.search.external_mutator import Rejected
from fusedgate.search.mutations import OPERATORS, mutate
from fusedgate.spec import GateSpec, Pole

# The search's neutral point: the GateSpec preset that reproduces the production optimizer exactly
# (nanochat's MuonAdamW: Polar Express, MuonEq, Muon+, NorMuon, cautious weight decay). The neutral
# baseline, the gated seed and calibration's random specs all start from it.
NEUTRAL_PRESET = "nanochat"
LR_SCALES = (0.5, 0.7, 1.0, 1.4, 2.0)
STAGES = ("screen", "confirm", "transfer")


def neutral_spec() -> GateSpec:
    """FusedGate reproducing the production optimizer (both poles equal): the "neutral" baseline."""
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
    return [gated_muon(), GateSpec.default()]


def default_config(**overrides) -> dict:
    cfg = {
        "preset": "tiny",
        "data": None,
        "generations": 3,
        "population": 6,
        "survivors": 2,
        "screen_steps": 60,
        "confirm_steps": 300,
        "screen_seeds": [0],
        "confirm_seeds": [0, 1, 2, 3, 4],
        "transfer_steps": None,  # None: 2 × confirm_steps
        "transfer_seeds": None,  # None: as many fresh seeds as confirm_seeds, from 1000
        "lr_scales": list(LR_SCALES),
        "final_eval_tokens": None,  # None: the preset's (small) eval set
        "min_effect": None,  # None: from the noise floor
        "seed": 0,
        "init_specs": [s.to_json(indent=None) for s in seed_specs()],
        "operators": list(DEFAULT_OPERATORS),
        "mutator_cmd": None,
        "mutator_timeout": 300.0,
        "mutator_retries": 2,
    }
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------------------- stages and jobs
EVALS_PER_RUN = 4  # curve evaluations after step 0: enough for auc and speedup, cheap next to training


def eval_every(steps: int) -> int:
    return max(1, -(-steps // EVALS_PER_RUN))


def horizon(cfg: dict, stage: str) -> tuple[int, list[int], int | None]:
    """(steps, seeds, final_eval_tokens) of a stage."""
    if stage == "screen":
        return cfg["screen_steps"], cfg["screen_seeds"], None
    final = cfg.get("final_eval_tokens")
    if stage == "confirm":
        return cfg["confirm_steps"], cfg["confirm_seeds"], final
    if stage == "transfer":
        steps = cfg.get("transfer_steps") or 2 * cfg["confirm_steps"]
        seeds = cfg.get("transfer_seeds") or [1000 + i for i in range(len(cfg["confirm_seeds"]))]
        return steps, seeds, final
    raise ValueError(f"unknown stage {stage!r}")


def job(cfg: dict, corpus: str, stage: str, optimizer: str, spec, seed: int, lr_scale: float = 1.0) -> dict:
    steps, _, final = horizon(cfg, stage)
    return make_job(
        optimizer, spec, cfg["preset"], steps, seed, cfg["data"], corpus, stage, lr_scale, final, eval_every(steps)
    )


def baseline_jobs(cfg: dict, corpus: str, stage: str, lr_scales=(1.0,)) -> list[dict]:
    """nanochat at each lr scale, and the neutral FusedGate, on every seed of the stage."""
    _, seeds, _ = horizon(cfg, stage)
    out = []
    for s in seeds:
        out += [job(cfg, corpus, stage, BASELINE, None, s, scale) for scale in lr_scales]
        out.append(job(cfg, corpus, stage, FUSEDGATE, neutral_spec(), s))
    return out


def candidate_jobs(cfg: dict, corpus: str, spec: GateSpec, stage: str) -> list[dict]:
    return [job(cfg, corpus, stage, FUSEDGATE, spec, s) for s in horizon(cfg, stage)[1]]


def _runs(archive, cfg, corpus, stage, optimizer, spec, lr_scale=1.0) -> list[dict] | None:
    """The stage's finished runs of one configuration, in seed order; None while any is missing."""
    runs = [archive.evaluation(job(cfg, corpus, stage, optimizer, spec, s, lr_scale)["job_key"])
            for s in horizon(cfg, stage)[1]]
    return None if any(r is None for r in runs) else runs


# ---------------------------------------------------------------------------- the noise floor
def noise_floor(archive, cfg: dict, corpus: str, stage: str = "confirm") -> dict | None:
    """The tuned baseline and the noise floor at a stage, from the lr-scale sweep of nanochat.

    tuned lr scale  the scale with the lowest mean final val bpb over the stage's seeds (transfer:
                    the confirmation's tuned scale, not re-swept)
    sigma           pooled sd over seeds of the paired differences bpb(scale) − bpb(tuned), over the
                    other scales: how much a paired gap between two configurations moves from seed to seed
    mde             the minimal detectable mean gain for the stage's seed count at that sigma
    min_effect      max(mde, score.VAL_SE_TARGET), or the configured ``min_effect``
    too_short       the sweep's range of mean val bpb (a 4× lr change) is below the mde: the horizon
                    cannot tell configurations apart, so no winner is declared
    seed_sd         sd over seeds of the tuned baseline's val bpb; val_se: its median val-set sampling error
    None while any sweep run is missing or the tuned baseline failed.
    """
    _, seeds, _ = horizon(cfg, stage)
    scales = cfg.get("lr_scales") or [1.0]
    if stage == "transfer":
        confirm = noise_floor(archive, cfg, corpus, "confirm")
        if confirm is None:
            return None
        scales = [confirm["lr_scale"]]
    means, runs_by_scale = {}, {}
    for scale in scales:
        runs = _runs(archive, cfg, corpus, stage, BASELINE, None, scale)
        if runs is None:
            return None
        runs_by_scale[scale] = runs
        means[scale] = (
            sum(r["final_val_bpb"] for r in runs) / len(runs) if all(score.run_ok(r) for r in runs) else math.inf
        )
    best = min(scales, key=lambda sc: (means[sc], abs(math.log(sc))))
    if not math.isfinite(means[best]):
        return None
    tuned = runs_by_scale[best]
    diffs = [
        [a["final_val_bpb"] - b["final_val_bpb"] for a, b in zip(runs_by_scale[sc], tuned)]
        for sc in scales
        if sc != best and all(score.run_ok(r) for r in runs_by_scale[sc])
    ]
    sigma = stats.pooled_sd(diffs)
    mde = stats.mde(sigma, len(seeds))
    finite_means = [m for m in means.values() if math.isfinite(m)]
    spread = max(finite_means) - min(finite_means) if finite_means else math.nan
    configured = cfg.get("min_effect")
    min_effect = configured if configured is not None else max(mde if math.isfinite(mde) else 0.0,
                                                                score.VAL_SE_TARGET)
    ses = sorted(r["final_val_se"] for r in tuned if r.get("final_val_se") is not None)
    return {
        "stage": stage,
        "lr_scale": best,
        "means": means,
        "sigma": sigma,
        "mde": mde,
        "min_effect": min_effect,
        "spread": spread,
        "too_short": bool(len(scales) > 1 and math.isfinite(mde) and spread < mde),
        "seed_sd": stats.mean_sd([r["final_val_bpb"] for r in tuned])[1],
        "val_se": ses[len(ses) // 2] if ses else math.nan,
        "n_seeds": len(seeds),
    }


# ---------------------------------------------------------------------------- scores
def evaluate_spec(
    archive,
    cfg: dict,
    corpus: str,
    spec: GateSpec | None,
    stage: str,
    reference: str = "tuned",
    floor: dict | None = None,
) -> dict | None:
    """Aggregated score of a spec (or of the neutral baseline when ``spec`` is None) at a stage against
    ``reference``: "tuned" (nanochat at the tuned lr scale; at screening, lr scale 1), "baseline"
    (nanochat at lr scale 1) or "neutral". At confirmation and transfer the aggregate carries the win
    verdict against the stage's noise floor. None while any run is missing."""
    if reference == "neutral":
        ref_opt, ref_spec, scale = FUSEDGATE, neutral_spec(), 1.0
    else:
        ref_opt, ref_spec, scale = BASELINE, None, 1.0
        if reference == "tuned" and stage != "screen":
            floor = floor if floor is not None else noise_floor(archive, cfg, corpus, stage)
            if floor is None:
                return None
            scale = floor["lr_scale"]
    refs = _runs(archive, cfg, corpus, stage, ref_opt, ref_spec, scale)
    runs = _runs(archive, cfg, corpus, stage, FUSEDGATE, spec or neutral_spec())
    if refs is None or runs is None or not all(score.run_ok(r) for r in refs):
        return None
    per_seed = [score.compare(run, ref) for run, ref in zip(runs, refs)]
    agg = score.aggregate(per_seed)
    agg["per_seed"] = per_seed
    bpbs = [run["final_val_bpb"] if score.run_ok(run) else math.nan for run in runs]
    agg["final_val_bpb"] = sum(bpbs) / len(bpbs)
    agg["reference_lr_scale"] = scale
    ses = [m["val_se_paired"] for m in per_seed if not m["failed"] and math.isfinite(m["val_se_paired"])]
    agg["val_se_paired"] = max(ses) if ses else math.nan
    if stage != "screen" and reference == "tuned":
        agg.update(score.judge(agg, floor))
    return agg


def standings(archive, cfg: dict, corpus: str) -> list[dict]:
    """Every candidate with its screening, confirmation and (if run) transfer aggregates, best first.
    ``announced`` is True for a confirmed win whose gain also holds at transfer."""
    floors = {st: noise_floor(archive, cfg, corpus, st) for st in ("confirm", "transfer")}
    rows = []
    for cand in archive.candidates():
        screen = evaluate_spec(archive, cfg, corpus, cand["spec"], "screen")
        confirm = evaluate_spec(archive, cfg, corpus, cand["spec"], "confirm", floor=floors["confirm"])
        transfer = evaluate_spec(archive, cfg, corpus, cand["spec"], "transfer", floor=floors["transfer"])
        holds = bool(transfer and transfer_holds(transfer))
        rows.append({**cand, "screen": screen, "confirm": confirm, "transfer": transfer,
                     "announced": bool(confirm and confirm["win"] and holds)})
    rows.sort(key=_rank_key)
    return rows


def transfer_holds(agg: dict) -> bool:
    """The gain holds on the held-out configuration: no failed seed and a one-sided 95 % lower bound
    on the mean gain above 0."""
    lb = agg.get("gain_lower95")
    return bool(not agg["n_failed"] and lb is not None and math.isfinite(lb) and lb > 0)


def _rank_key(row: dict):
    conf, scr = row["confirm"], row["screen"]
    return (
        conf is None,
        -(conf or {}).get("score", score.FAIL_SCORE),
        scr is None,
        -(scr or {}).get("score", score.FAIL_SCORE),
        row["id"],
    )


# ---------------------------------------------------------------------------- the loop
class Search:
    def __init__(self, archive, executor, mutator=None, log=print, progress: bool = True):
        self.archive, self.executor, self.mutator, self.log = archive, executor, mutator, log
        self.cfg = archive.config()
        self.progress = progress

    def check_corpus(self) -> str:
        """The corpus fingerprint; a resumed search refuses to continue on a different corpus."""
        corpus = corpus_fingerprint(self.cfg["data"], self.cfg["preset"])
        stored = self.archive.get_meta("corpus")
        if stored is None:
            self.archive.set_meta("corpus", corpus)
        elif stored != corpus:
            raise RuntimeError(
                f"the corpus changed since this search started ({stored} -> {corpus}); "
                f"its results would not be comparable, start a new archive"
            )
        return corpus

    def run(self) -> list[dict]:
        cfg, corpus = self.cfg, self.check_corpus()
        scales = cfg.get("lr_scales") or [1.0]
        for gen in range(cfg["generations"]):
            members = self.archive.population(gen) or self.make_generation(gen, corpus)
            self.log(f"generation {gen}: {len(members)} members ({sum(m['role'] == 'elite' for m in members)} elites)")
            jobs = baseline_jobs(cfg, corpus, "screen")
            for m in members:
                jobs += candidate_jobs(cfg, corpus, m["spec"], "screen")
            self.run_jobs(jobs, f"gen {gen} screening")
            screened = [(evaluate_spec(self.archive, cfg, corpus, m["spec"], "screen"), m) for m in members]
            alive = sorted(
                [(agg["score"], m["id"], m) for agg, m in screened if agg and not agg["n_failed"]],
                key=lambda t: (-t[0], t[1]),
            )
            survivors = [m for _, _, m in alive[: cfg["survivors"]]]
            self.log(
                f"generation {gen}: {len(alive)}/{len(members)} finished screening; confirming "
                f"{[m['id'] for m in survivors]}"
            )
            jobs = baseline_jobs(cfg, corpus, "confirm", scales) if survivors else []
            for m in survivors:
                jobs += candidate_jobs(cfg, corpus, m["spec"], "confirm")
            self.run_jobs(jobs, f"gen {gen} confirmation")
        self.run_transfer(corpus)
        self.archive.set_meta("finished", "1")
        return standings(self.archive, cfg, corpus)

    def run_transfer(self, corpus: str) -> None:
        """Re-run every confirmed winner on the held-out transfer configuration."""
        cfg = self.cfg
        floor = noise_floor(self.archive, cfg, corpus, "confirm")
        if floor is None:
            return
        if floor["too_short"]:
            self.log(
                f"confirmation horizon too short for the noise floor: lr scales {min(floor['means'])}-"
                f"{max(floor['means'])} differ by {floor['spread']:.4f} bpb < the minimal detectable effect "
                f"{floor['mde']:.4f}; no winner is declared"
            )
        winners = []
        for cand in self.archive.candidates():
            agg = evaluate_spec(self.archive, cfg, corpus, cand["spec"], "confirm", floor=floor)
            if agg and agg["win"]:
                winners.append(cand)
        if not winners:
            return
        self.log(f"transfer check of {[w['id'] for w in winners]} on {horizon(cfg, 'transfer')[:2]}")
        _, seeds, _ = horizon(cfg, "transfer")
        jobs = [job(cfg, corpus, "transfer", BASELINE, None, s, floor["lr_scale"]) for s in seeds]
        for w in winners:
            jobs += candidate_jobs(cfg, corpus, w["spec"], "transfer")
        self.run_jobs(jobs, "transfer")

    def run_jobs(self, jobs: list[dict], desc: str) -> None:
        todo, seen = [], set()
        for job in jobs:
            if job["job_key"] not in seen and self.archive.evaluation(job["job_key"]) is None:
                seen.add(job["job_key"])
                todo.append(job)
        if not todo:
            return
        bar = tqdm(total=len(todo), desc=desc, disable=not self.progress)
        for job, result in self.executor.map(todo, on_start=lambda j: self.archive.record_start(j["job_key"])):
            self.archive.add_evaluation(job, result)
            if result["status"] != "ok":
                what = job["optimizer"] if job["spec_hash"] is None else f"spec {job['spec_hash']}"
                self.log(
                    f"  {what} seed {job['seed']} {job['steps']} steps: {result['status']}: "
                    f"{(result.get('error') or '').splitlines()[0] if result.get('error') else ''}"
                )
            bar.update(1)
        bar.close()

    # ------------------------------------------------------------------ proposing children
    def elites(self, corpus: str) -> list[dict]:
        rows = [r for r in standings(self.archive, self.cfg, corpus) if r["confirm"] and not r["confirm"]["n_failed"]]
        if len(rows) < self.cfg["survivors"]:  # too few confirmed: fill with the best screened
            ids = {r["id"] for r in rows}
            rows += [
                r
                for r in standings(self.archive, self.cfg, corpus)
                if r["id"] not in ids and r["screen"] and not r["screen"]["n_failed"]
            ]
        return rows[: self.cfg["survivors"]]

    def make_generation(self, gen: int, corpus: str) -> list[dict]:
        cfg = self.cfg
        rng = random.Random(f"{cfg['seed']}:{gen}")
        children, seen = [], set()
        if gen == 0:
            elites = []
            for text in cfg["init_specs"]:
                spec = GateSpec.from_json(text)
                if spec.content_hash() not in seen:
                    seen.add(spec.content_hash())
                    children.append({"spec": spec, "operator": "seed", "parents": []})
        else:
            elites = self.elites(corpus)
        pool = [c["spec"] for c in children] if gen == 0 else [e["spec"] for e in elites]
        n_children = cfg["population"] - len(elites) - len(children)
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
            for _ in range(self.cfg["mutator_retries"]):
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
            child, op = mutate(parent, rng, tuple(self.cfg["operators"]) if self.cfg["operators"] else None)
            if fresh(child):
                return {"spec": child, "operator": op, "parents": parents}
        self.archive.add_rejection(gen, parent.content_hash(), "builtin", "200 mutations gave only duplicates")
        return None
