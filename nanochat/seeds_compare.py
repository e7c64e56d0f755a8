"""``--compare ... --seeds LIST [--ladder RATIOS]``: the comparison over several seeds, paired, with the
steps-equivalent ratio.

Per seed S the entries are trained as ``compare`` trains them (same init, batches and schedule within the
seed) into ``<out>/seed-S/``. With ``--ladder``, the first entry (the reference) is also trained at
round(H / r) steps for every ladder ratio r ≠ 1, each run with its own full schedule, into
``<out>/seed-S/ladder-<steps>/``. For every other entry and seed:

    gain   bpb(reference) − bpb(entry) at H             paired over seeds: mean ± sd, one-sided 95 % bound
    ratio  H / h*, b_ref(h*) = bpb(entry)               ``fusedgate.search.steps_to_target``: the entry's
                                                        steps over the reference's for the same val bpb

``summary.md`` and ``summary.json`` in ``<out>`` hold the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from fusedgate.files import markdown_table, write_atomic
from fusedgate.nanochat.compare import compare
from fusedgate.nanochat.errors import TrainError
from fusedgate.nanochat.presets import get_preset
from fusedgate.nanochat.train import TrainConfig, TrainResult, data_parallel, train
from fusedgate.search import stats
from fusedgate.search import steps_to_target as stt

MAX_COMPARE_SEEDS = 64


def horizon(config: TrainConfig) -> int:
    return config.steps or get_preset(config.preset).steps


def ladder_runs(config: TrainConfig, reference: str, seed_out: Path | None, ratios) -> dict[int, TrainResult]:
    """The reference entry at every rung of the ladder but the horizon itself."""
    from fusedgate.nanochat.compare import entry_config

    h = horizon(config)
    base = entry_config(config, reference, None)
    runs = {}
    for steps in stt.rungs(h, ratios):
        if steps == h:
            continue
        out = str(seed_out / f"ladder-{steps}") if seed_out is not None else None
        runs[steps] = train(dataclasses.replace(base, steps=steps, out_dir=out, label=f"{reference}@{steps}"))
    return runs


def compare_seeds(config: TrainConfig, entries: list[str], seeds: list[int], ratios=None) -> dict:
    """Run the comparison on every seed (and the ladder); return and write the paired summary."""
    if not 1 <= len(seeds) <= MAX_COMPARE_SEEDS:
        raise TrainError(f"--seeds takes 1 to {MAX_COMPARE_SEEDS} seeds, got {len(seeds)}")
    if ratios is not None:
        try:
            stt.rungs(horizon(config), ratios)
        except ValueError as exc:
            raise TrainError(f"--ladder: {exc}") from None
    out = Path(config.out_dir) if config.out_dir is not None else None
    per_seed = []
    for seed in seeds:
        seed_out = out / f"seed-{seed}" if out is not None else None
        cfg = dataclasses.replace(config, seed=seed, out_dir=str(seed_out) if seed_out is not None else None)
        results = compare(cfg, entries)
        ladder = ladder_runs(cfg, entries[0], seed_out, ratios) if ratios else {}
        per_seed.append((seed, results, ladder))
    summary = summarize(per_seed, entries, horizon(config), ratios)
    if out is not None and data_parallel()[0] == 0:
        write_atomic(out / "summary.md", summary_table(summary) + "\n")
        write_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def summarize(per_seed, entries: list[str], h: int, ratios) -> dict:
    rows = []
    for i, entry in enumerate(entries):
        bpbs = [results[i].final_val_bpb for _, results, _ in per_seed]
        row = {"entry": entry, "seeds": [s for s, _, _ in per_seed], "final_val_bpb": bpbs}
        if i:
            gains = [results[0].final_val_bpb - results[i].final_val_bpb for _, results, _ in per_seed]
            row.update(gains=gains, gain_lower95=stats.lower_bound(gains), gain_upper95=stats.upper_bound(gains))
            if ratios:
                found = [stt.steps_ratio({h: results[0].final_val_bpb,
                                          **{n: r.final_val_bpb for n, r in ladder.items()}}, h,
                                         results[i].final_val_bpb) for _, results, ladder in per_seed]
                row["steps"] = stt.summarize([r for r, _ in found], [w for _, w in found])
        rows.append(row)
    return {"horizon": h, "ladder": list(ratios) if ratios else None, "rows": rows}


def summary_table(summary: dict) -> str:
    ratios = summary["ladder"] or stt.LADDER_RATIOS
    head = ["entry", "seeds", "final val bpb (mean ± sd)", f"gain vs {summary['rows'][0]['entry']} (mean ± sd)",
            "95% lower bound", "steps-equivalent ratio (95% upper bound)"]
    table = []
    for row in summary["rows"]:
        m, sd = stats.mean_sd(row["final_val_bpb"])
        cells = [row["entry"], len(row["seeds"]), f"{m:.4f} ± {_f(sd)}"]
        if "gains" in row:
            gm, gsd = stats.mean_sd(row["gains"])
            cells += [f"{gm:+.4f} ± {_f(gsd)}", _f(row["gain_lower95"], sign=True),
                      stt.describe(row["steps"], ratios) if "steps" in row else "—"]
        else:
            cells += ["(reference)", "", "1 (reference)" if summary["ladder"] else "—"]
        table.append(cells)
    return (f"{summary['horizon']} steps, seeds {summary['rows'][0]['seeds']}, paired per seed\n\n"
            + markdown_table(head, table))


def _f(x, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:+.4f}" if sign else f"{x:.4f}"
