"""Evaluation jobs: one real NanoChat training run each, described by plain JSON-able dicts.

A job is ``{"job_key", "optimizer", "spec_json", "spec_hash", "preset", "steps", "seed", "data",
"corpus", "stage", "lr_scale", "final_eval_tokens", "eval_every"}``. ``optimizer`` is "fusedgate" (with a spec) or
"baseline" (nanochat's Muon+AdamW). ``lr_scale`` multiplies every group's lr (the tuned baseline's
sweep); ``final_eval_tokens`` sizes the final evaluation (None: the preset's small eval set);
``eval_every`` spaces the curve's evaluations (None: the preset's). The job
key hashes everything that determines the run — optimizer, spec content, preset, steps, seed, lr
scale, evaluation sizes and spacing, and the corpus fingerprint — so the same run is never done twice: the neutral
spec's run doubles as the "neutral" baseline and a candidate that equals it reuses it.

``run_job`` trains and never raises: a diverged run (``TrainResult.diverged`` or a non-finite val
bpb) comes back with status "diverged", an exception with status "failed" and its error text.
"""

from __future__ import annotations

import hashlib
import json
import math
import traceback

BASELINE = "baseline"
FUSEDGATE = "fusedgate"


def make_job(
    optimizer: str,
    spec,
    preset: str,
    steps: int,
    seed: int,
    data: str | None,
    corpus: str,
    stage: str,
    lr_scale: float = 1.0,
    final_eval_tokens: int | None = None,
    eval_every: int | None = None,
) -> dict:
    spec_json = None if spec is None else spec.to_json(indent=None)
    spec_hash = None if spec is None else spec.content_hash()
    ident = {
        "optimizer": optimizer,
        "spec_hash": spec_hash,
        "preset": preset,
        "steps": steps,
        "seed": seed,
        "corpus": corpus,
        "lr_scale": float(lr_scale),
        "final_eval_tokens": final_eval_tokens,
        "eval_every": eval_every,
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
    return {
        "job_key": key,
        "optimizer": optimizer,
        "spec_json": spec_json,
        "spec_hash": spec_hash,
        "preset": preset,
        "steps": steps,
        "seed": seed,
        "data": data,
        "corpus": corpus,
        "stage": stage,
        "lr_scale": float(lr_scale),
        "final_eval_tokens": final_eval_tokens,
        "eval_every": eval_every,
    }


def corpus_fingerprint(data: str | None, preset: str) -> str:
    """The fingerprint the trainer will record for this corpus (computed without tokenizing)."""
    from fusedgate.nanochat.data import fingerprint, load_documents
    from fusedgate.nanochat.presets import get_preset

    label, docs = load_documents(data, get_preset(preset).max_corpus_bytes)
    return f"{label}:{fingerprint(docs)}"


def summarize_gates(trajectory: list[dict]) -> list[dict]:
    """Per logged step: mean/min/max gate and the mean of each actuator and sensor over the params."""
    out = []
    for rec in trajectory:
        params = list(rec["params"].values())
        if not params:
            continue
        row = {"step": rec["step"]}
        gates = [p["gate"] for p in params]
        row.update(gate=sum(gates) / len(gates), gate_min=min(gates), gate_max=max(gates))
        for key in ("update_mult", "trust_mix", "clip", "beta2", "ortho"):
            vals = [p[key] for p in params if key in p]
            if vals:
                row[key] = sum(vals) / len(vals)
        sensors = {}
        for p in params:
            for name, v in p.get("sensors", {}).items():
                sensors.setdefault(name, []).append(v)
        row["sensors"] = {k: sum(v) / len(v) for k, v in sensors.items()}
        out.append(row)
    return out


def run_job(job: dict, device: str = "cpu") -> dict:
    """Train once as the job says; return status, metrics and curves (never raises)."""
    try:
        from fusedgate.nanochat.data import load_data
        from fusedgate.nanochat.train import TrainConfig, train
        from fusedgate.spec import GateSpec

        hits = load_data.cache_info().hits

        spec = None if job["spec_json"] is None else GateSpec.from_json(job["spec_json"])
        result = train(
            TrainConfig(
                preset=job["preset"],
                optimizer=job["optimizer"],
                spec=spec,
                steps=job["steps"],
                seed=job["seed"],
                device=device,
                data=job["data"],
                progress=False,
                lr_scale=job.get("lr_scale", 1.0),
                final_eval_tokens=job.get("final_eval_tokens"),
                eval_every=job.get("eval_every"),
            )
        )
        bpb = result.final_val_bpb
        diverged = bool(result.diverged) or bpb is None or not math.isfinite(bpb)
        return {
            "status": "diverged" if diverged else "ok",
            "final_val_bpb": bpb if bpb is not None and math.isfinite(bpb) else None,
            "tokens_per_s": result.tokens_per_s,
            "wall_s": result.wall_s,
            "total_s": result.total_s,
            "final_val_se": result.final_val_se if math.isfinite(result.final_val_se) else None,
            "final_val_batches": result.final_val_batches,
            "corpus_cached": load_data.cache_info().hits > hits,  # this worker had tokenised it already
            "corpus_fingerprint": result.corpus_fingerprint,
            "val_curve": result.val_curve,
            "train_curve": result.train_curve,
            "gate_trajectory": summarize_gates(result.gate_trajectory),
            "error": "training diverged (non-finite loss or val bpb)" if diverged else None,
        }
    except Exception as exc:  # a failed run is a result, not a crash of the search
        tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n{tail}"}


def failed(error: str) -> dict:
    return {"status": "failed", "error": error}
