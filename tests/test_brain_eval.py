"""``fusedgate brain-eval`` end to end on a tiny budget (the real evidence run is bench/results/brain_eval.md)."""

import math
import re

import pytest

from fusedgate.cli import main


def test_brain_eval_writes_table_and_plot(tmp_path, capsys):
    code = main(["brain-eval", "--tasks", "regression", "--optimizers", "sgd", "--seeds", "2", "--steps", "40",
                 "--window", "4", "--no-overhead", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    text = (tmp_path / "brain_eval.md").read_text()
    assert (tmp_path / "brain_eval.png").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain_eval.md", "brain_eval.png"]
    rows = re.findall(r"^\| regression \| sgd \| (\d) \| (\S+) \| (\S+) \| (\S+) \|$", text, re.M)
    assert [r[0] for r in rows] == ["0", "1"]
    for _, base, brain, ratio in rows:   # each ratio is brain / base of its own seed
        assert math.isclose(float(ratio), float(brain) / float(base), rel_tol=2e-3)
    assert "bytes (torch wrapper)" in text
    capsys.readouterr()


@pytest.mark.parametrize("bad", [["--tasks", "nope"], ["--seeds", "0"], ["--optimizers", "sgd,lbfgs"]])
def test_brain_eval_rejects_bad_arguments(bad, capsys):
    with pytest.raises(SystemExit) as info:
        main(["brain-eval", *bad])
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_brain_eval_refuses_a_file_as_out(tmp_path, capsys):
    target = tmp_path / "file.md"
    target.write_text("keep me")
    assert main(["brain-eval", "--tasks", "regression", "--seeds", "1", "--steps", "5", "--no-overhead",
                 "--no-progress", "--out", str(target)]) == 2
    assert target.read_text() == "keep me"
    assert "not a folder" in capsys.readouterr().err
