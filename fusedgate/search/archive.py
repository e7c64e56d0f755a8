"""The search archive: one SQLite file (WAL, real transactions) holding everything a search did.

Tables
    meta          key/value: schema_version, the search config (JSON), created_at
    specs         content hash -> spec JSON
    candidates    one row per distinct spec the search proposed: generation, operator, origin
    lineage       (child, parent) edges
    population    (generation, candidate, role): who took part in each generation (child or elite)
    evaluations   one row per finished training run, unique by job key (optimizer, spec, preset, steps,
                  seed, corpus): status, final val bpb, throughput, the val/train curves, gate trajectory
    job_starts    one row each time a job is handed to an executor (proves nothing is re-run)
    rejections    children that failed preflight or could not be produced, with the reason

Every finished evaluation is committed in its own transaction the moment it arrives, so a search
killed at any point loses only runs that were still in flight. Evaluations are inserted with a
plain INSERT on a UNIQUE job key: running a finished job twice would be an error, never a silent
overwrite.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE specs (hash TEXT PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE candidates (
    id INTEGER PRIMARY KEY, spec_hash TEXT NOT NULL UNIQUE REFERENCES specs(hash),
    generation INTEGER NOT NULL, operator TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE lineage (
    child_id INTEGER NOT NULL REFERENCES candidates(id), parent_id INTEGER NOT NULL REFERENCES candidates(id),
    PRIMARY KEY (child_id, parent_id));
CREATE TABLE population (
    generation INTEGER NOT NULL, candidate_id INTEGER NOT NULL REFERENCES candidates(id), role TEXT NOT NULL,
    PRIMARY KEY (generation, candidate_id));
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY, job_key TEXT NOT NULL UNIQUE, optimizer TEXT NOT NULL, spec_hash TEXT,
    preset TEXT NOT NULL, steps INTEGER NOT NULL, seed INTEGER NOT NULL, data TEXT, stage TEXT NOT NULL,
    lr_scale REAL NOT NULL DEFAULT 1.0, final_eval_tokens INTEGER,
    status TEXT NOT NULL, final_val_bpb REAL, final_val_se REAL, tokens_per_s REAL, wall_s REAL, total_s REAL,
    corpus_fingerprint TEXT,
    val_curve TEXT, train_curve TEXT, gate_trajectory TEXT, final_val_batches TEXT, error TEXT, worker TEXT,
    finished_at REAL NOT NULL);
CREATE TABLE job_starts (id INTEGER PRIMARY KEY, job_key TEXT NOT NULL, started_at REAL NOT NULL, pid INTEGER);
CREATE TABLE rejections (
    id INTEGER PRIMARY KEY, generation INTEGER, parent_hash TEXT, source TEXT NOT NULL, reason TEXT NOT NULL,
    output TEXT, created_at REAL NOT NULL);
"""

_JSON_COLUMNS = ("val_curve", "train_curve", "gate_trajectory", "final_val_batches")


class ArchiveError(RuntimeError):
    """The archive cannot be created, opened or written (one-line message for the user)."""


