"""The plain-torch FusedGate update: the source of truth the Triton kernels must match,
and the path CPU users run.

Gated matrix update (one parameter p of shape [rows, cols, ...] viewed as rows × cols)
---------------------------------------------------------------------------------------
Inputs: gradient g, state m (first moment), v (second moment), decay products P₁, P₂ (float64),
group hyperparameters lr, wd, μ (``momentum`` in Muon units, ``betas[0]`` in Adam units), eps,
nesterov, ns_steps, and this step's actuators A (update_mult), τ (trust_mix), k (clip; 1/k = clip_inv),
β₂, ω (ortho), plus r (trust ratio from the previous step) and G (grad-norm EMA), N = numel.

1. clip      g̃ = clamp(g, −k·G/√N, +k·G/√N)   — each element against the running gradient RMS G/√N,
             known *before* this step, so a spike is cut in the step it arrives (off at the first step,
             when G = 0, or when k = ∞)
2. moments   m ← μ·m + (1−μ)·g̃,  P₁ ← μ·P₁;    v ← β₂·v + (1−β₂)·g̃²,  P₂ ← β₂·P₂
             (P = running product of decays: 1 − P is the exact bias correction even when β₂ changes)
3. Adam      a = (m / (1−P₁)) / (√v / √(1−P₂) + eps)
4. ortho     o = NS₅(nesterov ? lerp(g̃, m, μ) : m)   — quintic Newton–Schulz (skipped when ω ≡ 0)
5. blend     d = c_a·a + c_o·o, RMS-matched so one lr serves both directions:
               Adam units: c_a = 1−ω,                         c_o = ω · 0.2·√max(rows, cols)
               Muon units: c_a = (1−ω)·s / (0.2·√max(rows, cols)), c_o = ω·s,   s = √max(1, rows/cols)
             (Newton–Schulz output has RMS ≈ 1/√max(rows, cols); Adam's update RMS is ≈ 0.2, the
             Moonlight observation. ω = 0 in Adam units is AdamW; ω = 1 in Muon units is nanochat's Muon.)
6. trust     T = (1−τ) + τ·r
7. update    p ← p·(1 − lr·wd) − lr·A·T·d
8. sensors   ‖g̃‖², g̃·m₋, ‖m₋‖², ‖p₋‖², ‖d‖², ‖Δp‖² (m₋, p₋: before this step), returned for
             ``gate.observe_param``.
A non-finite gradient skips the whole step for that parameter (state untouched, counted).

AdamW (every non-matrix parameter and every ``kind='adamw'`` group): torch's AdamW formula,
    p ← p·(1 − lr·wd);  m ← lerp(m, g, 1−β₁);  v ← β₂·v + (1−β₂)·g²
    p ← p − (lr/(1−β₁ᵗ)) · m / (√v/√(1−β₂ᵗ) + eps)
with the same non-finite skip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fusedgate import gate as G

# Quintic Newton–Schulz coefficients (a, b, c) from Keller Jordan's Muon.
NS_COEFFS = (3.4445, -4.7750, 2.0315)
ADAM_UPDATE_RMS = 0.2


@dataclass(frozen=True)
class MatrixHyper:
    """Group hyperparameters of one gated step (host floats: read from param_groups)."""

    lr: float
    weight_decay: float
    momentum: float   # μ: decay of the first moment and the Nesterov blend
    eps: float
    nesterov: bool
    ns_steps: int
    units: str        # "adam" | "muon"


def matrix_view_shape(shape: torch.Size) -> tuple[int, int]:
    """Rows × cols of a parameter seen as a matrix (trailing dims flattened, as Muon does for convs)."""
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    return rows, cols


def newton_schulz(x: torch.Tensor, steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximate the orthogonal factor U·Vᵀ of x = U·S·Vᵀ with the quintic iteration
    X ← a·X + (b·A + c·A²)·X, A = X·Xᵀ, after X = x/‖x‖_F (works on the wide orientation)."""
    a, b, c = NS_COEFFS
    X = x.to(dtype)
    X = X / (X.norm() + 1e-7)
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.mT
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X.to(x.dtype)


