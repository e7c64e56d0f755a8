"""Try the bad inputs of issue 22 against the CLI and the Python API, and classify what each one does.

    python -m fusedgate.bench.bad_inputs --out DIR            # writes DIR/bad_inputs.md, prints the counts
    python -m fusedgate.bench.bad_inputs --out DIR --only train --timeout 30

Every probe runs in its own subprocess (its own session, so a hung search's workers are killed with it), in its
own folder under ``DIR/work``, under a wall-clock timeout and an address-space cap (``RLIMIT_AS``). Its outcome is

    clean error        exit 2 (or the command's documented answer, e.g. ``spec validate``'s 1), one stderr line
    handled            exit 0 and the expected behaviour (a text in the output, or a file written)
    hang               the timeout ran out
    runaway            the memory cap was hit (MemoryError, bad_alloc, killed)
    traceback          a Python traceback on stderr
    messy error        a non-zero exit with several stderr lines (a warning before the error, a multi-line message)
    silent acceptance  exit 0 where an error was due, or without the expected behaviour

Probes owned by other branches (FusedGate's param-group numbers, OptBrain's ``.npz`` ranges, the search archive's
stored config) are kept and marked in the ``owner`` column. The fixtures (a real FIFO, ``/dev/zero``, folders,
binary and non-UTF-8 files, a real 2-step checkpoint and its damaged copies, damaged archives) are made in
``DIR/work/fixtures`` first.
"""

from __future__ import annotations

import collections
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fusedgate.argtypes import int_in
from fusedgate.bench.bad_input_fixtures import Fixtures, make_fixtures
from fusedgate.bench.bad_input_probes import Probe, all_probes
from fusedgate.cli import OneLineErrorParser, shorten
from fusedgate.files import check_writable_folder, markdown_table, write_atomic

VERDICTS = ("clean error", "handled", "hang", "runaway", "traceback", "messy error", "silent acceptance")
MEMORY_SIGNS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory", "std::bad_alloc")
# runs each API probe's code. A validation error (ValueError, TypeError, OSError or one of fusedgate's own errors)
# is one stderr line "Type: message" and exit code 2; the probe's own assert failing means the bad value was
# accepted (exit 0); any other exception (ZeroDivisionError, IndexError, ...) is a crash: its traceback
API_RUNNER = """
import sys
code = sys.argv[1]
try:
    exec(compile(code, "<probe>", "exec"), {"__name__": "probe"})
except AssertionError as exc:
    print(f"accepted, and then: {exc}")
    sys.exit(0)
except (ValueError, TypeError, OSError) as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(2)
except Exception as exc:
    if not type(exc).__module__.startswith("fusedgate"):
        raise
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(2)
print("accepted")
"""


@dataclass(frozen=True)
class Settings:
    out: Path
    timeout_s: float
    memory_bytes: int
    only: str | None


@dataclass(frozen=True)
class Outcome:
    probe: Probe
    verdict: str
    code: int | None
    detail: str


