"""``fusedgate brain-eval`` end to end on a tiny budget (the real evidence run is bench/results/brain_eval.md),
its scenario arithmetic against hand-computed numbers, and its usage errors (one line, exit code 2)."""

import json
import math
import os
import re

import pytest

from fusedgate.brain.scenarios import summarise, targets, train_level
from fusedgate.brain.tasks import Arm, run_arm, spike_steps, warmup_steps
from fusedgate.cli import main

TINY = ["--tasks", "regression", "--optimizers", "sgd", "--seeds", "2", "--steps", "30", "--window", "3",
        "--no-overhead", "--no-progress"]


def test_brain_eval_writes_table_json_and_plot(tmp_path, capsys):
    code = main(["brain-eval", *TINY, "--scenarios", "tuned,lr_x3,schedule", "--out", str(tmp_path)])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain_eval.json", "brain_eval.md", "brain_eval.png"]
    assert (tmp_path / "brain_eval.png").stat().st_size > 1000
    record = json.loads((tmp_path / "brain_eval.json").read_text())
    assert {r["scenario"] for r in record["rows"]} == {"tuned", "lr_x3", "schedule"}
    finals = {(r["arm"]["brain"], r["arm"]["lr_mult"], r["arm"]["schedule"], r["arm"]["restore_lr"], r["seed"]):
              r["final"] for r in record["runs"]}
    assert len(finals) == len(record["runs"]) == 6 * 2   # base, brain, base@3, brain@3, restored@3, schedule
    x3 = next(r for r in record["rows"] if r["scenario"] == "lr_x3")
    for seed, ratio in enumerate(x3["ratios"]):   # each ratio is brain / base of its own seed
        assert math.isclose(ratio, finals[(True, 3.0, False, False, seed)] / finals[(False, 3.0, False, False, seed)],
                            rel_tol=1e-9)
    restored = [finals[(False, 3.0, False, True, s)] / finals[(False, 3.0, False, False, s)] for s in (0, 1)]
    assert math.isclose(x3["restored_ratio"], math.sqrt(restored[0] * restored[1]), rel_tol=1e-9)
    assert x3["ladder"] == [] and not re.search(r"\(ℓ \d", (tmp_path / "brain_eval.md").read_text())  # ladder off
    text = (tmp_path / "brain_eval.md").read_text()
    assert "Command: `fusedgate brain-eval --tasks regression" in text and "gap closed" in text
    # the training levels' ratio beside the final losses': the last 10 curve points' means, paired by seed
    tail = {(r["arm"]["brain"], r["seed"]): sum(r["curve"][-10:]) / len(r["curve"][-10:]) for r in record["runs"]
            if r["arm"]["lr_mult"] == 1.0 and not r["arm"]["schedule"]}
    tuned = next(r for r in record["rows"] if r["scenario"] == "tuned")
    expected = math.sqrt(tail[(True, 0)] / tail[(False, 0)] * tail[(True, 1)] / tail[(False, 1)])
    assert math.isclose(tuned["train_ratio"], expected, rel_tol=1e-9) and "train brain/base" in text
    capsys.readouterr()


def test_a_training_level_is_the_curves_last_ten_points_or_nan():
    """``train_level``: the mean of the last 10 points (all of a shorter curve), NaN if one is not finite
    (a diverged run; JSON writes NaN as None) or the curve is empty."""
    assert train_level([9.0, 9.0] + [1.0, 2.0] * 5) == 1.5
    assert train_level([4.0, 2.0]) == 3.0
    assert math.isnan(train_level([1.0] * 9 + [math.inf])) and math.isnan(train_level([1.0, None]))
    assert math.isnan(train_level([]))


def test_scenario_fractions_against_hand_computed_values():
    row = summarise("lr_x3", "t", "o", {"base": {0: 1.0, 1: 1.0}, "base@m": {0: 2.0, 1: 3.0},
                                         "brain@m": {0: 1.5, 1: 2.0}})
    assert row["gap_closed"] == pytest.approx((2.5 - 1.75) / (2.5 - 1.0))
    assert row["ratio"] == pytest.approx(math.sqrt(0.75 * 2 / 3))
    sched = summarise("schedule", "nanochat", "adamw", {"const": {0: 3.0}, "const+brain": {0: 2.9},
                                                        "schedule": {0: 2.8}})
    assert sched["recovered"] == pytest.approx(0.5)
    flat = summarise("schedule", "t", "o", {"const": {0: 3.0}, "const+brain": {0: 2.9}, "schedule": {0: 2.999}})
    assert math.isnan(flat["recovered"])          # a gap below 1 % of the loss gives no fraction
    met = {t["target"][:8]: t["met"] for t in targets([sched])}
    assert met == {"constant": True}


