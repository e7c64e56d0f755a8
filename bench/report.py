"""Write a run's results: ``<slug>.json`` (everything), ``<slug>.md`` (tables), ``<slug>.png`` (time vs size).

All three are rendered first, then each is written with ``fusedgate.files.write_atomic`` (a temporary file
in the same folder, renamed), so a failure never leaves a half-written result over an old one.
"""

from __future__ import annotations

import json
from pathlib import Path

from fusedgate.bench.targets import evaluate
from fusedgate.files import markdown_table, read_text, write_atomic

STEP_CASES = ("matrix", "nanochat")
MAX_RESULTS_BYTES = 64 << 20  # a results JSON is a few hundred KiB


def rerender(json_path: Path) -> list[Path]:
    """Rewrite the markdown and PNG beside a results JSON from its numbers (nothing is re-measured)."""
    run = json.loads(read_text(json_path, "results JSON", MAX_RESULTS_BYTES))
    stem = json_path.name.removesuffix(".json")
    payloads = {
        json_path.with_name(f"{stem}.md"): markdown(run).encode(),
        json_path.with_name(f"{stem}.png"): plot_png(run),
    }
    for path, data in payloads.items():
        write_atomic(path, data)
    return list(payloads)


def write_all(run: dict, out_dir: Path) -> list[Path]:
    """Write the JSON, markdown and PNG for ``run`` (from ``suite.run``); returns their paths.
    An interrupted run goes to ``<slug>.partial.*``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if "targets" not in run:
        run = dict(run, targets=evaluate(run["results"]))
    stem = run["environment"]["slug"]
    if len(run["results"]) < run["planned"]:  # an interrupted run never replaces a complete one
        stem += ".partial"
    payloads = {
        out_dir / f"{stem}.json": (json.dumps(run, indent=1) + "\n").encode(),
        out_dir / f"{stem}.md": markdown(run).encode(),
        out_dir / f"{stem}.png": plot_png(run),
    }  # all rendered before anything is written
    for path, data in payloads.items():
        write_atomic(path, data)
    return list(payloads)


# ---------------------------------------------------------------------------------------------- markdown
def _params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


def _time(ms: float) -> str:
    if ms < 1:
        return f"{ms * 1e3:.3g} µs"
    return f"{ms:.3g} ms" if ms < 1e3 else f"{ms / 1e3:.3g} s"


def _unmeasured(r: dict | None) -> str | None:
    """The cell of a row that has no timing to show (missing, interpreted, failed); None for a timed row."""
    if r is None:
        return ""
    if r["status"] == "interpreted":
        return f"interpreted ({_time(r['median_ms'])})"
    return None if r["status"] == "ok" else r["status"]


def _step_cell(r: dict | None) -> str:
    if (cell := _unmeasured(r)) is not None:
        return cell
    gbps = f"{r['gbps']:.0f}" if r["gbps"] >= 100 else f"{r['gbps']:.2g}"
    parts = [_time(r["median_ms"]), f"{gbps} GB/s", f"{r['pct_copy']:.0f}%"]
    if "ratio" in r:
        parts.append(f"{r['ratio']:.2f}×")
    return " · ".join(parts)


def _ns_cell(r: dict | None) -> str:
    if r is None:
        return ""
    if r["status"] == "interpreted":
        return (
            f"interpreted ({_time(r['median_ms'])}, err {r['rel_err']:.1e})"
            if "rel_err" in r
            else f"interpreted ({_time(r['median_ms'])})"
        )
    if r["status"] != "ok":
        return r["status"]
    parts = [_time(r["median_ms"]), f"{r['tflops']:.3g} TFLOP/s"]
    if "ratio" in r:
        parts.append(f"{1.0 / r['ratio']:.2f}× faster")
    if "rel_err" in r:
        parts.append(f"err {r['rel_err']:.1e}")
    return " · ".join(parts)


def _muon_cell(r: dict | None) -> str:
    if (cell := _unmeasured(r)) is not None:
        return cell
    parts = [_time(r["median_ms"]), f"{r['tflops']:.3g} TFLOP/s"]
    if "ratio" in r:
        parts.append(f"{r['ratio']:.2f}×")
    return " · ".join(parts)


def _section(records: list[dict], names: list[str], title: str, cell, caption: str) -> list[str]:
    """One results section: a heading, its caption and the table of ``records`` (none: no section)."""
    if not records:
        return []
    cols = [n for n in names if any(r["contestant"] == n for r in records)]
    return [f"## {title}", "", caption, ""] + _table(records, cell, cols) + [""]


def _table(records: list[dict], cell, contestants: list[str]) -> list[str]:
    rows: dict[tuple, dict[str, dict]] = {}
    for r in records:
        rows.setdefault((r["case"], r["dtype"], r["size"], r["params"]), {})[r["contestant"]] = r
    table = markdown_table(
        ["case", "dtype", "size", "params", *contestants],
        [
            [case, dtype, size, _params(params), *(cell(cells.get(c)) for c in contestants)]
            for (case, dtype, size, params), cells in rows.items()
        ],
    )
    return table.splitlines()


def not_run(records: list[dict]) -> list[str]:
    reasons: dict[tuple[str, str], str] = {}
    for r in records:
        if r["status"] != "ok":
            reasons.setdefault((r["contestant"], r["status"]), r.get("reason", ""))
    return [f"- `{name}` {status}: {reason}" for (name, status), reason in reasons.items()]


def markdown(run: dict, with_targets: bool = True) -> str:
    """The tables of a run; ``with_targets=False`` leaves out the targets section (for a caller that renders
    its own)."""
    env, copy, records = run["environment"], run["copy"], run["results"]
    names = list(run["contestants"])
    steps = [r for r in records if r["case"] in STEP_CASES]
    ns = [r for r in records if r["case"] == "newton_schulz"]
    muon = [r for r in records if r["case"] == "nanochat_muon"]
    lines = [f"# FusedGate benchmark: {env['device']}", ""]
    if env["device_type"] != "cuda":
        lines += [
            "**CPU numbers** from the CPU paths at small sizes: a smoke run of the benchmark, not a "
            "statement about GPU performance. Small problems can stay in the CPU's caches between "
            "repetitions, so a % of copy bandwidth above 100 means cache, not a faster memory.",
            "",
        ]
    lines += [
        f"torch {env['torch']}, triton {env['triton']}, fusedgate {env['fusedgate']}, {env['created']}. "
        f"Timing: {run['plan']['clock']}; {run['plan']['warmup']} warm-up calls, then the median of "
        f"{run['plan']['min_reps']}–{run['plan']['max_reps']} repetitions (p10/p90 in the JSON).",
        "",
        f"Device-to-device copy ({copy['bytes'] / 2 / 2**20:.0f} MiB, bytes = read + write): "
        f"**{copy['gbps']:.0f} GB/s**, the 100% of the bandwidth columns.",
        "",
    ]
    if len(records) < run["planned"]:
        lines += [f"**Interrupted** after {len(records)} of {run['planned']} measurements.", ""]
    lines += _section(steps, names, "One optimizer step", _step_cell,
                      "Each cell: median time · GB/s of the design bytes (p, m, v read and written, g read) · % of "
                      "the copy bandwidth · time ÷ `adamw_fused` time (< 1 is faster).")
    lines += _section(ns, names, "Newton–Schulz (5 quintic iterations)", _ns_cell,
                      "Each cell: median time · TFLOP/s · speed-up over `ns_torch` · relative error of the output "
                      "against a float64 run of the same iteration on the same input.")
    lines += _section(muon, names, "nanochat's Muon step on the NanoChat matrix params", _muon_cell,
                      "Each cell: median time · TFLOP/s of the orthogonalisation (5 iterations per matrix) · time ÷ "
                      "`nanochat_compiled` time (< 1 is faster).")
    skipped = not_run(records)
    if skipped:
        lines += ["## Not run", ""] + skipped + [""]
    if with_targets:
        lines += ["## Targets (measured, not asserted)", ""]
        targets = [[t["target"], t["status"], t["detail"]] for t in run["targets"]]
        lines += markdown_table(["target", "status", "detail"], targets).splitlines() + [""]
    lines += ["## Contestants", ""] + [f"- `{n}`: {d}" for n, d in run["contestants"].items()] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plot
def plot_png(run: dict) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    records = [r for r in run["results"] if r["status"] == "ok"]
    panels = [(c, d) for c in STEP_CASES for d in ("fp32", "bf16")] + [("newton_schulz", None)]
    names = list(run["contestants"])
    colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    for ax, (case, dtype) in zip(axes.flat, panels):
        rows = [r for r in records if r["case"] == case and (dtype is None or r["dtype"] == dtype)]
        for name in names:
            mine = sorted((r for r in rows if r["contestant"] == name), key=lambda r: r["params"])
            if not mine:
                continue
            x = [r["params"] for r in mine]
            y = [r["median_ms"] for r in mine]
            err = [[r["median_ms"] - r["p10_ms"] for r in mine], [r["p90_ms"] - r["median_ms"] for r in mine]]
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, label=name, color=colors[name])
        title = "Newton–Schulz" if case == "newton_schulz" else f"{case} step, {dtype}"
        ax.set_title(title)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("elements of the input" if case == "newton_schulz" else "params")
        ax.set_ylabel("median time (ms)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
    ax = axes.flat[-1]
    for name in names:
        for dtype, style in (("fp32", "-"), ("bf16", "--")):
            mine = sorted(
                (
                    r
                    for r in records
                    if r["contestant"] == name
                    and r["case"] == "matrix"
                    and r["dtype"] == dtype
                    and "pct_copy" in r
                ),
                key=lambda r: r["params"],
            )
            if mine:
                ax.plot(
                    [r["params"] for r in mine],
                    [r["pct_copy"] for r in mine],
                    style,
                    marker=".",
                    color=colors[name],
                    label=f"{name} {dtype}",
                )
    ax.axhline(90, color="grey", lw=0.8, ls=":")
    ax.set_title("% of copy bandwidth, matrix step (bf16 dashed)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("params")
    ax.set_ylabel("% of device copy bandwidth")
    ax.grid(True, which="both", alpha=0.3)
    if len(ax.lines) > 1:
        ax.legend(fontsize=6)
    env = run["environment"]
    fig.suptitle(f"FusedGate benchmark: {env['device']} (torch {env['torch']}, triton {env['triton']})")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
