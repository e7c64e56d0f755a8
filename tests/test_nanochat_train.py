"""NanoChat trainer: real training runs on the stdlib corpus (the `test` preset: a micro model,
a dozen steps), exact resume, divergence handling, bad input and the CLI."""

import json
import math
import re

import pytest
import torch

from fusedgate.cli import main as cli_main
from fusedgate.nanochat.checkpoint import load_checkpoint
from fusedgate.nanochat.errors import TrainError
from fusedgate.nanochat.metrics import read_metrics
from fusedgate.nanochat.train import TrainConfig, train
from fusedgate.spec import GateSpec


def run(**kw):
    return train(TrainConfig(preset="test", progress=False, **kw))


@pytest.mark.parametrize("optimizer", ["baseline", "fusedgate", "adamw"])
def test_val_bpb_falls(optimizer):
    r = run(optimizer=optimizer, spec=GateSpec.gated() if optimizer == "fusedgate" else None)  # a gate to log
    first, last = r.val_curve[0], r.val_curve[-1]
    assert first["step"] == 0 and last["step"] == 12 and r.steps_done == 12
    assert first["val_bpb"] == pytest.approx(math.log2(257), abs=0.02)  # ~uniform at init
    assert last["val_bpb"] < first["val_bpb"] - 2.0
    assert r.final_val_bpb == last["val_bpb"] and not r.diverged
    assert r.train_curve[-1]["loss"] < r.train_curve[0]["loss"] - 1.5
    assert r.tokens_per_s > 0 and r.wall_s > 0
    assert r.corpus_fingerprint.startswith("stdlib-py")
    assert bool(r.gate_trajectory) == (optimizer == "fusedgate")


def test_runs_are_paired_across_optimizers():
    """Same seed → same init and batches: the step-0 loss and val bpb agree for every optimizer."""
    a, b = run(optimizer="baseline", steps=2), run(optimizer="fusedgate", steps=2, spec=GateSpec.gated())
    assert a.train_curve[0]["loss"] == b.train_curve[0]["loss"]
    assert a.val_curve[0]["val_bpb"] == b.val_curve[0]["val_bpb"]
    assert a.train_curve[1]["loss"] != b.train_curve[1]["loss"]  # ... and then the optimizers differ
    c = run(optimizer="baseline", steps=2, seed=1)
    assert c.train_curve[0]["loss"] != a.train_curve[0]["loss"]


