import os
import sysconfig
import tempfile
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Keep CPU numerics reproducible and leave a core for the rest of the machine."""
    torch.set_num_threads(1)
    yield


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: a tensor-level relative difference that tiny entries cannot blow up."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    """1 MB of this Python's stdlib source in one file: real text the trainer loads in milliseconds."""
    root = Path(sysconfig.get_paths()["stdlib"])
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(b"".join(p.read_bytes() for p in sorted(root.glob("*.py")))[:1_000_000])
    return str(path)


def _can_create_file_in(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no file can be created in: a ``chmod 555`` folder, or, for root (who writes into those
    anyway), ``/sys``, where nobody can create a regular file. Skips when neither works."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not _can_create_file_in(folder):
            yield folder
        elif os.path.isdir("/sys") and not _can_create_file_in(Path("/sys")):
            yield Path("/sys")
        else:
            pytest.skip("no read-only folder available to this user")
    finally:
        folder.chmod(0o755)


@pytest.fixture(scope="session")
def finished_test_run(tmp_path_factory) -> Path:
    """The run folder of a finished 3-step baseline run of the ``test`` preset (a real checkpoint)."""
    from fusedgate.cli import main

    out = tmp_path_factory.mktemp("finished-test-run") / "run"
    assert main(["train", "--preset", "test", "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    return out


def count_evaluations(db: str) -> int:
    """Finished evaluations in a search archive another process is writing (0 while it cannot be read)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
