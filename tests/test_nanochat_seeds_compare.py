"""``train --compare --seeds --ladder``: real runs on the `test` preset; the summary's gains and ratios
recomputed from the per-seed runs."""

import json

import pytest

from fusedgate.cli import main as cli_main
from fusedgate.search import steps_to_target as stt


def test_seeds_and_ladder_summary(tmp_path, corpus, capsys):
    out = tmp_path / "cmp"
    assert cli_main(["train", "--preset", "test", "--data", corpus, "--compare", "baseline,fusedgate:nanochat,"
                     "fusedgate:gated", "--seeds", "3,4", "--ladder", "0.8,1", "--out", str(out),
                     "--no-progress"]) == 0
    assert "steps-equivalent ratio" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    base, neutral, gated = summary["rows"]
    assert neutral["gains"] == [0.0, 0.0] and neutral["steps"]["ratios"] == [1.0, 1.0]  # bit-identical to nanochat
    for i, seed in enumerate((3, 4)):
        runs = {r["label"]: r["final_val_bpb"] for r in json.loads((out / f"seed-{seed}" / "compare.json").read_text())}
        assert base["final_val_bpb"][i] == runs["baseline"]
        assert gated["gains"][i] == pytest.approx(runs["baseline"] - runs["fusedgate:gated"])
        rung = json.loads((out / f"seed-{seed}" / "ladder-15" / "metrics.jsonl").read_text().splitlines()[-1])
        ladder = {12: runs["baseline"], 15: rung["final_val_bpb"]}
        assert gated["steps"]["ratios"][i] == pytest.approx(stt.steps_ratio(ladder, 12, runs["fusedgate:gated"])[0])
    assert (out / "summary.md").read_text().startswith("12 steps, seeds [3, 4]")


def test_seeds_without_compare_is_refused(capsys):
    assert cli_main(["train", "--preset", "test", "--seeds", "0-1"]) == 2
    assert "--seeds and --ladder apply to --compare" in capsys.readouterr().err
