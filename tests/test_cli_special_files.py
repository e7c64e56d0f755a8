"""Every command that reads a user's file refuses a FIFO, a device and a folder with one line, before opening it
(``fusedgate.files``): a real FIFO nobody writes to (opening it would block forever), ``/dev/zero`` (reading it
never ends) and a real folder. The FIFO cases run in a subprocess with a timeout, so a reader that opens the
FIFO fails the test instead of hanging the suite."""

import os
import shutil
import subprocess
import sys

import pytest

from fusedgate.cli import main as cli_main


def _argv(command: str, path: str, tmp_path) -> list[str]:
    """The command line of ``command`` with ``path`` where it reads a user's file; smallest sizes."""
    out = str(tmp_path / "out")
    train = ["train", "--preset", "test", "--steps", "2", "--no-progress", "--out", out]
    return {
        "spec validate": ["spec", "validate", path],
        "spec show": ["spec", "show", path],
        "train --spec": [*train, "--spec", path],
        "train --data": [*train, "--data", path],
        "train --resume": ["train", "--resume", path, "--no-progress"],
        "search run --init": ["search", "run", "--preset", "test", "--db", str(tmp_path / "s.sqlite"), "--init", path],
        "search run --reuse": ["search", "run", "--preset", "test", "--db", str(tmp_path / "s.sqlite"), "--reuse",
                               path],
        "search resume --db": ["search", "resume", "--db", path],
        "search report --db": ["search", "report", "--db", path, "--out", out],
        "brain-eval --init": ["brain-eval", "--init", path, "--out", out],
        "bench --rerender": ["bench", "--rerender", path],
    }[command]


COMMANDS = ["spec validate", "spec show", "train --spec", "train --data", "train --resume", "search run --init",
            "search run --reuse", "search resume --db", "search report --db", "brain-eval --init", "bench --rerender"]


def _check(command: str, code: int, err: str, path, kind: str, tmp_path) -> None:
    assert code == (1 if command == "spec validate" else 2), err  # validate: 1 is its "not a valid spec" answer
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and f"it is {kind}, not a regular file" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.sqlite").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_fifo_is_refused_without_blocking(command, tmp_path):
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "fusedgate", *_argv(command, str(fifo), tmp_path)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    _check(command, done.returncode, done.stderr, fifo, "a FIFO (named pipe)", tmp_path)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("path, kind", [("/dev/zero", "a character device"), (None, "a folder")])
def test_a_device_or_a_folder_is_refused(command, path, kind, tmp_path, capsys):
    if path is None:
        path = tmp_path / "folder"
        path.mkdir()
    if command == "train --data" and kind == "a folder":
        pytest.skip("a folder is a valid --data (a text folder)")
    if command == "train --resume" and kind == "a folder":
        pytest.skip("a folder is a run directory for --resume (tested in test_nanochat_checkpoint.py)")
    try:
        code = cli_main(_argv(command, str(path), tmp_path))
    except SystemExit as exc:
        code = exc.code
    _check(command, code, capsys.readouterr().err, path, kind, tmp_path)


def test_a_resume_beside_a_fifo_metrics_log_is_refused_without_blocking(finished_test_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(finished_test_run / "checkpoint.pt", run / "checkpoint.pt")
    os.mkfifo(run / "metrics.jsonl")
    done = subprocess.run([sys.executable, "-m", "fusedgate", "train", "--resume", str(run), "--steps", "4",
                           "--no-progress"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-800:]
    assert f"cannot read metrics log {run / 'metrics.jsonl'}: it is a FIFO (named pipe)" in done.stderr
