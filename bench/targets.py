"""The issue's performance targets, evaluated on a run's results (measured and reported, never asserted).

Step targets are judged on every optimizer-step row with at least ``MIN_PARAMS`` params, per dtype.
In bf16 rows torch's AdamW keeps bf16 state (14 B/param) while FusedGate keeps fp32 state (22 B/param),
so a time ratio there compares unequal work; the bandwidth target compares like with like.
"""

from __future__ import annotations

MIN_PARAMS = 4_000_000
NS_TARGET_SIZE = "4096x4096"


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
    if not values:
        return {"target": name, "status": "not measured", "detail": missing}
    pick = min if higher_is_better else max
    worst_key = pick(values, key=values.get)
    worst = values[worst_key]
    met = worst >= limit if higher_is_better else worst <= limit
    case, size, dtype = worst_key
    return {
        "target": name,
        "status": "met" if met else "missed",
        "worst": worst,
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
    return out