def test_targets_name_what_cannot_count_and_count_only_what_applies():
    """The schedule target is judged where the schedule has a gain (a schedule worse than the constant lr
    leaves nothing to recover: n/a, not a miss, but at least one optimizer must apply); the 3× target names
    the pairs whose base at 3× is within 1 % of its tuned loss (nothing to rescue), those where it costs less
    than ×1/0.9 (the tuned lr itself would not reach the target) and the misses without a reason — and still
    counts every one of them as not rescued."""
    def sched(opt, schedule):
        return summarise("schedule", "nanochat", opt, {"const": {0: 3.0}, "const+brain": {0: 2.9},
                                                       "schedule": {0: schedule}})

    def target(rows, head):
        return next(t for t in targets(rows) if t["target"].startswith(head))

    worse = sched("sgd", 3.3)                              # the schedule ×1.1 of the constant lr
    assert math.isnan(worse["recovered"])
    t = target([worse, sched("adamw", 2.8)], "constant")
    assert t["met"] and "sgd n/a (schedule/const 1.100: no gain)" in t["measured"] and "adamw 50 %" in t["measured"]
    assert not target([worse], "constant")["met"]          # nothing applies: nothing shown
    assert not target([worse, sched("adamw", 2.0)], "constant")["met"]   # 10 % of a 1.0 gain

    def x3(task, opt, at_3x, brain):
        return summarise("lr_x3", task, opt, {"base": {0: 1.0}, "base@m": {0: at_3x}, "brain@m": {0: brain}})

    rows = [x3("a", "sgd", 2.0, 1.0), x3("a", "adamw", 0.5, 0.5), x3("b", "sgd", 1.005, 1.0),
            x3("b", "adamw", 2.0, 1.9), x3("c", "sgd", 2.0, 1.0), x3("c", "adamw", 2.0, 1.0)]
    t = target(rows, "3×")
    assert t["measured"] == ("3 of 6; of the rest, 2 with nothing to rescue (the base at 3× within 1 % of its "
                             "tuned loss or better: a/adamw ×0.500, b/sgd ×1.005); real misses: b/adamw 0.950")
    assert not t["met"]
    # the base at 3× costs ×1.05: its tuned lr's run is 0.952 × the 3× run, so no return to it reaches 0.9
    rows[-1] = x3("c", "adamw", 1.05, 1.0)
    assert target(rows, "3×")["measured"] == (
        "2 of 6; of the rest, 2 with nothing to rescue (the base at 3× within 1 % of its tuned loss or better: "
        "a/adamw ×0.500, b/sgd ×1.005); 1 where the tuned lr itself would not reach 0.9 (the base at 3× costs less "
        "than ×1.11: c/adamw ×1.050); real misses: b/adamw 0.950")
    rows = [x3(task, opt, 2.0, 1.0 if task != "c" else 1.9) for task in "abc" for opt in ("sgd", "adamw")]
    assert target(rows, "3×")["measured"] == "4 of 6; missed: c/sgd 0.950, c/adamw 0.950"
    assert target(rows, "3×")["met"]


def test_the_3x_target_names_the_pairs_whose_cost_is_paid_during_the_warm_up():
    """A missed pair whose lr, restored to the tuned one at the brain's first window (no brain), still ends above
    0.9 × the 3× run has a measured reason: its cost is paid before a brain may act. One restored below 0.9 stays
    a real miss; the ⅓ target's row says beside its count what the restored lr closes."""
    def x3(task, opt, brain, restored):
        return summarise("lr_x3", task, opt, {"base": {0: 1.0}, "base@m": {0: 2.0}, "brain@m": {0: brain},
                                              "restored@m": {0: restored}})

    rows = [x3("a", "sgd", 1.0, 1.2), x3("a", "adamw", 1.0, 1.2), x3("b", "sgd", 1.0, 1.2),
            x3("b", "adamw", 1.9, 1.9), x3("c", "sgd", 1.95, 1.2), x3("c", "adamw", 1.0, 1.0)]
    assert rows[3]["restored_ratio"] == pytest.approx(0.95) and rows[4]["restored_gap_closed"] == pytest.approx(0.8)
    t = next(t for t in targets(rows) if t["target"].startswith("3×"))
    assert t["measured"] == ("4 of 6; of the rest, 1 where the tuned lr restored after the brain's warm-up would not "
                             "reach 0.9 either (restored/base at 3×: b/adamw 0.950); real misses: c/sgd 0.975")
    div3 = [summarise("lr_div3", "t", o, {"base": {0: 1.0}, "base@m": {0: 2.0}, "brain@m": {0: 1.9},
                                          "restored@m": {0: r}}) for o, r in (("sgd", 1.4), ("adamw", 1.6))]
    t = next(t for t in targets(div3) if t["target"].startswith("⅓"))
    assert t["measured"] == "0 of 2 (the tuned lr restored after the brain's warm-up, no brain: 1 of 2)"
    old = summarise("lr_x3", "a", "sgd", {"base": {0: 1.0}, "base@m": {0: 2.0}, "brain@m": {0: 1.0}})
    assert math.isnan(old["restored_ratio"])           # a run saved before the restored arm: no reason from it