def direction_coefficients(rows: int, cols: int, ortho: torch.Tensor, units: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_a, c_o): the weights of the Adam and Newton–Schulz directions (see the module docstring)."""
    match = ADAM_UPDATE_RMS * math.sqrt(max(rows, cols))
    if units == "adam":
        return 1.0 - ortho, ortho * match
    shape_scale = math.sqrt(max(1.0, rows / cols))
    return (1.0 - ortho) * (shape_scale / match), ortho * shape_scale


def new_matrix_state(p: torch.Tensor) -> dict:
    return {
        "step": torch.zeros((), dtype=torch.float32, device=p.device),
        "exp_avg": torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format),
        "exp_avg_sq": torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format),
        "m_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
        "v_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
        "sensors": G.new_param_sensors(p.device),
    }


def new_adamw_state(p: torch.Tensor) -> dict:
    return {
        "step": torch.zeros((), dtype=torch.float32, device=p.device),
        "exp_avg": torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format),
        "exp_avg_sq": torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format),
        "m_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
        "v_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
    }


def gated_matrix_step(p: torch.Tensor, grad: torch.Tensor, state: dict, hp: MatrixHyper,
                      act: dict[str, torch.Tensor], use_ortho: bool, use_clip: bool,
                      ns_dtype: torch.dtype = torch.float32,
                      use_adam: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One gated step of one matrix parameter, in place (see the module docstring for the math).
    Returns (the step's reductions in ``gate.SUMS`` order, the 0-d bool ``applied``); the caller folds
    them into the sensors with ``gate.observe_param`` (for a whole group at once).

    ``act`` holds 0-d tensors update_mult, trust_mix, clip_inv, beta2, ortho. ``use_ortho`` /
    ``use_clip`` / ``use_adam`` are host-side facts from the spec (False when every pole has ω = 0 /
    k = ∞ / ω = 1), so work whose weight is exactly zero is skipped without reading the device.
    (v is still updated when the Adam direction is unused, so a later spec can use it.)"""
    sensors, step = state["sensors"], state["step"]
    m, v = state["exp_avg"], state["exp_avg_sq"]
    P = p.detach().float()
    g = grad.detach().float()
    applied = torch.isfinite(g).all()
    numel = p.numel()
    rows, cols = matrix_view_shape(p.shape)

    if use_clip:
        rms = sensors[G.S_GRAD_NORM] / math.sqrt(numel)
        active = (step > 0) & (rms > 0) & (act["clip_inv"] > 0)
        threshold = torch.where(active, rms / act["clip_inv"].clamp_min(1e-30), math.inf)
        g = torch.clamp(g, -threshold, threshold)

    mu, beta2 = hp.momentum, act["beta2"]
    m_new = torch.lerp(m, g, 1.0 - mu)
    v_new = v * beta2 + (1.0 - beta2) * g * g
    p1 = state["m_decay_prod"] * mu
    p2 = state["v_decay_prod"] * beta2

    # Scalar coefficients are folded in float64 first, so each direction touches the tensor once
    # (torch's AdamW does the same with lr / bias_correction1).
    c_a, c_o = direction_coefficients(rows, cols, act["ortho"], hp.units)
    c_a = c_a / (1.0 - p1)
    trust = (1.0 - act["trust_mix"]) + act["trust_mix"] * sensors[G.S_TRUST_RATIO].double()
    step_size = hp.lr * act["update_mult"] * trust
    P_new = P * (1.0 - hp.lr * hp.weight_decay)
    d = torch.zeros_like(P)
    if use_adam:
        adam_raw = m_new / (v_new.sqrt() / (1.0 - p2).sqrt() + hp.eps)   # Adam direction times (1 − P₁)
        P_new = P_new - (step_size * c_a) * adam_raw
        d = c_a * adam_raw
    if use_ortho:
        source = torch.lerp(g, m_new, mu) if hp.nesterov else m_new
        ortho = newton_schulz(source.reshape(rows, cols), hp.ns_steps, ns_dtype).reshape(p.shape).float()
        P_new = P_new - (step_size * c_o) * ortho
        d = d + c_o * ortho

    dot = lambda x, y: torch.dot(x.reshape(-1), y.reshape(-1))
    delta = P_new - P
    sums = torch.stack([dot(g, g), dot(g, m), dot(m, m), dot(P, P), dot(d, d), dot(delta, delta)])

    m.copy_(torch.where(applied, m_new, m))
    v.copy_(torch.where(applied, v_new, v))
    state["m_decay_prod"].copy_(torch.where(applied, p1, state["m_decay_prod"]))
    state["v_decay_prod"].copy_(torch.where(applied, p2, state["v_decay_prod"]))
    step.add_(applied.float())
    p.detach().copy_(torch.where(applied, P_new, P).to(p.dtype))
    return sums, applied


def adamw_step(p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, betas: tuple[float, float],
               eps: float, weight_decay: float) -> torch.Tensor:
    """One AdamW step (torch's formula), in place; skipped when the gradient is not finite.
    Returns the 0-d bool ``applied``."""
    beta1, beta2 = betas
    P = p.detach().float()
    g = grad.detach().float()
    applied = torch.isfinite(g).all()
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m_new = torch.lerp(m, g, 1.0 - beta1)
    v_new = v * beta2 + (1.0 - beta2) * g * g
    p1 = state["m_decay_prod"] * beta1
    p2 = state["v_decay_prod"] * beta2
    denom = v_new.sqrt() / (1.0 - p2).sqrt() + eps
    P_new = P * (1.0 - lr * weight_decay) - (lr / (1.0 - p1)) * (m_new / denom)
    m.copy_(torch.where(applied, m_new, m))
    v.copy_(torch.where(applied, v_new, v))
    state["m_decay_prod"].copy_(torch.where(applied, p1, state["m_decay_prod"]))
    state["v_decay_prod"].copy_(torch.where(applied, p2, state["v_decay_prod"]))
    state["step"].add_(applied.float())
    p.detach().copy_(torch.where(applied, P_new, P).to(p.dtype))
    return applied
