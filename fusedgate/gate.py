"""Sensors, their normalisation, the sigmoid gate and the actuator blend.

Everything here is plain torch on device tensors: no ``.item()``, no host synchronisation.

State layout
------------
Global (one per optimizer), a float32 vector indexed by ``G_*``:
    step                  number of ``step()`` calls so far
    loss_ema              EMA of the loss, decay ``spec.ema_loss``; the first finite loss initialises it
    loss_ref              the first finite loss seen (the reference for normalisation)
    loss_improvement_ema  EMA of (loss_ema[t-1] − loss_ema[t]), decay ``spec.ema_loss_improvement``, starts at 0
    loss_seen             number of finite losses seen

Per matrix parameter, a float32 vector indexed by ``S_*``:
    grad_norm_ema         EMA of ‖g̃‖ (g̃ = the clipped gradient), decay ``spec.ema_grad_norm``
    grad_norm_ref         the first non-zero ‖g̃‖
    update_ratio_ema      EMA of ρ = ‖Δp‖ / (‖p‖ + ‖Δp‖) (≈ ‖Δp‖/‖p‖ for small steps, bounded by 1)
    grad_alignment_ema    EMA of cos(g̃ₜ, mₜ₋₁): the momentum buffer before this step stands in for
                          "the previous gradient" (no extra buffer); 0 when either norm is 0
    trust_ratio           r = clamp(‖p‖/‖d‖, 0, 10) from the previous step (1 before the first step or
                          when either norm is 0) — a documented one-step lag
    gate, update_mult, trust_mix, clip_inv, beta2, ortho
                          the gate and actuators used by the latest step (for logging)
    skipped               number of steps skipped because the gradient was not finite
Per-parameter EMAs are initialised by their first observation (no bias correction needed).

Normalised sensors (each O(1), all clamped; a sensor with no data yet reads 0):
    loss              (loss_ema − loss_ref) / |loss_ref|                       clamp [−5, 5]
    loss_improvement  tanh(loss_improvement_ema / (1e-3·|loss_ref|)):  1 unit = 0.1 % of the first loss per step
    grad_norm         ln(grad_norm_ema / grad_norm_ref)                        clamp [−5, 5]
    update_ratio      log10(update_ratio_ema / 1e-3)                           clamp [−5, 5]
    grad_alignment    grad_alignment_ema                                       in [−1, 1]
    step_fraction     step / total_steps                                       clamp [0, 1]  (0 if unknown)

Gate and actuators
------------------
    g = sigmoid(sharpness · (bias + Σᵢ wᵢ·sᵢ)),  then g ← g·(1 − gate_dampen)  (OptBrain's conservative shift)
    actuator = conservative + g·(aggressive − conservative)
for update_mult, trust_mix, beta2, ortho and for clip_inv = 1/k (so that k = ∞, "off", blends smoothly).
OptBrain's per-group ``gate_scale`` multiplies update_mult and ``gate_clip`` multiplies k.
When both poles are equal the actuators equal them exactly, whatever g is.
"""

from __future__ import annotations

import math

import torch

from fusedgate.spec import SENSORS, GateSpec
from fusedgate.stack import Gate, Modulation

# global state slots
G_STEP, G_LOSS_EMA, G_LOSS_REF, G_LOSS_IMPROVEMENT, G_LOSS_SEEN = range(5)
N_GLOBAL = 5

# per-parameter slots
(S_GRAD_NORM, S_GRAD_NORM_REF, S_UPDATE_RATIO, S_ALIGNMENT, S_TRUST_RATIO,
 S_GATE, S_UPDATE_MULT, S_TRUST_MIX, S_CLIP_INV, S_BETA2, S_ORTHO, S_SKIPPED) = range(12)
N_SLOTS = 12
ACTUATOR_SLOTS = {"update_mult": S_UPDATE_MULT, "trust_mix": S_TRUST_MIX, "clip_inv": S_CLIP_INV,
                  "beta2": S_BETA2, "ortho": S_ORTHO}
ACTUATOR_SPAN = slice(S_UPDATE_MULT, S_ORTHO + 1)   # the actuator slots are consecutive, in that order

