"""The files ``fusedgate.bench.bad_inputs`` feeds to the commands: special files, damaged files and damaged copies
of real artefacts (a 2-step checkpoint trained here, the committed search archive and bench results, a saved
OptBrain). ``Fixtures.names()`` maps each to its path, for the ``$name`` placeholders of the probes."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_RESULTS = Path(__file__).resolve().parent / "results"
READ_ONLY = "/sys/fusedgate-bad-inputs"  # nobody, root included, can create a file under /sys


@dataclass(frozen=True)
class Fixtures:
    root: Path

    def names(self) -> dict[str, str]:
        """placeholder -> path: every file in ``root`` by its stem (``$fifo``, ``$ckpt_raw``...), and a few more."""
        names = {p.name.split(".")[0]: str(p) for p in self.root.iterdir()}
        return {**names, "root": str(self.root), "read_only": READ_ONLY, "zero": "/dev/zero", "null": "/dev/null",
                "urandom": "/dev/urandom", "missing": str(self.root / "no-such-file.json"), "py": sys.executable,
                "run": str(self.root / "run")}


def _write(root: Path, name: str, data: bytes | str) -> None:
    path = root / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _special(root: Path) -> None:
    if not (root / "fifo").exists():
        os.mkfifo(root / "fifo")
    (root / "folder").mkdir(exist_ok=True)
    for name, target in (("dangling.json", root / "gone"), ("loop.json", root / "loop.json"),
                         ("fifo_link.json", root / "fifo")):
        if not (root / name).is_symlink():
            (root / name).symlink_to(target)
    with open(root / "huge.bin", "wb") as fh:  # sparse: 300 GiB long, no disk used
        fh.truncate(300 << 30)


def _texts(root: Path) -> None:
    _write(root, "empty.json", b"")
    _write(root, "big.json", b" " * (2 << 20))
    _write(root, "binary.bin", bytes(range(256)) * 64)
    _write(root, "latin1.json", '{"version": 2, "note": "d\xe9j\xe0"}'.encode("latin-1"))
    _write(root, "utf16.json", '{"version": 2}'.encode("utf-16"))
    _write(root, "deep.json", "[" * 200_000 + "]" * 200_000)
    _write(root, "latin1_corpus.txt", ("caf\xe9 na\xefve r\xe9sum\xe9 " * 20_000).encode("latin-1"))
    corpus = root / "corpus_with_fifo"
    corpus.mkdir(exist_ok=True)
    (corpus / "a.txt").write_text("def f(x):\n    return x + 1\n" * 4000)
    (corpus / "b.bin").write_bytes(bytes(range(256)) * 100)
    if not (corpus / "pipe").exists():
        os.mkfifo(corpus / "pipe")


def _specs(root: Path) -> None:
    base = '{"version": 2, '
    for name, body in (("spec_nan", '"lr": NaN}'), ("spec_neg_lr", '"lr": -1}'), ("spec_inf", '"lr": Infinity}'),
                       ("spec_bool_ns", '"ns_steps": true}'), ("spec_huge_ns", '"ns_steps": 1' + "0" * 400 + "}"),
                       ("spec_unknown", '"lr_typo": 0.01}'), ("spec_float_ns", '"ns_steps": 5.5}'),
                       ("spec_bad_pole", '"aggressive": {"beta2": 1.5}}')):
        _write(root, f"{name}.json", base + body)
    _write(root, "spec_array.json", "[1, 2, 3]")
    _write(root, "spec_version.json", '{"version": 99}')
    _write(root, "spec_bool_version.json", '{"version": true}')
    _write(root, "init_ok.json", '{"hypergrad": 0.0}')
    for name, body in (("init_nan", '{"explore": NaN}'), ("init_bool", '{"window": true}'), ("init_list", "[1]"),
                       ("init_unknown", '{"bogus": 1}'), ("init_neg", '{"policy_lr": -1}'),
                       ("init_huge", '{"warmup_windows": 1' + "0" * 50 + "}")):
        _write(root, f"{name}.json", body)


def _checkpoints(root: Path) -> None:
    import fractions

    import torch

    run = root / "run"
    if not (run / "checkpoint.pt").exists():
        subprocess.run([sys.executable, "-m", "fusedgate", "train", "--preset", "test", "--steps", "2", "--out",
                        str(run), "--no-progress"], check=True, capture_output=True, env={**os.environ,
                                                                                        "OMP_NUM_THREADS": "1"})
    good = run / "checkpoint.pt"
    _write(root, "ckpt_truncated.pt", good.read_bytes()[:500])
    _write(root, "ckpt_raw.pt", pickle.dumps({"format": "fusedgate.nanochat/1"}, protocol=4))
    _write(root, "ckpt_evil.pt", b"cos\nsystem\n(S'echo pwned > pwned.txt'\ntR.")  # a pickle that runs a shell
    torch.save({"format": "fusedgate.nanochat/1", "x": fractions.Fraction(1, 3)}, root / "ckpt_foreign.pt")
    ckpt = torch.load(good, weights_only=True)
    variants = {"ckpt_shapes": lambda c: c["model_state"].update({next(iter(c["model_state"])): torch.zeros(3, 5)}),
                "ckpt_negstep": lambda c: c.update(step=-1), "ckpt_boolsteps": lambda c: c.update(total_steps=True),
                "ckpt_nokeys": lambda c: c.pop("config"), "ckpt_hugestep": lambda c: c.update(step=10**30)}
    for name, change in variants.items():
        copy = torch.load(good, weights_only=True)
        change(copy)
        torch.save(copy, root / f"{name}.pt")
    del ckpt
    fifo_run = root / "fifo_run"
    fifo_run.mkdir(exist_ok=True)
    if not (fifo_run / "checkpoint.pt").exists():
        os.mkfifo(fifo_run / "checkpoint.pt")
    fifo_log = root / "fifo_metrics_run"  # a good checkpoint beside a metrics log that is a FIFO
    fifo_log.mkdir(exist_ok=True)
    shutil.copy(good, fifo_log / "checkpoint.pt")
    if not (fifo_log / "metrics.jsonl").exists():
        os.mkfifo(fifo_log / "metrics.jsonl")


def _archives(root: Path) -> None:
    from fusedgate.search.archive import Archive
    from fusedgate.search.tournament import default_config

    shutil.copy(REPO_RESULTS / "search" / "search.sqlite", root / "archive_ok.sqlite")
    _write(root, "archive_corrupt.sqlite", b"SQLite format 3\x00" + os.urandom(8192))
    _write(root, "archive_truncated.sqlite", (REPO_RESULTS / "search" / "search.sqlite").read_bytes()[:8192])
    _write(root, "archive_text.sqlite", "not a database\n")
    for name, overrides in (("archive_badconfig", {"population": -3, "generations": 10**9}),
                            ("archive_mutator", {"mutator_cmd": "touch pwned.txt"})):
        path = root / f"{name}.sqlite"
        if not path.exists():   # a valid archive, then its stored config overwritten as a hand edit would
            Archive.create(str(path), default_config(preset="test", confirm_seeds=[0], lr_scales=[1.0],
                                                     screen_steps=2, horizons=[2])).close()
            with sqlite3.connect(path) as conn:
                stored = json.loads(conn.execute("SELECT value FROM meta WHERE key='config'").fetchone()[0])
                conn.execute("UPDATE meta SET value=? WHERE key='config'", (json.dumps({**stored, **overrides}),))
    with sqlite3.connect(root / "archive_nometa.sqlite") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS other (x)")


def _results(root: Path) -> None:
    shutil.copy(REPO_RESULTS / "cpu.json", root / "results_ok.json")
    text = (REPO_RESULTS / "cpu.json").read_text()
    _write(root, "results_truncated.json", text[: len(text) // 2])
    _write(root, "results_array.json", "[]")
    _write(root, "results_empty_object.json", "{}")
    run = json.loads(text)
    run["results"] = "not a list"
    _write(root, "results_wrong_type.json", json.dumps(run))


def _brains(root: Path) -> None:
    import numpy as np

    from fusedgate.brain import OptBrain
    from fusedgate.brain.state_io import read_npz

    OptBrain(None, n_groups=1).save(root / "brain_ok.npz")
    good = read_npz(root / "brain_ok.npz")
    for name, key, value in (("brain_mu_inf", "core.mu", np.inf), ("brain_rng_zero", "core.rng", 0),
                             ("brain_steps_neg", "step_count", -5), ("brain_total_neg", "config.total_steps", -100),
                             ("brain_cycle", "core.cycle_pos", 10**6)):
        arrays = dict(good)
        arrays[key] = np.full_like(arrays[key], value) if arrays[key].ndim else np.array(value)
        np.savez(root / f"{name}.npz", **arrays)
    np.savez(root / "brain_pickle.npz", **{**good, "core.W": np.array([object()], dtype=object)})
    _write(root, "brain_truncated.npz", (root / "brain_ok.npz").read_bytes()[:300])


def make_fixtures(root: Path) -> Fixtures:
    """Make (or reuse) every fixture under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for make in (_special, _texts, _specs, _checkpoints, _archives, _results, _brains):
        make(root)
    return Fixtures(root)
