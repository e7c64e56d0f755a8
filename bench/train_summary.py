"""The end-to-end numbers of the GPU check's training stage, read back from each run's ``metrics.jsonl``.

The stage trains each ``--compare`` entry as its own ``fusedgate train`` process (one timeout each) into
``<runs>/<entry>/`` (``:`` written as ``-``). A finished run has a ``result`` record, whose tokens/s and final
val bpb are the trainer's own. A run that was stopped (a timeout, a crash) has none: its tokens/s is then
Σ tokens / Σ step time over the ``train`` records after the first step (the trainer's rule: the first step
holds the warm-up and compilation), and its val bpb is that of its last ``val`` record, at an earlier step
than the finished runs' (the table says so).
"""

from __future__ import annotations

import json
from pathlib import Path

from fusedgate.files import markdown_table

METRICS = "metrics.jsonl"


def entry_label(folder_name: str) -> str:
    """``fusedgate-nanochat`` → ``fusedgate:nanochat`` (the inverse of the run folder's name)."""
    head, _, tail = folder_name.partition("-")
    return f"{head}:{tail}" if tail else head


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut off by a killed process
            continue
    return out


def _timed_tokens_per_s(train: list[dict]) -> float:
    timed = train[1:] if len(train) > 1 else train
    seconds = sum(r["step_s"] for r in timed)
    return sum(r["tokens_per_s"] * r["step_s"] for r in timed) / seconds if seconds > 0 else 0.0


def summarise_run(folder: Path) -> dict:
    """One run's summary: label, steps, tokens_per_s, final_val_bpb, val_curve, status."""
    records = _records(folder / METRICS) if (folder / METRICS).is_file() else []
    train = [r for r in records if r.get("type") == "train"]
    val = [{"step": r["step"], "val_bpb": r["val_bpb"]} for r in records if r.get("type") == "val"]
    result = next((r for r in records if r.get("type") == "result"), None)
    summary = {"label": entry_label(folder.name), "val_curve": val}
    if result is not None:
        summary.update(steps=result["steps"], tokens_per_s=result["tokens_per_s"], wall_s=result["wall_s"],
                       final_val_bpb=result["final_val_bpb"], final_step=val[-1]["step"] if val else None,
                       status="diverged" if result["diverged"] else (result.get("message") or "ok"))
        return summary
    summary.update(steps=len(train), tokens_per_s=_timed_tokens_per_s(train),
                   wall_s=sum(r["step_s"] for r in train), final_val_bpb=val[-1]["val_bpb"] if val else None,
                   final_step=val[-1]["step"] if val else None,
                   status="no metrics" if not records else f"stopped after {len(train)} steps (no result record)")
    return summary


def summarise(runs_dir: Path, entries: list[str]) -> list[dict]:
    """The summaries of the entries' run folders under ``runs_dir``, in the entries' order."""
    return [summarise_run(runs_dir / entry.replace(":", "-")) for entry in entries]


def _number(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(runs: list[dict], title: str) -> str:
    """A table of the runs: steps, tokens/s and its ratio to the baseline, final val bpb and its Δ."""
    base = next((r for r in runs if r["label"] == "baseline"), None)
    rows = []
    for r in runs:
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base and base.get("tokens_per_s") else None
        delta = (r["final_val_bpb"] - base["final_val_bpb"]
                 if base and None not in (r["final_val_bpb"], base["final_val_bpb"]) else None)
        rows.append([r["label"], r["steps"], f"{r['tokens_per_s']:,.0f}", _number(ratio, 3),
                     _number(r["final_val_bpb"], 4), r["final_step"], _number(delta, 4), r["status"]])
    headers = ["run", "steps", "tokens/s", "÷ baseline", "final val bpb", "at step", "Δ bpb vs baseline", "status"]
    return f"# {title}\n\n" + markdown_table(headers, rows) + "\n"