SENSOR_CLAMP = 5.0
IMPROVEMENT_UNIT = 1e-3      # relative loss improvement per step that reads as 1 (before tanh)
UPDATE_RATIO_UNIT = 1e-3     # update/param ratio that reads as 0
TRUST_RATIO_MAX = 10.0


def new_global_state(device) -> torch.Tensor:
    return torch.zeros(N_GLOBAL, dtype=torch.float32, device=device)


def new_param_sensors(device) -> torch.Tensor:
    s = torch.zeros(N_SLOTS, dtype=torch.float32, device=device)
    s[S_TRUST_RATIO] = 1.0
    return s


def observe_loss(global_state: torch.Tensor, loss: torch.Tensor, spec: GateSpec) -> None:
    """Fold one loss value into the global loss sensors, in place. A non-finite loss is ignored."""
    loss = loss.detach().reshape(()).to(device=global_state.device, dtype=torch.float32)
    finite = torch.isfinite(loss)
    seen = global_state[G_LOSS_SEEN] > 0
    prev_ema = global_state[G_LOSS_EMA]
    ema = torch.where(seen, torch.lerp(prev_ema, loss, 1.0 - spec.ema_loss), loss)
    improvement = torch.where(seen, prev_ema - ema, torch.zeros_like(loss))
    imp_ema = torch.lerp(global_state[G_LOSS_IMPROVEMENT], improvement, 1.0 - spec.ema_loss_improvement)
    imp_ema = torch.where(seen, imp_ema, torch.zeros_like(loss))
    ref = torch.where(seen, global_state[G_LOSS_REF], loss)
    new = torch.stack([ema, ref, imp_ema, global_state[G_LOSS_SEEN] + 1])
    old = global_state[G_LOSS_EMA:G_LOSS_SEEN + 1]
    old.copy_(torch.where(finite, torch.nan_to_num(new), old))


def normalised_sensors(global_state: torch.Tensor, sensors: torch.Tensor, step: torch.Tensor,
                       total_steps: int | None) -> torch.Tensor:
    """The six normalised sensors (``SENSORS`` order) for parameters with state ``sensors[..., N_SLOTS]``
    and applied-step counts ``step[...]``. Returns a tensor of shape ``sensors.shape[:-1] + (6,)``."""
    gs = global_state
    zero = torch.zeros_like(sensors[..., 0])
    seen = gs[G_LOSS_SEEN] > 0
    ref_scale = gs[G_LOSS_REF].abs() + 1e-12
    s_loss = torch.where(seen, ((gs[G_LOSS_EMA] - gs[G_LOSS_REF]) / ref_scale), 0.0)
    s_loss = s_loss.clamp(-SENSOR_CLAMP, SENSOR_CLAMP) + zero
    s_imp = torch.where(seen, torch.tanh(gs[G_LOSS_IMPROVEMENT] / (IMPROVEMENT_UNIT * ref_scale)), 0.0) + zero

    gn, gn_ref = sensors[..., S_GRAD_NORM], sensors[..., S_GRAD_NORM_REF]
    has_gn = (gn > 0) & (gn_ref > 0)
    s_gn = torch.where(has_gn, torch.log(gn.clamp_min(1e-30) / gn_ref.clamp_min(1e-30)), zero)
    s_gn = s_gn.clamp(-SENSOR_CLAMP, SENSOR_CLAMP)

    ratio = sensors[..., S_UPDATE_RATIO].clamp_min(1e-12)
    s_ur = torch.where(step > 0, torch.log10(ratio / UPDATE_RATIO_UNIT), zero).clamp(-SENSOR_CLAMP, SENSOR_CLAMP)

    s_al = sensors[..., S_ALIGNMENT].clamp(-1.0, 1.0)
    if total_steps:
        s_sf = (gs[G_STEP] / float(total_steps)).clamp(0.0, 1.0) + zero
    else:
        s_sf = zero
    return torch.stack([s_loss, s_imp, s_gn, s_ur, s_al, s_sf], dim=-1)


