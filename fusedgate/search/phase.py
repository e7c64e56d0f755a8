"""Is a gate a phase-aware policy or a schedule? How much of the gate's movement step_fraction explains.

The gate is g = sigmoid(sharpness · z) with the logit z = bias + Σᵢ wᵢ sᵢ over the normalised sensors.
Over a logged trajectory (the per-step mean of each normalised sensor over the gated matrices; z is
linear in the sensors, so the mean logit is the logit of the mean sensors), z_t splits into the
step-fraction term w_sf · s_sf,t and the rest. The share step_fraction explains is

    R² = corr(z, s_sf)²

the fraction of the logit's variance over the run that a function of the step alone reproduces. R² ≈ 1
means the gate is a schedule in disguise; R² ≈ 0 means it moves with the measured training state. A
gate whose logit does not move (a neutral spec, or weights on sensors that stay constant) has no
share: None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fusedgate.spec import SENSORS, GateSpec


def gate_logits(spec: GateSpec, trajectory: Sequence[dict]) -> list[float]:
    """z_t = bias + Σ wᵢ sᵢ,t per logged step, from the trajectory's mean normalised sensors."""
    weights = dict(zip(SENSORS, spec.gate_weights))
    return [spec.gate_bias + sum(w * row["sensors"].get(name, 0.0) for name, w in weights.items())
            for row in trajectory if row.get("sensors")]


def step_fraction_share(spec: GateSpec, trajectory: Sequence[dict]) -> float | None:
    """R² of the gate logit on step_fraction over the trajectory (see the module docstring)."""
    rows = [row for row in trajectory if row.get("sensors")]
    z = gate_logits(spec, rows)
    sf = [row["sensors"].get("step_fraction", 0.0) for row in rows]
    if len(z) < 3:
        return None
    mz, ms = sum(z) / len(z), sum(sf) / len(sf)
    vz = sum((a - mz) ** 2 for a in z)
    vs = sum((b - ms) ** 2 for b in sf)
    if vz <= 1e-12 * max(1.0, mz * mz):
        return None
    if vs == 0:
        return 0.0
    cov = sum((a - mz) * (b - ms) for a, b in zip(z, sf))
    return min(1.0, cov * cov / (vz * vs)) if math.isfinite(cov) else None
