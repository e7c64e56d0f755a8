"""The tuned baseline, the noise floor and the transfer check: the statistics on recorded runs (numbers
checked against a direct computation), then a real transfer stage run on the `test` preset."""

import math
import random

import pytest

from fusedgate.search import stats
from fusedgate.search.archive import Archive
from fusedgate.search.evaluate import BASELINE, FUSEDGATE, corpus_fingerprint
from fusedgate.search.executors import LocalExecutor
from fusedgate.search.tournament import (
    Search,
    default_config,
    evaluate_spec,
    gated_muon,
    job,
    neutral_spec,
    noise_floor,
    standings,
    transfer_holds,
)

SEEDS = [0, 1, 2, 3, 4]
SCALES = [0.5, 1.0, 2.0]


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


def archive_with_confirmation(tmp_path, corpus, name, scale_offsets, candidate_gain, paired_noise):
    """Recorded confirmation runs: nanochat at each lr scale (a common per-seed level plus an offset per
    scale plus paired noise), the neutral spec, and a candidate ``candidate_gain`` below lr scale 1."""
    cfg = default_config(
        preset="test", data=corpus, confirm_steps=4, confirm_seeds=SEEDS, lr_scales=SCALES,
        init_specs=[gated_muon().to_json(indent=None)],
    )
    archive = Archive.create(str(tmp_path / name), cfg)
    fp = corpus_fingerprint(corpus, "test")
    archive.set_meta("corpus", fp)
    archive.add_generation(0, [{"spec": gated_muon(), "operator": "seed", "parents": []}], [])
    rng = random.Random(name)
    table = {}
    for s in SEEDS:
        level = 3.0 + rng.gauss(0, 0.02)  # seed-to-seed spread, shared by every configuration
        for scale in SCALES:
            table[(scale, s)] = level + scale_offsets[scale] + rng.gauss(0, paired_noise)
            archive.add_evaluation(job(cfg, fp, "confirm", BASELINE, None, s, scale), run(table[(scale, s)]))
        archive.add_evaluation(job(cfg, fp, "confirm", FUSEDGATE, neutral_spec(), s), run(table[(1.0, s)] + 1e-4))
        table[("cand", s)] = table[(1.0, s)] - candidate_gain + rng.gauss(0, paired_noise)
        archive.add_evaluation(job(cfg, fp, "confirm", FUSEDGATE, gated_muon(), s), run(table[("cand", s)]))
    return archive, cfg, fp, table


def test_noise_floor_and_statistical_win(tmp_path, corpus):
    offsets = {0.5: 0.05, 1.0: 0.0, 2.0: 0.03}
    archive, cfg, fp, table = archive_with_confirmation(tmp_path, corpus, "win.sqlite", offsets, 0.02, 0.003)
    floor = noise_floor(archive, cfg, fp, "confirm")
    assert floor["lr_scale"] == 1.0 and not floor["too_short"]
    diffs = [[table[(sc, s)] - table[(1.0, s)] for s in SEEDS] for sc in (0.5, 2.0)]
    var = sum(stats.mean_sd(d)[1] ** 2 for d in diffs) / 2  # equal dof: the plain mean of the variances
    assert floor["sigma"] == pytest.approx(math.sqrt(var))
    assert floor["mde"] == pytest.approx((2.131847 + 0.940965) * math.sqrt(var) / math.sqrt(5), rel=1e-5)
    assert floor["min_effect"] == pytest.approx(max(floor["mde"], 0.002))
    agg = evaluate_spec(archive, cfg, fp, gated_muon(), "confirm", floor=floor)
    gains = [table[(1.0, s)] - table[("cand", s)] for s in SEEDS]
    m, sd = stats.mean_sd(gains)
    assert agg["bpb_gain"] == pytest.approx(m) and agg["gain_lower95"] == pytest.approx(m - 2.131847 * sd / 5**0.5)
    assert agg["reference_lr_scale"] == 1.0 and agg["win"], agg["reasons"]
    # the neutral spec equals the baseline: no win
    assert not evaluate_spec(archive, cfg, fp, None, "confirm", floor=floor)["win"]
    archive.close()


def test_a_better_lr_is_the_reference(tmp_path, corpus):
    """When lr scale 2 is best, a candidate that beats lr scale 1 by less than that is not a win."""
    offsets = {0.5: 0.05, 1.0: 0.0, 2.0: -0.03}
    archive, cfg, fp, _ = archive_with_confirmation(tmp_path, corpus, "tuned.sqlite", offsets, 0.02, 0.003)
    floor = noise_floor(archive, cfg, fp, "confirm")
    assert floor["lr_scale"] == 2.0
    agg = evaluate_spec(archive, cfg, fp, gated_muon(), "confirm", floor=floor)
    assert agg["bpb_gain"] < 0 and not agg["win"]
    untuned = evaluate_spec(archive, cfg, fp, gated_muon(), "confirm", reference="baseline")
    assert untuned["bpb_gain"] > 0.01  # it would have "won" against the untuned baseline
    archive.close()


def test_too_short_horizon_declares_no_winner(tmp_path, corpus):
    """lr scales 4x apart that the horizon cannot separate: the report says so instead of a winner."""
    offsets = {0.5: 0.001, 1.0: 0.0, 2.0: 0.001}
    archive, cfg, fp, _ = archive_with_confirmation(tmp_path, corpus, "short.sqlite", offsets, 0.03, 0.01)
    floor = noise_floor(archive, cfg, fp, "confirm")
    assert floor["too_short"] and floor["spread"] < floor["mde"]
    agg = evaluate_spec(archive, cfg, fp, gated_muon(), "confirm", floor=floor)
    assert not agg["win"] and "horizon too short for the noise floor" in agg["reasons"]
    archive.close()


def test_transfer_stage_runs_for_real_and_gates_the_announcement(tmp_path, corpus):
    offsets = {0.5: 0.05, 1.0: 0.0, 2.0: 0.03}
    archive, cfg, fp, _ = archive_with_confirmation(tmp_path, corpus, "transfer.sqlite", offsets, 0.02, 0.003)
    executor = LocalExecutor(workers=1, warm=((corpus, "test"),))
    try:
        Search(archive, executor, log=lambda m: None, progress=False).run_transfer(fp)
    finally:
        executor.close()
    starts = archive.job_starts()
    assert len(starts) == 10  # the winner and the baseline at the tuned lr scale, on 5 held-out seeds
    transfer = [e for e in archive.evaluations() if e["steps"] == 8]  # 2x the confirmation steps
    assert sorted({e["seed"] for e in transfer}) == [1000, 1001, 1002, 1003, 1004]
    assert all(e["status"] == "ok" and e["lr_scale"] == 1.0 for e in transfer)
    [row] = [r for r in standings(archive, cfg, fp) if r["hash"] == gated_muon().content_hash()]
    assert row["confirm"]["win"] and row["transfer"]["n_seeds"] == 5
    assert row["announced"] == transfer_holds(row["transfer"])
    archive.close()