def gate_value(spec: GateSpec, normalised: torch.Tensor, dampen: float | torch.Tensor = 0.0) -> torch.Tensor:
    """g = sigmoid(sharpness · (bias + Σ wᵢ sᵢ)) · (1 − dampen); ``dampen`` a float or one value per parameter."""
    weights = torch.tensor(spec.gate_weights, dtype=normalised.dtype, device=normalised.device)
    z = spec.gate_bias + (normalised * weights).sum(-1)
    g = torch.sigmoid(spec.sharpness * z)
    return g if isinstance(dampen, float) and dampen == 0.0 else g * (1.0 - dampen)


def pole_values(spec: GateSpec) -> dict[str, tuple[float, float]]:
    """(conservative, aggressive) per actuator, with clip expressed as clip_inv = 1/k."""
    c, a = spec.conservative, spec.aggressive
    return {
        "update_mult": (c.update_mult, a.update_mult),
        "trust_mix": (c.trust_mix, a.trust_mix),
        "clip_inv": (1.0 / c.clip, 1.0 / a.clip),
        "beta2": (c.beta2, a.beta2),
        "ortho": (c.ortho, a.ortho),
    }


def actuators(spec: GateSpec, g: torch.Tensor, scale: float | torch.Tensor = 1.0,
              clip: float | torch.Tensor = 1.0) -> dict[str, torch.Tensor]:
    """Each actuator = conservative + g·(aggressive − conservative), in float64; then OptBrain's scale
    multiplies update_mult and its clip multiplier multiplies k (divides clip_inv). ``scale`` and ``clip``
    are floats or one value per parameter."""
    g = g.double()  # float64 scalars: an inert pole passes its exact Python value through
    out = {}
    for name, (cons, aggr) in pole_values(spec).items():
        out[name] = cons + g * (aggr - cons)
    if not (isinstance(scale, float) and scale == 1.0):
        out["update_mult"] = out["update_mult"] * scale
    if not (isinstance(clip, float) and clip == 1.0):
        out["clip_inv"] = out["clip_inv"] / clip
    return out


def step_actuators(gate: Gate, sensors: torch.Tensor, steps: torch.Tensor | None,
                   modulations: list[Modulation]) -> dict[str, torch.Tensor | float]:
    """This step's gate and actuators for P parameters with sensors ``[P, N_SLOTS]``, applied-step counts
    ``steps`` (None when unmeasured) and one OptBrain modulation each; recorded in the sensors.

    (P,) float64 tensors — or Python floats when nothing is measured and every modulation is the same (the
    poles are equal: the actuators are the pole's values whatever g is). Unmeasured, g is not evaluated
    (recorded as 0)."""
    if len(set(modulations)) == 1:
        scale, clip, dampen = modulations[0].scale, modulations[0].clip, modulations[0].dampen
        if not gate.measures:
            return _constant_actuators(gate.spec, sensors, scale, clip)
    else:
        scale, clip, dampen = modulation_tensors(modulations, sensors.device)
    if not gate.measures:
        g = torch.zeros(sensors.shape[0], dtype=torch.float32, device=sensors.device)
        return record_actuators(sensors, g, actuators(gate.spec, g, scale, clip))
    return measured_actuators(gate.spec, gate.global_state, sensors, steps, gate.total_steps, scale, clip, dampen)


