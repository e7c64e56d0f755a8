"""The GPU check's report files: ``bench.json``, ``bench.md`` (the issue's targets first), ``bench.png``,
``train.json`` and ``train.md``, each written atomically (a reader never sees half a file).

The targets table lists every target of issue 18 with its measured value (the worst row), the goal and
met / missed / not measured: the step targets from ``fusedgate.bench.targets.evaluate`` over the bench rows,
the end-to-end tokens/s from ``training_targets`` over the training runs. ``bench.png`` needs matplotlib; when
it is missing the PNG is left out and ``bench.md`` says so, and no number is lost.
"""

from __future__ import annotations

import json
from pathlib import Path

from fusedgate.bench import report, train_summary
from fusedgate.bench.suite import add_relative_numbers
from fusedgate.bench.targets import evaluate, training_targets
from fusedgate.files import markdown_table, write_atomic

TRAIN_TITLE = "End-to-end training: preset small, shortened"
DRY_RUN_NOTE = ("**Dry run** (CPU, tiny sizes, Triton's interpreter, the trainer's test preset): a check that the "
                "script runs end to end. No number here measures anything, and no target status means anything.")


def record_line(record: dict) -> str:
    """One printed line per measurement."""
    what = f"{record['contestant']} {record['case']} {record['size']} {record['dtype']}: {record['status']}"
    if "median_ms" in record:
        what += f" {record['median_ms']:.4g} ms"
    return what + (f" ({record['reason']})" if record.get("reason") else "")


def load_json(path: Path):
    """The JSON in ``path``, or None when there is none or it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def targets_markdown(targets: list[dict]) -> str:
    rows = [[t["target"], t.get("measured", ""), t["goal"], t["status"], t["detail"]] for t in targets]
    return markdown_table(["target", "measured", "goal", "status", "detail"], rows)


def bench_markdown(run: dict, runs: list[dict], png_note: str = "") -> str:
    """The targets, the training table (when there are runs), then the benchmark's own tables."""
    targets = run["targets"] + training_targets(runs)
    lines = [f"# GPU check (issue 18): {run['environment']['device']}", ""]
    if run["kind"] == "dry-run":
        lines += [DRY_RUN_NOTE, ""]
    lines += ["## Targets (measured, not asserted)", "", targets_markdown(targets), ""]
    if runs:
        lines += [train_summary.markdown(runs, TRAIN_TITLE).replace("# ", "## ", 1), ""]
    if png_note:
        lines += [png_note, ""]
    return "\n".join(lines) + "\n" + report.markdown(run, with_targets=False)


def _png(run: dict) -> tuple[bytes | None, str]:
    try:
        return report.plot_png(run), ""
    except ImportError as exc:
        return None, f"No bench.png: matplotlib is not importable here ({exc})."


def write_bench(run: dict, out: Path, runs: list[dict], png: bool) -> None:
    """Recompute the relative numbers and targets of ``run``, then write bench.json, bench.md (and bench.png)."""
    if "copy" in run:
        add_relative_numbers(run["results"], run["copy"]["gbps"])
    run["targets"] = evaluate(run["results"])
    image, note = _png(run) if png else (None, "")
    write_atomic(out / "bench.json", json.dumps(run, indent=1) + "\n")
    if "copy" in run:
        write_atomic(out / "bench.md", bench_markdown(run, runs, note))
    if image is not None:
        write_atomic(out / "bench.png", image)


def final_report(out: Path, runs_dir: Path | None, entries: list[str]) -> int:
    """train.json and train.md from the run folders, then bench.md and bench.png with the training targets.
    Prints the targets table (the device call returns the end of the output)."""
    runs = train_summary.summarise(runs_dir, entries) if runs_dir is not None and runs_dir.is_dir() else []
    if runs:
        write_atomic(out / "train.json", json.dumps({"runs": runs}, indent=1) + "\n")
        write_atomic(out / "train.md", train_summary.markdown(runs, TRAIN_TITLE)
                     + "\n" + targets_markdown(training_targets(runs)) + "\n")
    run = load_json(out / "bench.json")
    if run is not None and "copy" in run:
        write_bench(run, out, runs, png=True)
        print(targets_markdown(run["targets"] + training_targets(runs)))
    else:
        print("no bench.json with a copy bandwidth: the bench stage wrote nothing usable")
        if runs:
            print(targets_markdown(training_targets(runs)))
    return 0
