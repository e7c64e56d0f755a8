"""SearchConfig: one validator for the CLI and for every stored config a resume reads."""

import json
import sqlite3

import pytest

from fusedgate.cli import main as cli_main
from fusedgate.search.archive import Archive
from fusedgate.search.config import MAX_SEEDS, ConfigError, SearchConfig


def test_round_trip_and_defaults():
    cfg = SearchConfig()
    assert cfg.horizons == (300, 600) and len(cfg.confirm_seeds) == 8 and cfg.transfer_preset == "tiny-d4"
    assert SearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("field, value, words", [
    ("population", -3, "population=-3: must be in [1, 1000]"),
    ("generations", 1e9, "generations=1000000000.0: expected an integer"),
    ("generations", True, "generations=True: expected an integer"),
    ("survivors", 9, "survivors=9: must be in [1, 6]"),
    ("screen_steps", 0, "screen_steps=0"),
    ("horizons", [300, 300], "repeated"),
    ("confirm_seeds", list(range(MAX_SEEDS + 1)), f"at most {MAX_SEEDS}"),
    ("confirm_seeds", [-1], "confirm_seeds=-1"),
    ("lr_scales", [0.7, 1.4], "must include 1"),
    ("lr_scales", [float("nan"), 1.0], "finite"),
    ("min_effect", float("nan"), "min_effect=nan"),
    ("ladder", [0.8, 0.9], "must include 1"),
    ("preset", "huge", "unknown preset 'huge'"),
    ("operators", ["frobnicate"], "unknown operator(s) frobnicate"),
    ("init_specs", ['{"gate_bias": 99}'], "init_specs[0]"),
])
def test_every_bound_names_its_field(field, value, words):
    stored = {**SearchConfig().to_dict(), field: value}
    with pytest.raises(ConfigError) as exc:
        SearchConfig.from_dict(stored)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_fields_are_refused():
    with pytest.raises(ConfigError, match="unknown search config field"):
        SearchConfig.from_dict({**SearchConfig().to_dict(), "confirm_steps": 300})


def tamper(db: str, **changes) -> None:
    conn = sqlite3.connect(db)
    stored = json.loads(conn.execute("SELECT value FROM meta WHERE key='config'").fetchone()[0])
    stored.update(changes)
    conn.execute("UPDATE meta SET value=? WHERE key='config'", (json.dumps(stored),))
    conn.commit()
    conn.close()


def test_resume_validates_the_stored_config_before_running_anything(tmp_path, capsys, corpus):
    db = str(tmp_path / "s.sqlite")
    Archive.create(db, SearchConfig(preset="test", data=corpus)).close()
    tamper(db, population=-3, generations=1e9)
    assert cli_main(["search", "resume", "--db", db, "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "generations=1000000000.0" in err
    archive = Archive.open(db)
    assert archive.evaluations() == [] and archive.generations() == []
    archive.close()


def test_cli_refuses_huge_seed_ranges_before_allocating(tmp_path, capsys):
    db = str(tmp_path / "s.sqlite")
    with pytest.raises(SystemExit) as exc:   # argparse's usage error, before any list is built
        cli_main(["search", "run", "--db", db, "--preset", "test", "--seeds", "0-1000000000"])
    assert exc.value.code == 2 and "at most 1,000 values" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["search", "run", "--db", db, "--preset", "test", "--min-effect", "nan"])
    assert exc.value.code == 2 and "--min-effect: expected a finite number" in capsys.readouterr().err
