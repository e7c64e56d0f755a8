"""The training stage's summary, read back from real runs' metrics: a finished run reports the trainer's own
tokens/s and final val bpb; a run killed before its end (no result record, a cut last line) reports the
steps it made, their tokens/s by the trainer's rule, and its last val bpb."""

import json
import math

import pytest

from fusedgate.bench import train_summary as T
from fusedgate.nanochat.train import TrainConfig, train


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus):
    runs = tmp_path_factory.mktemp("runs")
    result = train(TrainConfig(preset="test", optimizer="baseline", steps=4, eval_every=2, data=corpus,
                               out_dir=str(runs / "baseline"), progress=False, checkpoint_every=0))
    return runs, result


def test_a_finished_run_reports_the_trainers_numbers(finished):
    runs, result = finished
    summary = T.summarise_run(runs / "baseline")
    assert summary["label"] == "baseline" and summary["status"] == "ok" and summary["steps"] == 4
    assert summary["tokens_per_s"] == pytest.approx(result.tokens_per_s)
    assert summary["final_val_bpb"] == pytest.approx(result.final_val_bpb)
    assert [v["step"] for v in summary["val_curve"]] == [0, 2, 4]


def test_a_killed_run_reports_what_it_did(finished, tmp_path):
    runs, _ = finished
    lines = (runs / "baseline" / T.METRICS).read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["type"] != "result"]
    kept = [line for line in kept if not (json.loads(line)["type"] == "val" and json.loads(line)["step"] == 4)]
    folder = tmp_path / "fusedgate-default"
    folder.mkdir()
    (folder / T.METRICS).write_text("\n".join(kept) + "\n" + kept[-1][: len(kept[-1]) // 2])
    train_records = [json.loads(line) for line in kept if json.loads(line)["type"] == "train"]
    timed = train_records[1:]
    expected = sum(r["tokens_per_s"] * r["step_s"] for r in timed) / sum(r["step_s"] for r in timed)
    summary = T.summarise_run(folder)
    assert summary["label"] == "fusedgate:default" and summary["steps"] == len(train_records) == 4
    assert summary["tokens_per_s"] == pytest.approx(expected)
    assert summary["final_step"] == 2 and math.isfinite(summary["final_val_bpb"])
    assert summary["status"].startswith("stopped after 4 steps")


def test_a_run_that_never_started_is_listed(tmp_path, finished):
    runs, _ = finished
    summaries = T.summarise(runs, ["baseline", "fusedgate:nanochat"])
    assert summaries[1]["status"] == "no metrics" and summaries[1]["final_val_bpb"] is None
    md = T.markdown(summaries, "t")
    assert "| baseline" in md and "| fusedgate:nanochat" in md and "no metrics" in md