@pytest.mark.parametrize("optimizer", ["baseline", "fusedgate"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, optimizer):
    full = run(optimizer=optimizer)
    spec = None
    first = run(optimizer=optimizer, out_dir=str(tmp_path), stop_at=5, spec=spec)
    assert first.steps_done == 5 and "stopped at step 5" in first.message
    assert load_checkpoint(tmp_path)["step"] == 5
    resumed = run(optimizer=optimizer, out_dir=str(tmp_path), resume=str(tmp_path))
    assert [c["loss"] for c in resumed.train_curve] == [c["loss"] for c in full.train_curve]
    assert resumed.final_val_bpb == full.final_val_bpb
    records = read_metrics(tmp_path)
    train_steps = [r["step"] for r in records if r["type"] == "train"]
    assert train_steps == list(range(12))  # no step logged twice
    assert all(r["corpus"] == full.corpus_fingerprint for r in records)
    assert [r["type"] for r in records].count("result") == 1


def test_metrics_log_and_gate_records(tmp_path):
    r = run(optimizer="fusedgate", out_dir=str(tmp_path), gate_log_every=4, spec=GateSpec.gated())
    records = read_metrics(tmp_path)
    kinds = {rec["type"] for rec in records}
    assert kinds == {"config", "train", "val", "gate", "result"}
    gate = [rec for rec in records if rec["type"] == "gate"]
    assert [g["step"] for g in gate] == [0, 4, 8, 11]
    params = gate[-1]["params"]
    assert "blocks.0.mlp.c_fc.weight" in params and "wte.weight" not in params
    g = params["blocks.0.mlp.c_fc.weight"]
    assert 0.0 <= g["gate"] <= 1.0 and {"update_mult", "trust_mix", "clip", "beta2", "ortho"} <= set(g)
    train_rec = [rec for rec in records if rec["type"] == "train"][3]
    assert {"loss", "tokens_per_s", "step_s", "wall_s", "lr_mult"} <= set(train_rec)
    result = records[-1]
    assert result["type"] == "result" and result["final_val_bpb"] == r.final_val_bpb


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    r = run(optimizer="baseline", out_dir=str(tmp_path), lr_scale=1e30, checkpoint_every=1)
    assert r.diverged and math.isnan(r.final_val_bpb)
    assert re.search(r"loss became (nan|inf) at step \d+", r.message) and str(tmp_path) in r.message
    bad_step = r.steps_done  # the step whose loss was not finite
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["step"] == bad_step  # written before that step ran; later state never saved
    assert all(math.isfinite(c["loss"]) for c in ckpt["train_curve"])
    records = read_metrics(tmp_path)
    assert all(math.isfinite(rec["loss"]) for rec in records if rec["type"] == "train")
    assert records[-1]["diverged"] is True


def test_bad_input_is_refused_and_nothing_is_overwritten(tmp_path):
    with pytest.raises(TrainError, match="unknown preset 'huge'"):
        train(TrainConfig(preset="huge"))
    with pytest.raises(TrainError, match="unknown optimizer"):
        run(optimizer="sgd")
    with pytest.raises(TrainError, match="does not exist"):
        run(data=str(tmp_path / "nope"), out_dir=str(tmp_path / "out0"))
    assert not (tmp_path / "out0").exists()

    out = tmp_path / "run"
    run(optimizer="baseline", out_dir=str(out), steps=3)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(TrainError, match="already holds a run"):
        run(optimizer="baseline", out_dir=str(out), steps=3)
    # a checkpoint from another model (the tiny preset's model is bigger)
    with pytest.raises(TrainError, match="from another model"):
        train(TrainConfig(preset="tiny", progress=False, resume=str(out), out_dir=str(out)))
    with pytest.raises(TrainError, match="different optimizer"):
        run(optimizer="adamw", resume=str(out), out_dir=str(out))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((out / "checkpoint.pt").read_bytes()[:500])
    with pytest.raises(TrainError, match="corrupt or not a fusedgate checkpoint"):
        run(resume=str(corrupt))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(TrainError, match="not a fusedgate.nanochat/1 checkpoint"):
        run(resume=str(foreign))
    with pytest.raises(TrainError, match="no checkpoint"):
        run(resume=str(tmp_path / "missing.pt"))


def test_cli_compare_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = cli_main(["train", "--preset", "test", "--compare", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in printed.splitlines()
            if line.startswith("|")]
    assert rows[0][:2] == ["optimizer", "final val bpb"] and set(rows[1][0]) <= {"-", ":"}
    entries = ["baseline", "fusedgate:nanochat", "fusedgate:gated"]
    assert [row[0] for row in rows[2:]] == entries and "corpus stdlib-py" in printed
    assert (out / "compare.png").stat().st_size > 10_000
    summary = json.loads((out / "compare.json").read_text())
    assert [s["label"] for s in summary] == entries
    assert [s["optimizer"] for s in summary] == ["baseline", "fusedgate", "fusedgate"]
    assert all(s["corpus"].startswith("stdlib-py") and s["final_val_bpb"] < 6 for s in summary)
    # FusedGate with the nanochat preset is nanochat's optimizer: the same final bpb to every digit
    assert summary[1]["final_val_bpb"] == summary[0]["final_val_bpb"]
    assert (out / "baseline" / "metrics.jsonl").exists() and (out / "fusedgate-nanochat" / "checkpoint.pt").exists()
    # resume a finished run through the CLI: nothing left to do, same result
    assert cli_main(["train", "--resume", str(out / "baseline"), "--no-progress"]) == 0


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    out = tmp_path / "x"
    assert cli_main(["train", "--preset", "huge", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown preset 'huge'") and "\n" not in err
    assert not out.exists()
    spec = tmp_path / "spec.json"
    spec.write_text("{not json")
    assert cli_main(["train", "--preset", "test", "--optimizer", "fusedgate", "--spec", str(spec),
                     "--out", str(out), "--no-progress"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not out.exists()
