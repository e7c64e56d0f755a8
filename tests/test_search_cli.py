"""``fusedgate search``'s command line: every count, range and number a user gives is bounded and finite, refused
by the parser (one line, exit code 2, the limit in the message) before anything is allocated or created; a
report folder that cannot be written is one line before the archive is read."""

import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fusedgate.cli import main as cli_main

ARCHIVE = Path(__file__).resolve().parent.parent / "bench" / "results" / "search" / "search.sqlite"


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = cli_main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return code, err


@pytest.mark.parametrize("argv, message", [
    (["run", "--min-effect", "nan"], "argument --min-effect: expected a finite number from 0 to 10, got 'nan'"),
    (["run", "--min-effect", "-0.5"], "argument --min-effect: expected a finite number from 0 to 10"),
    (["run", "--population", "-3"], "argument --population: expected an integer from 1 to 1,000, got '-3'"),
    (["run", "--generations", "1000000000"], "argument --generations: expected an integer from 1 to 1,000"),
    (["run", "--generations", "1e9"], "argument --generations: '1e9' is not an integer"),
    (["run", "--survivors", "0"], "argument --survivors: expected an integer from 1"),
    (["run", "--screen-steps", "0"], "argument --screen-steps: expected an integer from 1 to 1,000,000,000"),
    (["run", "--transfer-steps", "-1"], "argument --transfer-steps: expected an integer from 1"),
    (["run", "--final-eval-tokens", "0"], "argument --final-eval-tokens: expected an integer from 1"),
    (["run", "--seeds", "-1"], "argument --seeds: values must be from 0 to 4,294,967,295"),
    (["run", "--screen-seeds", "0-5000"], "argument --screen-seeds: at most 1,000 values"),
    (["run", "--transfer-seeds", "3-1"], "argument --transfer-seeds: the range '3-1' is empty"),
    (["run", "--seed", "-1"], "argument --seed: expected an integer from 0"),
    (["run", "--lr-scales", "1,nan"], "argument --lr-scales: expected a finite number above 0"),
    (["run", "--lr-scales", "0"], "argument --lr-scales: expected a finite number above 0"),
    (["run", "--mutator-timeout", "inf"], "argument --mutator-timeout: expected a finite number above 0"),
    (["run", "--mutator-retries", "-1"], "argument --mutator-retries: expected an integer from 0 to 100"),
    (["run", "--workers", "0"], "argument --workers: expected an integer from 1 to 1,024"),
    (["run", "--jobs-per-gpu", "100000"], "argument --jobs-per-gpu: expected an integer from 1 to 64"),
    (["run", "--connect-timeout", "nan"], "argument --connect-timeout: expected a finite number above 0"),
    (["run", "--gpus-per-job", "-1"], "argument --gpus-per-job: expected a finite number from 0 to 64"),
    (["run", "--cpus-per-job", "0"], "argument --cpus-per-job: expected an integer from 1"),
    (["resume", "--workers", "-2"], "argument --workers: expected an integer from 1"),
    (["noise", "--horizons", "0,100"], "argument --horizons: values must be from 1"),
    (["noise", "--second-lr-scale", "inf"], "argument --second-lr-scale: expected a finite number above 0"),
    (["noise", "--seeds", "0-100000"], "argument --seeds: at most 1,000 values"),
    (["calibrate", "--n", "1"], "argument --n: expected an integer from 2 to 10,000"),
    (["calibrate", "--confirm-steps", "0"], "argument --confirm-steps: expected an integer from 1"),
])
def test_a_bad_count_or_number_is_refused_by_the_parser(argv, message, tmp_path, capsys):
    db = tmp_path / "archive.sqlite"
    code, err = run_cli(["search", *argv, "--db", str(db)], capsys)
    assert code == 2 and message in err and not db.exists()


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, resource.RLIM_INFINITY))


def test_a_billion_seeds_are_refused_before_they_are_allocated(tmp_path):
    # a subprocess capped at 8 GiB of address space: expanding the range first would hit the cap (it grew to
    # 24 GB before issue 22) instead of taking the machine's memory
    db = tmp_path / "archive.sqlite"
    done = subprocess.run([sys.executable, "-m", "fusedgate", "search", "run", "--seeds", "0-1000000000", "--db",
                           str(db)], capture_output=True, text=True, timeout=120, preexec_fn=_cap_memory)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-800:]
    assert "argument --seeds: at most 1,000 values, got '0-1000000000'" in done.stderr and not db.exists()


@pytest.fixture
def archive(tmp_path) -> str:
    """A copy of the committed search archive (a real finished search)."""
    return str(shutil.copy(ARCHIVE, tmp_path / "search.sqlite"))


def test_report_into_an_existing_file_is_one_line(archive, tmp_path, capsys):
    out = tmp_path / "report.md"
    out.write_text("not a folder")
    code, err = run_cli(["search", "report", "--db", archive, "--out", str(out)], capsys)
    assert code == 2 and err == f"fusedgate search: error: --out {out} exists and is not a folder\n"
    assert out.read_text() == "not a folder"


def test_report_into_a_read_only_folder_is_one_line(archive, read_only_folder, capsys):
    for out in (read_only_folder, read_only_folder / "report"):
        code, err = run_cli(["search", "report", "--db", archive, "--out", str(out)], capsys)
        assert code == 2 and err.startswith(f"fusedgate search: error: --out {out}: ") and "not writable" in err


@pytest.mark.parametrize("command", ["noise", "calibrate"])
def test_noise_and_calibrate_check_their_report_folder_before_any_run(command, tmp_path, capsys):
    out = tmp_path / "report"
    out.write_text("a file")
    db = tmp_path / "archive.sqlite"
    code, err = run_cli(["search", command, "--preset", "test", "--db", str(db), "--out", str(out)], capsys)
    assert code == 2 and "exists and is not a folder" in err and not db.exists()


def test_the_search_bounds_are_the_trainer_s():
    from fusedgate.nanochat.train import MAX_SEED, MAX_STEPS
    from fusedgate.search import cli

    assert cli.MAX_STEPS == MAX_STEPS and cli.MAX_SEED <= MAX_SEED  # the parser never passes what train refuses
