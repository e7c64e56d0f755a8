"""The multi-horizon tournament: the tuned reference, the noise floor from near-neutral candidates, the
win rule across horizons and lr scales, the prune between horizons — statistics on recorded runs, numbers
checked against a direct computation — then real transfer and steps-to-target stages on the `test` preset."""

import math
import random

import pytest

from fusedgate.search import stats
from fusedgate.search import steps_to_target as stt
from fusedgate.search.archive import Archive
from fusedgate.search.evaluate import corpus_fingerprint
from fusedgate.search.executors import LocalExecutor
from fusedgate.search.tournament import (
    Search,
    confirm_setting,
    confirmation,
    default_config,
    floors_of,
    gated_muon,
    holdout_setting,
    job,
    neutral_spec,
    noise_floor,
    standings,
    transfer_holds,
)
from fusedgate.spec import GateSpec

SEEDS = (0, 1, 2, 3, 4)
SCALES = (0.7, 1.0, 1.4)
HORIZONS = (4, 8)


def run(bpb: float) -> dict:
    return {
        "status": "ok",
        "final_val_bpb": bpb,
        "tokens_per_s": 100.0,
        "wall_s": 1.0,
        "total_s": 1.05,
        "val_curve": [{"step": 0, "val_bpb": 5.0}, {"step": 4, "val_bpb": bpb}],
        "train_curve": [{"step": i, "loss": 3.0, "wall_s": 0.1 * (i + 1)} for i in range(4)],
        "gate_trajectory": [],
    }


def other_spec(bias: float) -> GateSpec:
    return gated_muon().replace(gate_bias=bias)


class Recorded:
    """An archive with recorded confirmation runs: per seed a common level, per lr scale an offset,
    paired noise; candidates given as {spec: {(horizon, scale): gain}}."""

    def __init__(self, tmp_path, corpus, name, offsets, candidates, noise=0.003, **cfg):
        self.cfg = default_config(preset="test", data=corpus, horizons=HORIZONS, confirm_seeds=SEEDS,
                                  lr_scales=SCALES, init_specs=[s.to_json(indent=None) for s in candidates], **cfg)
        self.archive = Archive.create(str(tmp_path / name), self.cfg)
        self.fp = corpus_fingerprint(corpus, "test")
        self.archive.set_meta("corpus", self.fp)
        self.archive.add_generation(0, [{"spec": s, "operator": "seed", "parents": []} for s in candidates], [])
        rng = random.Random(name)
        self.table = {}
        for h in HORIZONS:
            setting = confirm_setting(self.cfg, h)
            for s in SEEDS:
                level = 3.0 + rng.gauss(0, 0.02)
                for sc in SCALES:
                    bpb = level + offsets[sc] + rng.gauss(0, noise)
                    self.table[(None, h, sc, s)] = bpb
                    self.archive.add_evaluation(job(self.cfg, self.fp, setting, None, s, sc), run(bpb))
                for spec, gains in candidates.items():
                    for (hh, sc), gain in gains.items():
                        if hh == h:
                            bpb = self.table[(None, h, sc, s)] - gain + rng.gauss(0, noise)
                            self.table[(spec, h, sc, s)] = bpb
                            self.archive.add_evaluation(job(self.cfg, self.fp, setting, spec, s, sc), run(bpb))

    def gains(self, spec, h, sc=1.0, ref_sc=None):
        return [self.table[(None, h, ref_sc or sc, s)] - self.table[(spec, h, sc, s)] for s in SEEDS]


def winner_everywhere(gain=0.02):
    return {(h, sc): gain for h in HORIZONS for sc in SCALES}


