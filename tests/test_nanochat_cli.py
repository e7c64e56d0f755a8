"""``fusedgate train``'s report line: after a resume the run's train wall includes the earlier calls, and the line
says which part this call trained (it printed "train wall 26.3s (total 24.5s)")."""

import re
import shutil

from fusedgate.cli import main as cli_main


def test_the_wall_times_of_a_resumed_run_add_up(finished_test_run, tmp_path, capsys):
    capsys.readouterr()
    run = tmp_path / "run"
    shutil.copytree(finished_test_run, run)
    assert cli_main(["train", "--resume", str(run), "--steps", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"train wall ([\d.]+)s over the whole run, ([\d.]+)s of it in this call "
                      r"\(this call's total ([\d.]+)s\)", out)
    assert found, out
    whole, this_call, total = map(float, found.groups())
    assert this_call <= whole and this_call <= total + 0.05


def test_a_fresh_run_reports_its_wall_and_total(tmp_path, capsys):
    assert cli_main(["train", "--preset", "test", "--steps", "2", "--out", str(tmp_path / "run"),
                     "--no-progress"]) == 0
    found = re.search(r"train wall ([\d.]+)s \(total ([\d.]+)s\)", capsys.readouterr().out)
    assert found and float(found[1]) <= float(found[2]) + 0.05
