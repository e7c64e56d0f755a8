"""``fusedgate train --nproc N``: data-parallel training on CPU with gloo equals the single-process run.

Two processes take half of every batch each; the baseline runs under DDP, FusedGate (the nanochat and the
gated default specs: the default --compare) in ZeRO-2. Each equals its single-process run over the whole
batch up to the rounding of the gradient average (measured: val bpb within 1e-7, losses within 5e-7 on
the test preset)."""

from __future__ import annotations

import json

import pytest

from fusedgate.cli import main


def curves(folder) -> tuple[list[float], list[float]]:
    rows = [json.loads(line) for line in open(folder / "metrics.jsonl")]
    return [r["loss"] for r in rows if "loss" in r], [r["val_bpb"] for r in rows if "val_bpb" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("nproc")
    args = ["train", "--preset", "test", "--compare", "--no-progress", "--threads", "1"]
    assert main(args + ["--out", str(out / "one")]) == 0
    assert main(args + ["--out", str(out / "two"), "--nproc", "2"]) == 0
    return out


@pytest.mark.parametrize("optimizer", ["baseline", "fusedgate-nanochat", "fusedgate-gated"])
def test_two_processes_equal_one(runs, optimizer):
    one_loss, one_bpb = curves(runs / "one" / optimizer)
    two_loss, two_bpb = curves(runs / "two" / optimizer)
    assert len(two_loss) == len(one_loss) == 12 and len(two_bpb) == len(one_bpb)
    assert max(abs(a - b) for a, b in zip(one_loss, two_loss)) < 1e-4
    assert max(abs(a - b) for a, b in zip(one_bpb, two_bpb)) < 1e-5
    assert (runs / "two" / "compare.md").exists() and (runs / "two" / optimizer / "checkpoint.pt").exists()


def test_nproc_that_does_not_divide_the_batch_is_refused(tmp_path, capsys):
    code = main(["train", "--preset", "test", "--nproc", "3", "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--nproc 3 does not divide" in err
    assert not (tmp_path / "x").exists()