def test_noise_floor_from_the_lr_sweep_then_from_near_neutral_candidates(tmp_path, corpus):
    offsets = {0.7: 0.05, 1.0: 0.0, 1.4: 0.03}
    rec = Recorded(tmp_path, corpus, "floor.sqlite", offsets, {gated_muon(): winner_everywhere()})
    floor = noise_floor(rec.archive, rec.cfg, rec.fp, 4)
    assert floor["lr_scale"] == 1.0 and floor["source"] == "lr sweep" and not floor["too_short"]
    diffs = [[rec.table[(None, 4, sc, s)] - rec.table[(None, 4, 1.0, s)] for s in SEEDS] for sc in (0.7, 1.4)]
    assert floor["sigma"] == pytest.approx(math.sqrt(sum(stats.mean_sd(d)[1] ** 2 for d in diffs) / 2))
    assert floor["mde"] == pytest.approx((2.131847 + 0.940965) * floor["sigma"] / math.sqrt(5), rel=1e-5)
    assert floor["seeds_for"][0.01] == stats.seeds_needed(floor["sigma"], 0.01)
    rec.archive.close()

    near = {other_spec(b): {(h, 1.0): 0.0 for h in HORIZONS} for b in (0.5, 1.5, 2.5)}
    rec = Recorded(tmp_path, corpus, "near.sqlite", offsets, near, noise=0.004)
    floor = noise_floor(rec.archive, rec.cfg, rec.fp, 4)
    covered = [rec.gains(s, 4) for s in near if stats.covers_zero(rec.gains(s, 4))]
    assert len(covered) >= 2 and floor["source"] == f"near-neutral candidates ({len(covered)})"
    assert floor["sigma"] == pytest.approx(stats.pooled_sd(covered))
    rec.archive.close()


def test_a_win_needs_every_horizon_and_every_lr_scale(tmp_path, corpus):
    offsets = {0.7: 0.05, 1.0: 0.0, 1.4: 0.03}
    everywhere = gated_muon()
    short_only = other_spec(0.5)            # wins at 4 steps, loses at 8
    lr_fragile = other_spec(1.5)            # wins at both horizons, worse at lr x0.7
    cands = {everywhere: winner_everywhere(),
             short_only: {**winner_everywhere(), (8, 1.0): -0.03},
             lr_fragile: {**winner_everywhere(), (4, 0.7): -0.03}}
    rec = Recorded(tmp_path, corpus, "rule.sqlite", offsets, cands)
    floors = floors_of(rec.archive, rec.cfg, rec.fp)
    good = confirmation(rec.archive, rec.cfg, rec.fp, everywhere, floors)
    assert good["win"], good["reasons"]
    m, sd = stats.mean_sd(rec.gains(everywhere, 8))
    assert good["horizons"][8]["bpb_gain"] == pytest.approx(m)
    assert good["horizons"][8]["gain_lower95"] == pytest.approx(m - 2.131847 * sd / 5**0.5)
    assert good["robust_score"] == pytest.approx(min(a["score"] for a in good["horizons"].values()))
    short = confirmation(rec.archive, rec.cfg, rec.fp, short_only, floors)
    assert short["horizons"][4]["win"] and not short["win"]
    assert any(r.startswith("8 steps:") for r in short["reasons"])
    fragile = confirmation(rec.archive, rec.cfg, rec.fp, lr_fragile, floors)
    assert fragile["wins_every_horizon"] and not fragile["win"]
    assert fragile["reasons"] == ["lr x0.7: significantly worse than the reference at the same lr"]
    # the neutral spec is the reference itself: no win, gains exactly 0
    neutral = confirmation(rec.archive, rec.cfg, rec.fp, neutral_spec(), floors)
    assert not neutral["win"] and neutral["horizons"][4]["gains"] == [0.0] * 5
    rec.archive.close()