def test_a_restored_arm_trains_at_the_mis_set_lr_through_the_brains_warm_up_then_at_the_tuned_one():
    """``Arm.restore_lr``: lr × m for the warm-up of the run's brain config (``warmup_windows``·``window`` steps),
    the tuned lr from then on — the same run as the mis-set arm with that lr factor given by hand."""
    assert warmup_steps(None) == 30 and warmup_steps({"window": 5, "warmup_windows": 2}) == 10
    kwargs = {"window": 4, "warmup_windows": 2}
    restored = run_arm("regression", "sgd", 0, Arm(lr_mult=3.0, restore_lr=True), steps=30, brain_kwargs=kwargs)
    by_hand = run_arm("regression", "sgd", 0, Arm(lr_mult=3.0), steps=30, lr_factor=lambda t: 1.0 if t < 8 else 1 / 3)
    late = run_arm("regression", "sgd", 0, Arm(lr_mult=3.0), steps=30, lr_factor=lambda t: 1.0 if t < 9 else 1 / 3)
    mis_set = run_arm("regression", "sgd", 0, Arm(lr_mult=3.0), steps=30)
    assert restored["final"] == by_hand["final"] and restored["curve"] == by_hand["curve"]
    assert len({restored["final"], late["final"], mis_set["final"]}) == 3
    with pytest.raises(ValueError, match="not both"):
        run_arm("regression", "sgd", 0, Arm(brain=True, restore_lr=True), steps=5)


def test_from_reads_a_run_saved_before_the_restored_arm(tmp_path, capsys):
    """A file whose arms lack ``restore_lr`` and which holds no restored runs is rewritten without them."""
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["brain-eval", *TINY, "--scenarios", "lr_x3", "--out", str(first)]) == 0
    record = json.loads((first / "brain_eval.json").read_text())
    record["runs"] = [dict(r, arm={k: v for k, v in r["arm"].items() if k != "restore_lr"}) for r in record["runs"]
                      if not r["arm"]["restore_lr"]]
    (first / "old.json").write_text(json.dumps(record))
    assert main(["brain-eval", "--from", str(first / "old.json"), "--out", str(again), "--no-progress"]) == 0
    redone = json.loads((again / "brain_eval.json").read_text())
    assert [r["scenario"] for r in redone["rows"]] == ["lr_x3"] and redone["rows"][0]["restored_ratio"] is None
    assert "restored" not in (again / "brain_eval.md").read_text().split("### Mis-set lr, 3×")[1].split("\n\n")[1]
    capsys.readouterr()


def test_a_seed_range_trains_those_seeds_and_says_so(tmp_path, capsys):
    """``--seeds FIRST-LAST``: seeds no choice was made on; the runs, rows, command line and report name them."""
    args = [a if a != "2" else "30-31" for a in TINY]
    assert main(["brain-eval", *args, "--scenarios", "tuned", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "brain_eval.json").read_text())
    assert sorted({r["seed"] for r in record["runs"]}) == [30, 31] and record["rows"][0]["seeds"] == [30, 31]
    assert "--seeds 30-31" in record["meta"]["command"]
    reference = run_arm("regression", "sgd", 31, Arm(brain=False), steps=30)["final"]
    assert record["rows"][0]["finals"]["base"][1] == reference        # seed 31's own run
    assert "seeds 30…31" in (tmp_path / "brain_eval.md").read_text()
    capsys.readouterr()


def test_planted_spikes_and_fixed_clip_are_real():
    spikes = spike_steps(0, 300)
    assert spikes and min(spikes) >= 10 and spike_steps(0, 300) == spikes
    none = run_arm("regression", "sgd", 0, Arm(spikes=True), steps=60)
    clipped = run_arm("regression", "sgd", 0, Arm(spikes=True, clip=True), steps=60)
    clean = run_arm("regression", "sgd", 0, Arm(), steps=60)
    assert none["final"] != clean["final"] and clipped["final"] < none["final"]


