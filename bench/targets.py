"""The issue's performance targets, evaluated on a run's results (measured and reported, never asserted).

Step targets are judged on every optimizer-step row with at least ``MIN_PARAMS`` params, per dtype.
In bf16 rows torch's AdamW keeps bf16 state (14 B/param) while FusedGate keeps fp32 state (22 B/param),
so a time ratio there compares unequal work; the bandwidth target compares like with like.
"""

from __future__ import annotations

MIN_PARAMS = 4_000_000
NS_TARGET_SIZE = "4096x4096"
NANOCHAT_TARGET_SIZES = ("d12", "d20")
TOKENS_TARGET = 0.99  # end-to-end tokens/s of each FusedGate run ÷ the baseline run's


def _ok(records, contestant, dtype=None):
    return {
        (r["case"], r["size"], r["dtype"]): r
        for r in records
        if r["contestant"] == contestant
        and r["status"] == "ok"
        and (dtype is None or r["dtype"] == dtype)
        and r["params"] >= MIN_PARAMS
    }


def _why_missing(records, contestant) -> str:
    reasons = {r.get("reason", "") for r in records if r["contestant"] == contestant and r["status"] != "ok"}
    if reasons:
        return "; ".join(sorted(reasons))
    return f"no {contestant} row with ≥ {MIN_PARAMS / 1e6:g}M params in this run"


def _judge(name: str, values: dict, limit: float, higher_is_better: bool, unit: str, missing: str) -> dict:
    """values: row key -> measured number; the worst row decides."""
    goal = f"{'≥' if higher_is_better else '≤'} {limit:g}{unit}"
    if not values:
        return {"target": name, "status": "not measured", "goal": goal, "detail": missing}
    pick = min if higher_is_better else max
    worst_key = pick(values, key=values.get)
    worst = values[worst_key]
    met = worst >= limit if higher_is_better else worst <= limit
    case, size, dtype = worst_key
    return {
        "target": name,
        "status": "met" if met else "missed",
        "worst": worst,
        "measured": f"{worst:.3g}{unit}",
        "goal": goal,
        "rows": len(values),
        "detail": f"worst {worst:.3g}{unit} at {case} {size} {dtype} over {len(values)} rows",
    }


def evaluate(records: list[dict]) -> list[dict]:
    out = []
    for dtype in ("fp32", "bf16"):
        adamw = _ok(records, "fg_adamw_triton", dtype)
        gated = _ok(records, "fg_gated_triton", dtype)
        reference = _ok(records, "fg_gated_ref", dtype)
        out.append(
            _judge(
                f"GateSpec.adamw Triton step ≤ 1.0× fused AdamW ({dtype}, ≥ 4M params)",
                {k: r["ratio"] for k, r in adamw.items() if "ratio" in r},
                1.0,
                False,
                "×",
                _why_missing(records, "fg_adamw_triton"),
            )
        )
        out.append(
            _judge(
                f"GateSpec.adamw Triton step ≥ 90% of copy bandwidth ({dtype}, ≥ 4M params)",
                {k: r["pct_copy"] for k, r in adamw.items()},
                90.0,
                True,
                "%",
                _why_missing(records, "fg_adamw_triton"),
            )
        )
        out.append(
            _judge(
                f"gated Triton step (no ortho) ≤ 1.1× fused AdamW ({dtype}, ≥ 4M params)",
                {k: r["ratio"] for k, r in gated.items() if "ratio" in r},
                1.1,
                False,
                "×",
                _why_missing(records, "fg_gated_triton"),
            )
        )
        out.append(
            _judge(
                f"gated Triton step ≥ 5× faster than the eager reference ({dtype}, ≥ 4M params)",
                {k: reference[k]["median_ms"] / r["median_ms"] for k, r in gated.items() if k in reference},
                5.0,
                True,
                "×",
                _why_missing(records, "fg_gated_triton"),
            )
        )
    ns = [r for r in records if r["case"] == "newton_schulz" and r["size"] == NS_TARGET_SIZE]
    speedup = {
        (r["case"], r["size"], r["dtype"]): 1.0 / r["ratio"]
        for r in ns
        if r["contestant"] == "ns_triton" and r["status"] == "ok" and "ratio" in r
    }
    reasons = sorted({r.get("reason", "") for r in ns if r["status"] != "ok"})
    missing = "; ".join(reasons) if reasons else f"no {NS_TARGET_SIZE} Newton–Schulz row in this run"
    out.append(
        _judge(
            f"Triton Newton–Schulz ≥ 1.3× faster than torch matmul at {NS_TARGET_SIZE}",
            speedup,
            1.3,
            True,
            "×",
            missing,
        )
    )
    out.append(nanochat_target(records))
    return out


def nanochat_target(records) -> dict:
    """FusedGate ``nanochat()`` on Triton ≤ 1.0× nanochat's compiled step, every dtype, d12 and d20."""
    rows = [r for r in records if r["case"] == "nanochat_muon" and r["size"] in NANOCHAT_TARGET_SIZES]
    ratios = {
        (r["case"], r["size"], r["dtype"]): r["ratio"]
        for r in rows
        if r["contestant"] == "fg_nanochat_triton" and r["status"] == "ok" and "ratio" in r
    }
    reasons = sorted({r.get("reason", "") for r in rows if r["status"] != "ok"})
    missing = "; ".join(reasons) if reasons else "no nanochat_muon d12/d20 rows in this run"
    name = "nanochat() Triton step ≤ 1.0× nanochat's compiled step (d12, d20)"
    return _judge(name, ratios, 1.0, False, "×", missing)


def training_targets(runs: list[dict]) -> list[dict]:
    """End-to-end tokens/s of each FusedGate run ≥ 0.99× the baseline's. ``runs``: ``TrainResult.summary()``
    dicts (label, tokens_per_s, steps), the baseline labelled "baseline"."""
    base = next((r for r in runs if r["label"] == "baseline" and r.get("tokens_per_s")), None)
    out = []
    for run in (r for r in runs if r["label"].startswith("fusedgate")):
        name = f"{run['label']} training tokens/s ≥ {TOKENS_TARGET:g}× the baseline's"
        values = {}
        if base is not None and run.get("tokens_per_s"):
            values[("train", run["label"], "")] = run["tokens_per_s"] / base["tokens_per_s"]
        missing = "no baseline run with a tokens/s figure" if base is None else f"{run['label']} measured no steps"
        target = _judge(name, values, TOKENS_TARGET, True, "×", missing)
        if values:
            target["detail"] = (f"{run['tokens_per_s']:,.0f} vs {base['tokens_per_s']:,.0f} tokens/s "
                                f"({run['steps']} and {base['steps']} steps)")
        out.append(target)
    return out
