"""The generation loop: propose, screen, confirm, keep the elites; resumable from the archive alone.

Per generation g:
    1. population  If the archive has no population for g, build it in one transaction: the elites
                   (the best ``survivors`` confirmed candidates so far, carried over, not re-run) plus
                   children mutated from them (generation 0: the initial specs plus their mutations).
                   A child whose content hash is already in the archive is discarded and redrawn, so no
                   spec is ever evaluated twice. Mutations draw from ``Random(f"{seed}:{g}")``.
    2. screening   every member × ``screen_seeds`` at ``screen_steps``, plus the baselines
                   (nanochat Muon+AdamW, and FusedGate with the neutral spec) on the same seeds/steps.
    3. confirm     the ``survivors`` best finished members by screening score × ``confirm_seeds`` at
                   ``confirm_steps``, plus the baselines for those seeds/steps.
A job already in the archive is never handed out again, so re-running the loop after a kill picks
up exactly the jobs that had not finished.
"""

from __future__ import annotations

import math
import random

from tqdm import tqdm

from fusedgate.search import score
from fusedgate.search.evaluate import BASELINE, FUSEDGATE, corpus_fingerprint, make_job
from fusedgate.search.external_mutator import Rejected
from fusedgate.search.mutations import OPERATORS, mutate
from fusedgate.spec import GateSpec, Pole


def neutral_spec() -> GateSpec:
    """FusedGate reproducing nanochat's Muon+AdamW (both poles equal): the "neutral" baseline."""
    return GateSpec.muon()


def gated_muon() -> GateSpec:
    """A gated start in Muon units: Muon while the loss falls, a damped, clipped step as the run ends.

    g = sigmoid(2 + 2·loss_improvement − 4·step_fraction); aggressive pole = Muon exactly,
    conservative pole = 0.6× step, clip at 5·RMS.
    """
    muon = GateSpec.muon()
    return muon.replace(
        gate_bias=2.0,
        w_loss_improvement=2.0,
        w_step_fraction=-4.0,
        conservative=Pole(update_mult=0.6, trust_mix=0.0, clip=5.0, beta2=muon.aggressive.beta2, ortho=1.0),
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
        "confirm_seeds": [0, 1, 2],
        "seed": 0,
        "init_specs": [s.to_json(indent=None) for s in seed_specs()],
        "operators": list(DEFAULT_OPERATORS),
        "mutator_cmd": None,
        "mutator_timeout": 300.0,
        "mutator_retries": 2,
    }
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------------------- jobs and scores
def baseline_jobs(cfg: dict, corpus: str, steps: int, seeds: list[int], stage: str) -> list[dict]:
    return [
        make_job(opt, spec, cfg["preset"], steps, s, cfg["data"], corpus, stage)
        for s in seeds
        for opt, spec in ((BASELINE, None), (FUSEDGATE, neutral_spec()))
    ]


def candidate_jobs(cfg: dict, corpus: str, spec: GateSpec, steps: int, seeds: list[int], stage: str) -> list[dict]:
    return [make_job(FUSEDGATE, spec, cfg["preset"], steps, s, cfg["data"], corpus, stage) for s in seeds]


def evaluate_spec(
    archive,
    cfg: dict,
    corpus: str,
    spec: GateSpec | None,
    steps: int,
    seeds: list[int],
    reference: str = BASELINE,
) -> dict | None:
    """Aggregated score of a spec (or of the neutral baseline when ``spec`` is None) against the
    ``reference`` baseline ("baseline" = nanochat, or "neutral"); None while any run is missing."""
    per_seed, bpbs = [], []
    for s in seeds:
        ref_spec = None if reference == BASELINE else neutral_spec()
        ref_opt = BASELINE if reference == BASELINE else FUSEDGATE
        ref = archive.evaluation(
            make_job(ref_opt, ref_spec, cfg["preset"], steps, s, cfg["data"], corpus, "")["job_key"]
        )
        run = archive.evaluation(
            make_job(FUSEDGATE, spec or neutral_spec(), cfg["preset"], steps, s, cfg["data"], corpus, "")["job_key"]
        )
        if ref is None or run is None or not score.run_ok(ref):
            return None
        per_seed.append(score.compare(run, ref))
        bpbs.append(run["final_val_bpb"] if score.run_ok(run) else math.nan)
    agg = score.aggregate(per_seed)
    agg["per_seed"] = per_seed
    agg["final_val_bpb"] = sum(bpbs) / len(bpbs)
    return agg


def standings(archive, cfg: dict, corpus: str) -> list[dict]:
    """Every candidate with its screening and (if run) confirmation aggregates, best first."""
    rows = []
    for cand in archive.candidates():
        screen = evaluate_spec(archive, cfg, corpus, cand["spec"], cfg["screen_steps"], cfg["screen_seeds"])
        confirm = evaluate_spec(archive, cfg, corpus, cand["spec"], cfg["confirm_steps"], cfg["confirm_seeds"])
        rows.append({**cand, "screen": screen, "confirm": confirm})
    rows.sort(key=_rank_key)
    return rows


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
        for gen in range(cfg["generations"]):
            members = self.archive.population(gen) or self.make_generation(gen, corpus)
            self.log(f"generation {gen}: {len(members)} members ({sum(m['role'] == 'elite' for m in members)} elites)")
            jobs = baseline_jobs(cfg, corpus, cfg["screen_steps"], cfg["screen_seeds"], "screen")
            for m in members:
                jobs += candidate_jobs(cfg, corpus, m["spec"], cfg["screen_steps"], cfg["screen_seeds"], "screen")
            self.run_jobs(jobs, f"gen {gen} screening")
            screened = [
                (
                    evaluate_spec(self.archive, cfg, corpus, m["spec"], cfg["screen_steps"], cfg["screen_seeds"]),
                    m,
                )
                for m in members
            ]
            alive = sorted(
                [(agg["score"], m["id"], m) for agg, m in screened if agg and not agg["n_failed"]],
                key=lambda t: (-t[0], t[1]),
            )
            survivors = [m for _, _, m in alive[: cfg["survivors"]]]
            self.log(
                f"generation {gen}: {len(alive)}/{len(members)} finished screening; confirming "
                f"{[m['id'] for m in survivors]}"
            )
            jobs = (
                baseline_jobs(cfg, corpus, cfg["confirm_steps"], cfg["confirm_seeds"], "confirm") if survivors else []
            )
            for m in survivors:
                jobs += candidate_jobs(cfg, corpus, m["spec"], cfg["confirm_steps"], cfg["confirm_seeds"], "confirm")
            self.run_jobs(jobs, f"gen {gen} confirmation")
        self.archive.set_meta("finished", "1")
        return standings(self.archive, cfg, corpus)

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