def modulation_tensors(modulations: list[Modulation], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OptBrain's (scale, clip, dampen), one value per parameter: (P,) float64, float64, float32."""
    return (torch.tensor([m.scale for m in modulations], dtype=torch.float64, device=device),
            torch.tensor([m.clip for m in modulations], dtype=torch.float64, device=device),
            torch.tensor([m.dampen for m in modulations], dtype=torch.float32, device=device))


def measured_actuators(spec: GateSpec, global_state: torch.Tensor, sensors: torch.Tensor, steps: torch.Tensor,
                       total_steps: int | None, scale, clip, dampen) -> dict[str, torch.Tensor]:
    """The gate g of the normalised sensors and the actuators it gives (``actuators``), recorded in the
    sensors: tensor work only (the compiled backend compiles it)."""
    g = gate_value(spec, normalised_sensors(global_state, sensors, steps, total_steps), dampen)
    return record_actuators(sensors, g, actuators(spec, g, scale, clip))


def record_actuators(sensors: torch.Tensor, g: torch.Tensor, act: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write g and the actuators into their sensor slots; returns ``act``."""
    sensors[:, S_GATE] = g
    for name, slot in ACTUATOR_SLOTS.items():
        sensors[:, slot] = act[name].float()
    return act


def _constant_actuators(spec: GateSpec, sensors: torch.Tensor, scale: float, clip: float) -> dict[str, float]:
    """The actuators of an unmeasured spec (its poles are equal) with one modulation, as Python floats
    (``actuators`` with any g); recorded in the sensors."""
    act = {name: cons for name, (cons, _) in pole_values(spec).items()}
    act["update_mult"] *= scale
    act["clip_inv"] /= clip
    sensors[:, ACTUATOR_SPAN] = torch.tensor([act[name] for name in ACTUATOR_SLOTS], dtype=torch.float32,
                                             device=sensors.device)
    return act


SUMS = ("gg", "gm", "mm", "pp", "dd", "uu")   # the order of a step's reductions in a sums tensor


def observe_param(sensors: torch.Tensor, step: torch.Tensor, spec: GateSpec, sums: torch.Tensor,
                  applied: torch.Tensor) -> None:
    """Fold one step's reductions into parameters' sensors ``[..., N_SLOTS]``, in place, where ``applied``.

    ``sums[..., 6]`` in ``SUMS`` order: ‖g̃‖², g̃·mₜ₋₁, ‖mₜ₋₁‖², ‖pₜ₋₁‖², ‖d‖², ‖Δp‖² (fp32).
    ``step[...]`` is the applied-step count *before* this step (0 means first observation)."""
    first = step == 0
    gnorm, mnorm, pnorm, dnorm, unorm = (sums[..., SUMS.index(k)].sqrt() for k in ("gg", "mm", "pp", "dd", "uu"))
    gm = sums[..., SUMS.index("gm")]
    cos = torch.where((gnorm > 0) & (mnorm > 0), gm / (gnorm * mnorm).clamp_min(1e-30), 0.0)
    ratio = torch.where(unorm > 0, unorm / (pnorm + unorm).clamp_min(1e-30), 0.0)
    trust = torch.where((pnorm > 0) & (dnorm > 0), (pnorm / dnorm.clamp_min(1e-30)).clamp(0.0, TRUST_RATIO_MAX), 1.0)

    def ema(slot, obs, decay):
        return torch.where(first, obs, torch.lerp(sensors[..., slot], obs, 1.0 - decay))

    new = sensors.clone()
    new[..., S_GRAD_NORM] = ema(S_GRAD_NORM, gnorm, spec.ema_grad_norm)
    new[..., S_GRAD_NORM_REF] = torch.where(sensors[..., S_GRAD_NORM_REF] > 0, sensors[..., S_GRAD_NORM_REF], gnorm)
    new[..., S_UPDATE_RATIO] = ema(S_UPDATE_RATIO, ratio, spec.ema_update_ratio)
    new[..., S_ALIGNMENT] = ema(S_ALIGNMENT, cos, spec.ema_grad_alignment)
    new[..., S_TRUST_RATIO] = trust
    sensors.copy_(torch.where(applied[..., None], new, sensors))
    sensors[..., S_SKIPPED] += (~applied).float()


def describe(sensors: torch.Tensor, normalised: torch.Tensor) -> dict:
    """A host-side (synchronising) readout of one parameter's gate state, for logging."""
    values = sensors.tolist()
    norm = normalised.tolist()
    clip_inv = values[S_CLIP_INV]
    return {
        "gate": values[S_GATE],
        "update_mult": values[S_UPDATE_MULT],
        "trust_mix": values[S_TRUST_MIX],
        "clip": math.inf if clip_inv == 0 else 1.0 / clip_inv,
        "beta2": values[S_BETA2],
        "ortho": values[S_ORTHO],
        "trust_ratio": values[S_TRUST_RATIO],
        "sensors": dict(zip(SENSORS, norm)),
        "skipped": int(values[S_SKIPPED]),
    }
