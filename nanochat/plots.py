"""PNG plots of training runs (matplotlib, Agg backend).

``plot_runs`` draws, for one or more runs of the same corpus: val bpb against steps, val bpb against
training wall-clock, and — for FusedGate runs — the gate g of every gated parameter over steps
(thin lines) with its mean (thick line).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

from fusedgate.files import write_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"baseline": "tab:blue", "fusedgate": "tab:red", "adamw": "tab:green", "fusedgate:nanochat": "tab:orange",
          "fusedgate:default": "tab:purple", "fusedgate:gated": "tab:red"}


def _label(result) -> str:
    return f"{result.config.name} (final {result.final_val_bpb:.3f})"


def plot_runs(results: list, path: str | Path, title: str = "") -> Path:
    gated = [r for r in results if r.gate_trajectory]
    ncols = 3 if gated else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.2))
    ax_steps, ax_wall = axes[0], axes[1]
    for r in results:
        color = COLORS.get(r.config.name, COLORS.get(r.config.optimizer))
        steps = [v["step"] for v in r.val_curve]
        walls = [v["wall_s"] for v in r.val_curve]
        bpbs = [v["val_bpb"] for v in r.val_curve]
        ax_steps.plot(steps, bpbs, marker="o", ms=3, color=color, label=_label(r))
        ax_wall.plot(walls, bpbs, marker="o", ms=3, color=color, label=_label(r))
    for ax, xlabel in ((ax_steps, "step"), (ax_wall, "training wall-clock (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val bits per byte")
        ax.grid(alpha=0.3)
        ax.legend()
        # leave the step-0 point (≈ log2 vocab) off the scale so the interesting range is visible
        tail = [v["val_bpb"] for r in results for v in r.val_curve[1:] if v["val_bpb"] == v["val_bpb"]]
        if len(tail) > 1:
            ax.set_ylim(min(tail) - 0.05, max(tail) + 0.05)
    ax_steps.set_title("val bpb vs steps")
    ax_wall.set_title("val bpb vs wall-clock")
    if gated:
        ax = axes[2]
        for r in gated:
            names = sorted({n for rec in r.gate_trajectory for n in rec["params"]})
            steps = [rec["step"] for rec in r.gate_trajectory]
            per_param = [[rec["params"].get(n, {}).get("gate", float("nan")) for rec in r.gate_trajectory]
                         for n in names]
            for series in per_param:
                ax.plot(steps, series, color=COLORS.get(r.config.name, COLORS.get(r.config.optimizer)), alpha=0.25,
                        lw=0.8)
            mean = [sum(col) / len(col) for col in zip(*per_param)] if per_param else []
            inert = r.config.spec is None or r.config.spec.is_inert
            note = " (inert spec: poles equal)" if inert else ""
            ax.plot(steps, mean, color="black", lw=2, label=f"{r.config.name}: mean gate{note}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("step")
        ax.set_ylabel("gate g (1 = aggressive pole)")
        ax.set_title("FusedGate gate per parameter")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    finally:
        plt.close(fig)
    return Path(path)
