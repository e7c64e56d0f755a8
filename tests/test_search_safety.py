"""Issue 15 for the search: an archive never runs code, orphaned workers exit, an unreachable Ray cluster
is refused quickly, and bad files (damaged archive, read-only location, binary spec) are one line, exit 2."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fusedgate.cli import main as cli_main
from fusedgate.search.archive import Archive
from fusedgate.search.evaluate import make_job
from fusedgate.search.tournament import default_config, gated_muon


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_resume_never_runs_a_command_stored_in_the_archive(tmp_path, capsys, corpus):
    marker = tmp_path / "pwned"
    stored = f"{sys.executable} -c \"open('{marker}', 'w').write('x')\""
    db = str(tmp_path / "handed-over.sqlite")
    cfg = default_config(
        preset="test", data=corpus, generations=1, population=2, survivors=1, screen_steps=2, horizons=[2],
        confirm_seeds=[0], lr_scales=[1.0], final_eval_tokens=256, init_specs=[gated_muon().to_json(indent=None)],
        mutator_cmd=stored,
    )
    Archive.create(db, cfg).close()
    assert cli_main(["search", "resume", "--db", db, "--workers", "1", "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert "never run" in err and "--mutator-cmd" in err
    assert not marker.exists()


def test_mutator_cmd_runs_without_a_shell(tmp_path):
    from fusedgate.search.cli import _mutator_argv
    from fusedgate.search.external_mutator import ExternalMutator, Rejected

    marker = tmp_path / "injected"
    script = tmp_path / "echo_parent.py"
    script.write_text("import sys, json; d = json.load(sys.stdin); d['gate_bias'] = 1.5; print(json.dumps(d))")
    argv = _mutator_argv(f"{sys.executable} {script} ; touch {marker}")  # ';' is an argument, not a separator
    mutator = ExternalMutator(argv, timeout=60, dry_run=False)
    try:
        child, _ = mutator.propose(gated_muon(), generation=1, seed=0)
    finally:
        mutator.close()
    assert child.gate_bias == 1.5 and not marker.exists()
    with pytest.raises(TypeError):
        ExternalMutator(f"{sys.executable} {script}")  # a string would need a shell
    missing = ExternalMutator(["/nonexistent/mutator"], timeout=5, dry_run=False)
    with pytest.raises(Rejected, match="cannot run the mutator command"):
        missing.propose(gated_muon(), generation=1, seed=0)
    missing.close()


ORPHAN_PARENT = """
import sys, time
from fusedgate.search.evaluate import make_job
from fusedgate.search.executors import LocalExecutor
from fusedgate.search.tournament import gated_muon

if __name__ == "__main__":  # workers are spawned: they re-import this file
    job = make_job("fusedgate", gated_muon(), "test", 1_000_000, 0, sys.argv[1], "c", "screen")
    ex = LocalExecutor(workers=1)
    for _, result in ex.map([job], on_start=lambda j: print(ex.workers[0].proc.pid, flush=True)):
        print("finished", result["status"], flush=True)  # never reached: the job runs for hours
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "\nState:\tZ" not in fh.read()
    except FileNotFoundError:
        return False


def test_worker_exits_when_its_parent_is_killed(tmp_path, corpus):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(ORPHAN_PARENT))
    parent = subprocess.Popen([sys.executable, str(script), corpus], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(3.0)  # the worker is training its million-step job
    assert _alive(worker) and parent.poll() is None
    parent.send_signal(signal.SIGKILL)  # the parent only, not its process group
    parent.wait()
    deadline = time.time() + 10
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    gone = not _alive(worker)
    if not gone:
        os.kill(worker, signal.SIGKILL)
    assert gone, "an orphaned worker kept training"


@pytest.mark.parametrize("address", ["127.0.0.1:1", "10.255.255.1:6379"])  # refused; no answer as Ray
def test_unreachable_ray_address_times_out_with_one_line(tmp_path, address):
    pytest.importorskip("ray")
    db = tmp_path / "s.sqlite"
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "fusedgate", "search", "run", "--db", str(db), "--preset", "test", "--executor",
         "ray", "--address", address, "--connect-timeout", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "cannot reach the Ray cluster" in out.stderr
    assert time.time() - t0 < 60 and not db.exists()


def _archive_with_rows(path: str, n: int = 60) -> None:
    archive = Archive.create(path, default_config())
    for seed in range(n):
        job = make_job("fusedgate", gated_muon(), "test", 4, seed, None, "c", "screen")
        archive.add_evaluation(job, {"status": "ok", "final_val_bpb": 3.0, "wall_s": 1.0,
                                     "val_curve": [{"step": 0, "val_bpb": 3.0 + 1e-3 * i} for i in range(40)],
                                     "train_curve": [], "gate_trajectory": []})
    archive.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    archive.close()


def test_page_corrupted_archive_is_one_line_for_report_and_resume(tmp_path, capsys):
    db = str(tmp_path / "damaged.sqlite")
    _archive_with_rows(db)
    size = os.path.getsize(db)
    assert size > 8 * 4096
    with open(db, "r+b") as fh:  # overwrite pages in the middle of the file (a bad disk block)
        for page in range(3, size // 4096, 2):
            fh.seek(page * 4096 + 100)
            fh.write(os.urandom(3000))
    for action in (["report", "--out", str(tmp_path / "r")], ["resume", "--workers", "1"]):
        assert cli_main(["search", *action, "--db", db]) == 2
        assert "corrupted" in one_line_error(capsys)


def test_read_only_archive_location_is_one_line(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through permission bits; /proc refuses new files to everyone
        where = "/proc"
    else:
        where = str(tmp_path / "ro")
        os.mkdir(where, 0o555)
    db = os.path.join(where, "search.sqlite")
    assert cli_main(["search", "run", "--db", db, "--preset", "test"]) == 2
    err = one_line_error(capsys)
    assert f"cannot create the archive {db}" in err


BINARY = b"\x00\x01\x02binary\x00" * 10
LATIN1 = '{"version": 1, "x": "caf\u00e9"}'.encode("latin-1")


@pytest.mark.parametrize("content", [BINARY, LATIN1])
def test_binary_or_non_utf8_init_file_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "init.json"
    bad.write_bytes(content)
    db = tmp_path / "s.sqlite"
    assert cli_main(["search", "run", "--db", str(db), "--preset", "test", "--init", str(bad)]) == 2
    err = one_line_error(capsys)
    assert str(bad) in err and ("binary" in err or "not UTF-8" in err)
    assert not db.exists()