def test_a_better_lr_is_the_reference(tmp_path, corpus):
    """When lr scale 1.4 is best at a horizon, a candidate that beats lr 1 by less than that does not win."""
    offsets = {0.7: 0.05, 1.0: 0.0, 1.4: -0.03}
    rec = Recorded(tmp_path, corpus, "tuned.sqlite", offsets, {gated_muon(): winner_everywhere()})
    floor = noise_floor(rec.archive, rec.cfg, rec.fp, 4)
    assert floor["lr_scale"] == 1.4
    conf = confirmation(rec.archive, rec.cfg, rec.fp, gated_muon(), floors_of(rec.archive, rec.cfg, rec.fp))
    assert conf["horizons"][4]["bpb_gain"] == pytest.approx(stats.mean_sd(rec.gains(gated_muon(), 4, 1.0, 1.4))[0])
    assert conf["horizons"][4]["bpb_gain"] < 0 and not conf["win"]
    rec.archive.close()


def test_too_short_horizon_declares_no_winner(tmp_path, corpus):
    offsets = {0.7: 0.001, 1.0: 0.0, 1.4: 0.001}
    rec = Recorded(tmp_path, corpus, "short.sqlite", offsets, {gated_muon(): winner_everywhere(0.03)}, noise=0.01)
    floor = noise_floor(rec.archive, rec.cfg, rec.fp, 4)
    assert floor["too_short"] and floor["spread"] < floor["mde"]
    conf = confirmation(rec.archive, rec.cfg, rec.fp, gated_muon(), floors_of(rec.archive, rec.cfg, rec.fp))
    assert not conf["win"] and "4 steps: horizon too short for the noise floor" in conf["reasons"]
    rec.archive.close()


def test_significantly_worse_at_the_first_horizon_is_not_run_at_the_next(tmp_path, corpus):
    offsets = {0.7: 0.05, 1.0: 0.0, 1.4: 0.03}
    rec = Recorded(tmp_path, corpus, "prune.sqlite", offsets, {gated_muon(): {(4, 1.0): -0.05}})
    members = rec.archive.population(0)
    # every job it could want at 4 steps is recorded; a job at 8 steps would need the executor (None here)
    alive = Search(rec.archive, None, log=lambda m: None, progress=False).confirm(0, members, rec.fp)
    assert alive == []
    rec.archive.close()


def test_transfer_and_steps_to_target_run_for_real(tmp_path, corpus):
    offsets = {0.7: 0.05, 1.0: 0.0, 1.4: 0.03}
    rec = Recorded(tmp_path, corpus, "stages.sqlite", offsets, {gated_muon(): winner_everywhere()},
                   transfer_preset="test", transfer_seeds=(100, 101), holdout_seeds=(200, 201), ladder=(0.8, 1.0))
    executor = LocalExecutor(workers=1, warm=((corpus, "test"),))
    search = Search(rec.archive, executor, log=lambda m: None, progress=False)
    try:
        search.run_transfer(rec.fp)
        search.run_holdout(rec.fp)
    finally:
        executor.close()
    runs = {(e["seed"], e["steps"], e["spec_hash"]) for e in rec.archive.evaluations() if e["seed"] >= 100}
    g, n = gated_muon().content_hash(), neutral_spec().content_hash()
    assert runs >= {(100, 4, g), (101, 4, n)}  # transfer: the winner and the reference
    assert runs >= {(200, 4, g), (200, 5, n), (201, 8, n), (201, 10, n)}  # holdout: ladder rungs 4/0.8 = 5, 8/0.8 = 10
    [row] = [r for r in standings(rec.archive, rec.cfg, rec.fp) if r["hash"] == g]
    assert row["announced"] == transfer_holds(row["transfer"]) and row["transfer"]["n_seeds"] == 2
    cell = row["holdout"][8]
    for i, ratio in enumerate(cell["steps"]["ratios"]):
        ladder = {h: cell["ladder"][h][i] for h in cell["ladder"]}
        key = job(rec.cfg, rec.fp, holdout_setting(rec.cfg, 8), gated_muon(), 200 + i)["job_key"]
        cand = rec.archive.evaluation(key)
        assert ratio == pytest.approx(stt.steps_ratio(ladder, 8, cand["final_val_bpb"])[0])
    rec.archive.close()