@pytest.mark.parametrize("bad", [["--tasks", "nope"], ["--seeds", "0"], ["--optimizers", "sgd,lbfgs"],
                                 ["--steps", "-3"], ["--window", "2"], ["--threads", "0"],
                                 ["--seeds", "9" * 5000], ["--seeds", "5-3"], ["--seeds", "-2"], ["--seeds", "3-"],
                                 ["--seeds", "0-1000"]])
def test_brain_eval_rejects_bad_arguments_in_one_line(bad, capsys):
    with pytest.raises(SystemExit) as info:
        main(["brain-eval", *bad])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and len(err) < 300, err


def _init_error(tmp_path, capsys, content: bytes | None, name="init.json"):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    code = main(["brain-eval", *TINY, "--init", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--init" in err, err
    assert not (out / "brain_eval.md").exists()
    return err


def test_init_file_errors_are_one_line(tmp_path, capsys):
    assert "cannot read" in _init_error(tmp_path, capsys, None)
    assert "not UTF-8" in _init_error(tmp_path, capsys, b"\xff\xfe\x00binary\x89PNG")
    assert "not valid JSON" in _init_error(tmp_path, capsys, b"{explore: 1")
    assert "JSON object" in _init_error(tmp_path, capsys, b"[1, 2]")
    assert "unknown OptBrain argument" in _init_error(tmp_path, capsys, b'{"explre": 0.5}')
    assert "window" in _init_error(tmp_path, capsys, b'{"window": 1}')
    assert "cannot read" in _init_error(tmp_path, capsys, None, name="")   # a folder


def test_the_ladders_level_is_kept_per_seed_and_shown_beside_the_trust(tmp_path, capsys):
    init = tmp_path / "ladder.json"
    init.write_text('{"ladder": 2}')
    out = tmp_path / "out"
    assert main(["brain-eval", *TINY, "--scenarios", "lr_div3", "--init", str(init), "--out", str(out)]) == 0
    record = json.loads((out / "brain_eval.json").read_text())
    levels = [r["report"]["ladder"]["level"] for r in sorted(record["runs"], key=lambda r: r["seed"])
              if r["arm"]["brain"]]
    row = record["rows"][0]
    assert row["ladder"] == levels and len(levels) == 2 and set(levels) <= {1.0, 2.0, 4.0}
    assert re.search(r"\(ℓ \d", (out / "brain_eval.md").read_text())
    capsys.readouterr()


def test_init_file_arguments_reach_the_brain(tmp_path, capsys):
    (tmp_path / "init.json").write_text('{"explore": 0.0, "hypergrad": 0.0, "warmdown": 0.0}', encoding="utf-8")
    out = tmp_path / "out"
    assert main(["brain-eval", *TINY, "--scenarios", "tuned", "--init", str(tmp_path / "init.json"),
                 "--out", str(out)]) == 0
    record = json.loads((out / "brain_eval.json").read_text())
    tuned = record["rows"][0]
    assert tuned["ratios"] == [1.0, 1.0]     # no exploration, hypergradient or warmdown: the base's own run
    assert record["meta"]["brain_kwargs"] == {"explore": 0.0, "hypergrad": 0.0, "warmdown": 0.0, "window": 3}
    capsys.readouterr()


def test_brain_eval_refuses_a_scenario_that_applies_nowhere(tmp_path, capsys):
    assert main(["brain-eval", *TINY, "--scenarios", "fusedgate", "--out", str(tmp_path)]) == 2
    assert "no scenario" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_brain_eval_refuses_a_file_as_out(tmp_path, capsys):
    target = tmp_path / "file.md"
    target.write_text("keep me")
    assert main(["brain-eval", *TINY, "--out", str(target)]) == 2
    assert target.read_text() == "keep me"
    assert "not a folder" in capsys.readouterr().err


def _read_only_folder(tmp_path):
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "results"
    # root writes through file modes: use a read-only file system instead
    for candidate in ("/sys/fusedgate-brain-eval", "/proc/fusedgate-brain-eval"):
        try:
            os.makedirs(candidate)
        except OSError:
            return candidate
        os.rmdir(candidate)
    pytest.skip("no read-only location to write into")


def test_brain_eval_refuses_a_read_only_out_before_training(tmp_path, capsys):
    out = _read_only_folder(tmp_path)
    assert main(["brain-eval", *TINY, "--steps", "100000", "--out", str(out)]) == 2   # fails at once
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err, err


def test_brain_eval_default_out_is_under_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["brain-eval", *TINY, "--scenarios", "tuned", "--seeds", "1"]) == 0
    assert (tmp_path / "fusedgate-results" / "brain_eval" / "brain_eval.md").is_file()
    capsys.readouterr()


def test_tasks_take_family_names_and_the_help_names_every_task(capsys):
    from fusedgate.brain.eval import _tasks
    from fusedgate.brain.tasks import FAMILIES, TASKS

    assert _tasks("heldout") == list(FAMILIES["heldout"]) and _tasks("all") == list(TASKS)
    assert _tasks("tuning,logreg") == [*FAMILIES["tuning"], "logreg"]
    with pytest.raises(SystemExit):
        main(["brain-eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for task in TASKS:
        assert task in text
    assert "heldout" in text and "tuning" in text


def test_brain_eval_reports_the_heldout_family_beside_the_tuning_one(tmp_path, capsys):
    code = main(["brain-eval", "--tasks", "regression,logreg", "--optimizers", "adamw", "--seeds", "2", "--steps",
                 "24", "--window", "3", "--scenarios", "tuned,nudge", "--no-overhead", "--no-progress",
                 "--out", str(tmp_path)])
    assert code == 0
    record = json.loads((tmp_path / "brain_eval.json").read_text())
    assert {(r["family"], r["task"]) for r in record["rows"]} == {("tuning", "regression"), ("heldout", "logreg")}
    assert {t["family"] for t in record["targets"]} == {"tuning", "heldout"}
    nudge = next(r for r in record["rows"] if r["scenario"] == "nudge" and r["task"] == "logreg")
    assert all(math.isfinite(x) and x != 1.0 for x in nudge["ratios"])   # 1.01× lr: a real, different run
    capsys.readouterr()


def test_ratio_interval_is_the_t_interval_of_the_log_ratios():
    ratios = [1.10, 0.95, 1.02, 0.99, 1.20]
    logs = [math.log(r) for r in ratios]
    m = sum(logs) / 5
    sd = math.sqrt(sum((x - m) ** 2 for x in logs) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)       # Student's t, 97.5 % quantile, 4 degrees of freedom
    row = summarise("tuned", "t", "o", {"base": dict.fromkeys(range(5), 1.0),
                                        "brain": dict(enumerate(ratios))})
    assert row["ci95"] == pytest.approx((math.exp(m - half), math.exp(m + half)), rel=1e-8)
    one = summarise("tuned", "t", "o", {"base": {0: 1.0}, "brain": {0: 1.1}})
    assert all(math.isnan(x) for x in one["ci95"])     # one seed: no interval


def test_from_rewrites_the_report_from_saved_runs_without_training(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["brain-eval", *TINY, "--scenarios", "tuned,nudge", "--out", str(first)]) == 0
    saved = json.loads((first / "brain_eval.json").read_text())
    assert main(["brain-eval", "--from", str(first / "brain_eval.json"), "--scenarios", "tuned",
                 "--out", str(again), "--no-progress"]) == 0
    redone = json.loads((again / "brain_eval.json").read_text())
    assert redone["runs"] == saved["runs"]                          # nothing lost, nothing retrained
    assert redone["rows"] == [r for r in saved["rows"] if r["scenario"] == "tuned"]
    assert "rewritten from that run's `brain_eval.json`" in (again / "brain_eval.md").read_text()
    capsys.readouterr()


def test_from_without_a_selection_rewrites_the_saved_tables_in_their_order(tmp_path, capsys):
    """Not every scenario in the default order: the saved run's own (here nudge before tuned)."""
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["brain-eval", *TINY, "--scenarios", "nudge,tuned", "--out", str(first)]) == 0
    assert main(["brain-eval", "--from", str(first / "brain_eval.json"), "--out", str(again), "--no-progress"]) == 0
    saved, redone = (json.loads((d / "brain_eval.json").read_text()) for d in (first, again))
    assert [r["scenario"] for r in saved["rows"]] == ["nudge", "tuned"]
    assert redone["rows"] == saved["rows"]
    capsys.readouterr()


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it"), ("{", "not valid JSON"), ("[]", "not a brain_eval.json"),
    ('{"meta": {}, "runs": [{"task": "regression"}]}', "run 0 is not a brain-eval run"),
    ('{"meta": {}, "runs": []}', "holds no runs"),
])
def test_from_refuses_a_bad_file_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "saved.json"
    if content is not None:
        path.write_text(content)
    assert main(["brain-eval", "--from", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
