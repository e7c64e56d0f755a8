"""The SQLite archive: transactions, versioning, no silent overwrite, a full disk, bad files; CLI bad input."""

import sqlite3

import pytest

from fusedgate.cli import main as cli_main
from fusedgate.search.archive import SCHEMA_VERSION, Archive, ArchiveError
from fusedgate.search.evaluate import make_job
from fusedgate.search.tournament import default_config, gated_muon
from fusedgate.spec import GateSpec


def result(bpb=3.0):
    return {
        "status": "ok",
        "final_val_bpb": bpb,
        "tokens_per_s": 100.0,
        "wall_s": 1.0,
        "corpus_fingerprint": "c",
        "val_curve": [{"step": 0, "val_bpb": 5.0}, {"step": 4, "val_bpb": bpb}],
        "train_curve": [{"step": 0, "loss": 3.0, "wall_s": 0.1}],
        "gate_trajectory": [],
    }


def job(seed=0, spec=None):
    return make_job("fusedgate", spec or GateSpec.muon(), "test", 4, seed, None, "c", "screen")


def test_roundtrip_and_no_duplicate_evaluation(tmp_path):
    path = str(tmp_path / "a.sqlite")
    archive = Archive.create(path, default_config())
    first = archive.add_evaluation(job(0), result(3.0))
    with pytest.raises(sqlite3.IntegrityError):
        archive.add_evaluation(job(0), result(2.0))  # a finished job is never silently overwritten
    archive.close()
    archive = Archive.open(path)
    row = archive.evaluation(job(0)["job_key"])
    assert row["id"] == first and row["final_val_bpb"] == 3.0 and row["val_curve"][1]["val_bpb"] == 3.0
    assert archive.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ArchiveError, match="already exists"):
        Archive.create(path, default_config())


def test_generation_insert_is_atomic(tmp_path):
    archive = Archive.create(str(tmp_path / "a.sqlite"), default_config())
    seed = {"spec": gated_muon(), "operator": "seed", "parents": []}
    child = {
        "spec": gated_muon().replace(gate_bias=1.0),
        "operator": "perturb_bias",
        "parents": [gated_muon().content_hash()],
    }
    ids = archive.add_generation(0, [seed, child], [])
    assert archive.parents(ids[1]) == [ids[0]]
    orphan = {"spec": GateSpec.gated().replace(gate_bias=3.0), "operator": "x", "parents": ["0" * 16]}
    fresh = {"spec": GateSpec.gated(), "operator": "seed", "parents": []}
    with pytest.raises(ArchiveError, match="not in the archive"):
        archive.add_generation(1, [fresh, orphan], [ids[0]])
    assert len(archive.candidates()) == 2 and archive.population(1) == []  # nothing of generation 1 kept


def test_full_disk_keeps_committed_rows(tmp_path):
    path = str(tmp_path / "a.sqlite")
    archive = Archive.create(path, default_config())
    archive.add_evaluation(job(0), result())
    pages = archive.conn.execute("PRAGMA page_count").fetchone()[0]
    archive.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk full" (SQLITE_FULL)
    big = result()
    big["train_curve"] = [{"step": i, "loss": 1.0, "wall_s": float(i)} for i in range(20000)]
    with pytest.raises(ArchiveError, match="disk full"):
        archive.add_evaluation(job(1), big)
    archive.close()
    archive = Archive.open(path)
    assert [e["seed"] for e in archive.evaluations()] == [0]


def test_incompatible_or_foreign_files(tmp_path):
    path = str(tmp_path / "old.sqlite")
    Archive.create(path, default_config()).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ArchiveError, match=f"schema version 999; this fusedgate reads version {SCHEMA_VERSION}"):
        Archive.open(path)
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all " * 100)
    with pytest.raises(ArchiveError, match="not a fusedgate search archive"):
        Archive.open(str(junk))
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ArchiveError, match="not a fusedgate search archive"):
        Archive.open(str(other))


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "gate_bias": 99}')
    db = str(tmp_path / "s.sqlite")
    assert cli_main(["search", "run", "--db", db, "--preset", "test", "--init", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "gate_bias=99" in err and "outside its bound" in err
    assert not (tmp_path / "s.sqlite").exists()  # nothing written on a user mistake
    assert cli_main(["search", "run", "--db", db, "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert cli_main(["search", "run", "--db", db, "--preset", "test", "--operators", "frobnicate"]) == 2
    assert "unknown operator" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_text("x" * 5000)
    assert cli_main(["search", "resume", "--db", str(junk)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a fusedgate search archive" in err
    assert cli_main(["search", "report", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "no such archive" in capsys.readouterr().err


def test_import_evaluations_copies_only_missing_finished_runs(tmp_path):
    src = Archive.create(str(tmp_path / "src.sqlite"), default_config())
    src.add_evaluation(job(0), result(3.0))
    src.add_evaluation(job(1), result(2.5))
    src.add_evaluation(job(2), {**result(), "status": "failed", "final_val_bpb": None})
    src.close()
    dst = Archive.create(str(tmp_path / "dst.sqlite"), default_config())
    dst.add_evaluation(job(1), result(2.7))  # its own run of the same job wins
    assert dst.import_evaluations(str(tmp_path / "src.sqlite")) == 1
    assert dst.evaluation(job(0)["job_key"])["final_val_bpb"] == 3.0
    assert dst.evaluation(job(1)["job_key"])["final_val_bpb"] == 2.7
    assert dst.evaluation(job(2)["job_key"]) is None  # failed runs are not copied
    assert dst.evaluation(job(0)["job_key"])["val_curve"] == result(3.0)["val_curve"]
    assert dst.import_evaluations(str(tmp_path / "src.sqlite")) == 0
    dst.close()


def test_a_resume_at_another_commit_keeps_the_start_commit_and_lists_every_one(tmp_path):
    from fusedgate.search.tournament import record_code_commit

    archive = Archive.create(str(tmp_path / "a.sqlite"), default_config())
    notes = []
    for commit in ("aaa", "aaa", "bbb", "bbb", "ccc"):
        record_code_commit(archive, commit, notes.append)
    assert archive.get_meta("code_commit") == "aaa"
    assert archive.get_meta("code_commits") == "aaa bbb ccc"
    assert notes == ["note: this archive was started at code commit aaa, resumed at bbb",
                     "note: this archive was started at code commit aaa, resumed at ccc"]
    archive.close()