def _limit_memory(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def _argv(probe: Probe) -> list[str]:
    if probe.code is not None:
        return [sys.executable, "-c", API_RUNNER, probe.code]
    args = list(probe.argv)
    return [sys.executable, *args] if args[0] == "-m" else [sys.executable, "-m", "fusedgate", *args]


def run_probe(probe: Probe, fixtures: Fixtures, cwd: Path, settings: Settings) -> Outcome:
    """Run one probe in its own session under the timeout and the memory cap, and classify it."""
    cwd.mkdir(parents=True, exist_ok=True)
    probe = probe.substituted(fixtures.names())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # Python's default warning filters: what a user sees
    proc = subprocess.Popen(_argv(probe), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", env=env, start_new_session=True,
                            preexec_fn=_limit_memory(settings.memory_bytes))
    try:
        out, err = proc.communicate(timeout=settings.timeout_s)
    except subprocess.TimeoutExpired:
        _kill_session(proc)
        out, err = proc.communicate()
        return Outcome(probe, "hang", None, f"no exit after {settings.timeout_s:g} s; {_first_line(err)}")
    _kill_session(proc)  # workers a finished command left behind
    return classify(probe, proc.returncode, out, err, cwd)


def _kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return shorten(lines[-1] if lines and "Traceback" in text else (lines[0] if lines else ""), 160)


def classify(probe: Probe, code: int, out: str, err: str, cwd: Path) -> Outcome:
    """The verdict of a finished probe (see the module docstring)."""
    lines = [line for line in err.splitlines() if line.strip()]
    detail = _first_line(err) or shorten(out.strip().splitlines()[-1] if out.strip() else "", 160)
    if any(sign in err for sign in MEMORY_SIGNS) or code in (-signal.SIGKILL, 137):
        return Outcome(probe, "runaway", code, detail)
    if "Traceback (most recent call last)" in err:
        return Outcome(probe, "traceback", code, detail)
    if code == 0:
        ok = probe.expect == "ok" and probe.behaves(out + err, cwd)
        return Outcome(probe, "handled" if ok else "silent acceptance", code, detail)
    if len(lines) == 1 and code in probe.codes:
        return Outcome(probe, "clean error", code, detail)
    return Outcome(probe, "messy error", code, detail)


def write_table(outcomes: list[Outcome], path: Path) -> None:
    counts = collections.Counter(o.verdict for o in outcomes)
    rows = [[i + 1, o.probe.area, o.probe.name, o.probe.expect, o.verdict, "" if o.code is None else o.code,
             o.probe.owner, o.detail] for i, o in enumerate(outcomes)]
    summary = ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
    text = (f"# Bad inputs: {len(outcomes)} tried\n\n{summary}\n\n(`python -m fusedgate.bench.bad_inputs`; "
            "owner: where the fix belongs when it is not the CLI's)\n\n"
            + markdown_table(["#", "area", "input", "expected", "outcome", "exit", "owner", "stderr / output"], rows)
            + "\n")
    write_atomic(path, text)


def parse_args(argv: list[str] | None) -> Settings:
    parser = OneLineErrorParser(prog="python -m fusedgate.bench.bad_inputs", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for bad_inputs.md and the work files")
    parser.add_argument("--timeout", type=int_in(1, 3600), default=60, help="seconds per probe (default 60)")
    parser.add_argument("--memory-mib", type=int_in(512, 1 << 20), default=4000,
                        help="address-space cap per probe in MiB (default 4000)")
    parser.add_argument("--only", default=None,
                        help="comma-separated texts: run the probes whose area or name contains one (default all)")
    args = parser.parse_args(argv)
    return Settings(args.out, float(args.timeout), args.memory_mib << 20, args.only)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        check_writable_folder(settings.out)
    except OSError as exc:
        print(f"bad_inputs: error: {exc}", file=sys.stderr)
        return 2
    work = settings.out.resolve() / "work"
    fixtures = make_fixtures(work / "fixtures")
    wanted = [w for w in (settings.only or "").split(",") if w]
    probes = [p for p in all_probes() if not wanted or any(w in f"{p.area} {p.name}" for w in wanted)]
    outcomes = []
    for i, probe in enumerate(probes):
        outcome = run_probe(probe, fixtures, work / f"probe-{i + 1:03d}", settings)
        outcomes.append(outcome)
        print(f"[{i + 1}/{len(probes)}] {outcome.verdict:<17} {probe.area}: {probe.name}", file=sys.stderr, flush=True)
    write_table(outcomes, settings.out / "bad_inputs.md")
    counts = collections.Counter(o.verdict for o in outcomes)
    print(f"{len(outcomes)} bad inputs tried: " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS))
    for o in outcomes:
        if o.verdict not in ("clean error", "handled"):
            print(f"  {o.verdict}: {o.probe.area}: {o.probe.name}{f' [{o.probe.owner}]' if o.probe.owner else ''}"
                  f" — {o.detail}")
    print(f"wrote {settings.out / 'bad_inputs.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
