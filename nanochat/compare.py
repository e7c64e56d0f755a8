"""``--compare``: train several optimizers back to back on the same seed, data and schedule, then
write a table (printed and ``compare.md``), ``compare.json`` and ``compare.png`` into the out dir.

Each run goes to ``<out>/<optimizer>/`` (its own metrics.jsonl, checkpoint and plot).
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


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.{digits}f}"


def table(results: list[TrainResult]) -> str:
    """A markdown table: final val bpb, Δ to the first run, training wall time, tokens/s, steps."""
    ref = results[0].final_val_bpb
    headers = ["optimizer", "final val bpb", f"Δ vs {results[0].config.optimizer}", "train wall (s)", "total (s)",
               "tokens/s", "steps", "status"]
    rows = [[r.config.optimizer, _fmt(r.final_val_bpb), _fmt(r.final_val_bpb - ref, 4), f"{r.wall_s:.1f}",
             f"{r.total_s:.1f}", f"{r.tokens_per_s:,.0f}", r.steps_done,
             "diverged" if r.diverged else (r.message or "ok")] for r in results]
    return markdown_table(headers, rows)


def compare(config: TrainConfig, optimizers: list[str]) -> list[TrainResult]:
    """Train ``config`` once per optimizer (same seed, data, schedule); write the report when out_dir is set."""
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown or len(set(optimizers)) != len(optimizers) or len(optimizers) < 2:
        raise TrainError(f"--compare takes two or more distinct optimizers from {', '.join(OPTIMIZERS)}, "
                         f"got {','.join(optimizers)}")
    out = Path(config.out_dir) if config.out_dir is not None else None
    if out is not None and (out / "compare.md").exists() and not config.overwrite:
        raise TrainError(f"--out {out} already holds a comparison; choose another directory or pass --overwrite")
    configs = [dataclasses.replace(config, optimizer=o, out_dir=str(out / o) if out is not None else None)
               for o in optimizers]
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
    header = (f"# {first.config.preset}: {' vs '.join(r.config.optimizer for r in results)}\n\n"
              f"corpus `{first.corpus_fingerprint}`, tokenizer {first.tokenizer}, seed {first.config.seed}, "
              f"{first.n_params:,} params, device {first.device}\n\n")
    write_atomic(out / "compare.md", header + table(results) + "\n")
    write_atomic(out / "compare.json", json.dumps(
        [dict(r.summary(), val_curve=r.val_curve) for r in results], indent=1, default=str) + "\n")
    plot_runs(results, out / "compare.png", title=f"{first.config.preset} preset, corpus {first.corpus_fingerprint}")
