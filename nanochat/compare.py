"""``--compare``: train several optimizers back to back on the same seed, data and schedule, then
write a table (printed and ``compare.md``), ``compare.json`` and ``compare.png`` into the out dir.

An entry is an optimizer (``baseline``, ``fusedgate``, ``adamw``) or ``fusedgate:SPEC`` with SPEC a preset
name or a spec file (``fusedgate:nanochat``, ``fusedgate:default``); a plain ``fusedgate`` uses the run's
``--spec``. Each run goes to ``<out>/<entry>/`` (``:`` written as ``-``) with its own metrics.jsonl,
checkpoint and plot.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from fusedgate.files import markdown_table, write_atomic
from fusedgate.nanochat.errors import TrainError
from fusedgate.nanochat.plots import plot_runs
from fusedgate.nanochat.train import OPTIMIZERS, TrainConfig, TrainResult, _prepare_out_dir, data_parallel, train
from fusedgate.spec import GateSpec, SpecError


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.{digits}f}"


def table(results: list[TrainResult]) -> str:
    """A markdown table: final val bpb, Δ to the first run, training wall time, tokens/s, steps."""
    ref = results[0].final_val_bpb
    headers = ["optimizer", "final val bpb", f"Δ vs {results[0].config.name}", "train wall (s)", "total (s)",
               "tokens/s", "steps", "status"]
    rows = [[r.config.name, _fmt(r.final_val_bpb), _fmt(r.final_val_bpb - ref, 4), f"{r.wall_s:.1f}",
             f"{r.total_s:.1f}", f"{r.tokens_per_s:,.0f}", r.steps_done,
             "diverged" if r.diverged else (r.message or "ok")] for r in results]
    return markdown_table(headers, rows)


def entry_config(config: TrainConfig, entry: str, out: Path | None) -> TrainConfig:
    """The run of one ``--compare`` entry (see the module docstring)."""
    optimizer, _, spec_name = entry.partition(":")
    if optimizer not in OPTIMIZERS or (spec_name and optimizer != "fusedgate"):
        raise TrainError(f"--compare entry {entry!r}: expected one of {', '.join(OPTIMIZERS)} or fusedgate:SPEC")
    spec = config.spec if optimizer == "fusedgate" else None
    if spec_name:
        try:
            spec = GateSpec.from_name_or_file(spec_name)
        except SpecError as exc:
            raise TrainError(f"--compare entry {entry!r}: {exc}") from None
    return dataclasses.replace(config, optimizer=optimizer, spec=spec, label=entry,
                               out_dir=str(out / entry.replace(":", "-").replace("/", "_")) if out else None)


def compare(config: TrainConfig, entries: list[str]) -> list[TrainResult]:
    """Train ``config`` once per entry (same seed, data, schedule); write the report when out_dir is set."""
    if len(set(entries)) != len(entries) or len(entries) < 2:
        raise TrainError(f"--compare takes two or more distinct entries, got {','.join(entries)}")
    out = Path(config.out_dir) if config.out_dir is not None else None
    if out is not None and (out / "compare.md").exists() and not config.overwrite:
        raise TrainError(f"--out {out} already holds a comparison; choose another directory or pass --overwrite")
    configs = [entry_config(config, entry, out) for entry in entries]
    first_rank = data_parallel()[0] == 0   # with --nproc, rank 0 alone checks and writes the folders
    for c in configs:  # refuse before training anything if a run directory is taken
        if first_rank:
            _prepare_out_dir(c)
    results = [train(c) for c in configs]
    if out is not None and first_rank:
        write_report(results, out)
    return results


def write_report(results: list[TrainResult], out: Path) -> None:
    first = results[0]
    header = (f"# {first.config.preset}: {' vs '.join(r.config.name for r in results)}\n\n"
              f"corpus `{first.corpus_fingerprint}`, tokenizer {first.tokenizer}, seed {first.config.seed}, "
              f"{first.n_params:,} params, device {first.device}\n\n")
    write_atomic(out / "compare.md", header + table(results) + "\n")
    write_atomic(out / "compare.json", json.dumps(
        [dict(r.summary(), val_curve=r.val_curve) for r in results], indent=1, default=str) + "\n")
    plot_runs(results, out / "compare.png", title=f"{first.config.preset} preset, corpus {first.corpus_fingerprint}")