class Archive:
    """A search archive on disk. Use ``Archive.create`` for a new search, ``Archive.open`` to resume."""

    def __init__(self, path: str, conn: sqlite3.Connection):
        self.path, self.conn = path, conn

    # ------------------------------------------------------------------ open / create
    @classmethod
    def create(cls, path: str, config) -> Archive:
        """A new archive holding ``config`` (a dict, or a ``SearchConfig``, stored as its dict)."""
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        if os.path.exists(path):
            raise ArchiveError(f"{path} already exists (use `fusedgate search resume --db {path}` to continue it)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ArchiveError(f"directory {parent} does not exist")
        try:  # probe: a read-only location fails here with its own reason, not inside SQLite
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            os.unlink(path)
        except OSError as exc:
            raise ArchiveError(f"cannot create the archive {path}: {exc.strerror} (choose a writable --db)") from None
        archive = cls(path, _connect(path))
        with archive.transaction() as conn:
            for statement in SCHEMA.strip().split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("created_at", str(time.time())),
                    ("config", json.dumps(config, sort_keys=True)),
                ],
            )
        return archive

    @classmethod
    def open(cls, path: str) -> Archive:
        if not os.path.isfile(path):
            raise ArchiveError(f"{path}: no such archive")
        if not os.access(path, os.R_OK):
            raise ArchiveError(f"{path}: permission denied")
        conn = _connect(path)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in tables:
                raise ArchiveError(f"{path} is not a fusedgate search archive (no meta table)")
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            check = conn.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "malformed" in str(exc):
                raise ArchiveError(f"{path} is corrupted ({exc}); restore it from a backup") from None
            raise ArchiveError(f"{path} is not a fusedgate search archive ({exc})") from None
        except ArchiveError:
            conn.close()
            raise
        if check != [("ok",)]:
            conn.close()
            raise ArchiveError(f"{path} is corrupted (SQLite quick_check: {check[0][0]}); restore it from a backup")
        if row is None or row[0] != str(SCHEMA_VERSION):
            conn.close()
            found = "none" if row is None else row[0]
            raise ArchiveError(
                f"{path} has archive schema version {found}; this fusedgate reads version "
                f"{SCHEMA_VERSION} (start a new archive, or use the fusedgate that wrote it)"
            )
        return cls(path, conn)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE … COMMIT; ROLLBACK on any error. A full disk becomes an ArchiveError."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException as exc:
            if self.conn.in_transaction:  # SQLite may already have rolled back (e.g. on SQLITE_FULL)
                self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                if "full" in str(exc).lower():
                    raise ArchiveError(
                        f"{self.path}: disk full ({exc}); every evaluation committed before is kept, "
                        f"free some space and resume"
                    ) from None
                raise ArchiveError(f"{self.path}: {exc}") from None
            raise

    # ------------------------------------------------------------------ meta
    def config(self) -> dict:
        return json.loads(self.get_meta("config"))

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ candidates and lineage
    def add_generation(self, generation: int, children: list[dict], elites: list[int]) -> list[int]:
        """Insert a generation's new children (dicts: spec, operator, parents = parent spec hashes, which
        must be archived already or come earlier in ``children``) and its elites, atomically."""
        ids = []
        now = time.time()
        with self.transaction() as conn:
            for child in children:
                spec = child["spec"]
                h = spec.content_hash()
                conn.execute("INSERT OR IGNORE INTO specs VALUES (?, ?)", (h, spec.to_json(indent=None)))
                cur = conn.execute(
                    "INSERT INTO candidates (spec_hash, generation, operator, created_at) VALUES (?, ?, ?, ?)",
                    (h, generation, child["operator"], now),
                )
                cid = cur.lastrowid
                for parent_hash in child.get("parents", ()):
                    parent_id = conn.execute("SELECT id FROM candidates WHERE spec_hash=?", (parent_hash,)).fetchone()
                    if parent_id is None:
                        raise ArchiveError(f"parent spec {parent_hash} of a child is not in the archive")
                    conn.execute("INSERT INTO lineage VALUES (?, ?)", (cid, parent_id[0]))
                conn.execute("INSERT INTO population VALUES (?, ?, 'child')", (generation, cid))
                ids.append(cid)
            conn.executemany("INSERT INTO population VALUES (?, ?, 'elite')", [(generation, e) for e in elites])
        return ids

    def population(self, generation: int) -> list[dict]:
        rows = self.conn.execute(
            "SELECT c.id, c.spec_hash, c.generation, c.operator, p.role, s.json FROM population p "
            "JOIN candidates c ON c.id = p.candidate_id JOIN specs s ON s.hash = c.spec_hash "
            "WHERE p.generation=? ORDER BY c.id",
            (generation,),
        ).fetchall()
        return [self._candidate(r[:4] + (r[5],), role=r[4]) for r in rows]

    def generations(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT generation FROM population ORDER BY generation")]

    def candidates(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT c.id, c.spec_hash, c.generation, c.operator, s.json FROM candidates c "
            "JOIN specs s ON s.hash = c.spec_hash ORDER BY c.id"
        ).fetchall()
        return [self._candidate(r) for r in rows]

    def has_spec(self, spec_hash: str) -> bool:
        return self.conn.execute("SELECT 1 FROM candidates WHERE spec_hash=?", (spec_hash,)).fetchone() is not None

    def parents(self, candidate_id: int) -> list[int]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT parent_id FROM lineage WHERE child_id=? ORDER BY parent_id", (candidate_id,)
            )
        ]

    def _candidate(self, row, role: str | None = None) -> dict:
        from fusedgate.spec import GateSpec

        cid, h, gen, op, spec_json = row
        out = {
            "id": cid,
            "hash": h,
            "generation": gen,
            "operator": op,
            "spec": GateSpec.from_json(spec_json),
            "parents": self.parents(cid),
        }
        if role is not None:
            out["role"] = role
        return out

    # ------------------------------------------------------------------ evaluations
    def record_start(self, job_key: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO job_starts (job_key, started_at, pid) VALUES (?, ?, ?)",
                (job_key, time.time(), os.getpid()),
            )

    def add_evaluation(self, job: dict, result: dict) -> int:
        """Commit one finished run (its own transaction). Raises if the job key is already there."""
        row = {k: job[k] for k in ("job_key", "optimizer", "spec_hash", "preset", "steps", "seed", "data", "stage")}
        row["lr_scale"] = job.get("lr_scale", 1.0)
        row["final_eval_tokens"] = job.get("final_eval_tokens")
        for k in (
            "status",
            "final_val_bpb",
            "final_val_se",
            "tokens_per_s",
            "wall_s",
            "total_s",
            "corpus_fingerprint",
            "error",
            "worker",
        ):
            row[k] = result.get(k)
        for k in _JSON_COLUMNS:
            row[k] = json.dumps(result.get(k) or [])
        row["finished_at"] = time.time()
        cols = ", ".join(row)
        with self.transaction() as conn:
            cur = conn.execute(
                f"INSERT INTO evaluations ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
            )
        return cur.lastrowid

    def import_evaluations(self, other_path: str) -> int:
        """Copy the finished evaluations of another archive whose job keys this one lacks (one
        transaction). The job key hashes everything that determines a run (optimizer, spec, preset,
        steps, seed, lr scale, evaluation sizes, corpus), so a copied run is the run this archive would
        have done: e.g. a noise measurement's baselines serve a search at the same horizon."""
        other = Archive.open(other_path)
        try:
            cur = other.conn.execute("SELECT * FROM evaluations WHERE status='ok' ORDER BY id")
            cols = [d[0] for d in cur.description if d[0] != "id"]
            rows = [r[1:] for r in cur.fetchall()]
        finally:
            other.close()
        have = {r[0] for r in self.conn.execute("SELECT job_key FROM evaluations")}
        new = [r for r in rows if r[cols.index("job_key")] not in have]
        with self.transaction() as conn:
            conn.executemany(
                f"INSERT INTO evaluations ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", new
            )
        return len(new)

    def evaluation(self, job_key: str) -> dict | None:
        cur = self.conn.execute("SELECT * FROM evaluations WHERE job_key=?", (job_key,))
        row = cur.fetchone()
        return None if row is None else _eval_row(cur, row)

    def evaluations(self) -> list[dict]:
        cur = self.conn.execute("SELECT * FROM evaluations ORDER BY id")
        return [_eval_row(cur, r) for r in cur.fetchall()]

    def job_starts(self) -> list[dict]:
        return [
            {"id": r[0], "job_key": r[1], "started_at": r[2], "pid": r[3]}
            for r in self.conn.execute("SELECT * FROM job_starts ORDER BY id")
        ]

    # ------------------------------------------------------------------ rejections
    def add_rejection(
        self, generation: int | None, parent_hash: str | None, source: str, reason: str, output: str = ""
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO rejections (generation, parent_hash, source, reason, output, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (generation, parent_hash, source, reason, output[:20000], time.time()),
            )

    def rejections(self) -> list[dict]:
        cur = self.conn.execute("SELECT * FROM rejections ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def _connect(path: str) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        raise ArchiveError(f"{path} is not a fusedgate search archive ({exc})") from None
    return conn


def _eval_row(cur, row) -> dict:
    out = dict(zip([d[0] for d in cur.description], row))
    for k in _JSON_COLUMNS:
        out[k] = json.loads(out[k]) if out[k] else []
    return out
