"""The plain-torch FusedGate update: the source of truth the Triton kernels must match,
and the path CPU users run.

Gated matrix update (a parameter p of shape [rows, cols, ...] viewed as rows × cols; params of one
shape are processed as one stack, each matrix on its own)
---------------------------------------------------------------------------------------------------
Inputs: gradient g, state m (first moment), v (second moment), s (NorMuon second moment), decay
products P₁, P₂ (float64), group hyperparameters lr, wd, μ (``momentum`` in Muon units, ``betas[0]``
in Adam units), eps, nesterov, ns_steps, β_N (NorMuon decay: the group's ``beta2`` for
``kind='muon'``), this step's actuators A (update_mult), τ (trust_mix), k (clip; 1/k = clip_inv),
β₂, ω (ortho), plus r (trust ratio from the previous step) and G (grad-norm EMA), N = numel.

1. clip      g̃ = clamp(g, −k·G/√N, +k·G/√N)   — each element against the running gradient RMS G/√N,
             known *before* this step, so a spike is cut in the step it arrives (off at the first step,
             when G = 0, or when k = ∞)
2. moments   m ← μ·m + (1−μ)·g̃,  P₁ ← μ·P₁;    v ← β₂·v + (1−β₂)·g̃²,  P₂ ← β₂·P₂
             (P = running product of decays: 1 − P is the exact bias correction even when β₂ changes;
             v and P₂ advance only while some pole gives the Adam direction weight, ω < 1)
3. Adam      a = (m / (1−P₁)) / (√v / √(1−P₂) + eps)
4. ortho     o = Orth(u), u = lerp(g̃, m, μ) (nesterov) or m; skipped when ω ≡ 0. Orth, in order:
             MuonEq (``muon_eq``)   each row of u rescaled to the mean row norm: uᵢ ← uᵢ·(‖u‖_F/√rows)/‖uᵢ‖
             orthogonaliser         X = u/(c·‖u‖_F + ε), then X ← a·X + (b·A + c·A²)·X, A = X·Xᵀ (on the
                                    wide orientation), per iteration:
                                    ``quintic``: (a, b, c) = (3.4445, −4.7750, 2.0315) every step,
                                                 c = 1, ε = 1e-7 (Keller Jordan's Muon);
                                    ``polar_express``: the five per-iteration triples of Amsel et al.
                                                 2025 (arXiv:2505.16932) as nanochat uses them, c = 1.01,
                                                 ε = 1e-6
             Muon+ (``muon_plus``)  X ← X·√min(rows, cols)/‖X‖_F
             NorMuon (``normuon``)  q = mean of X² along the longer axis (per row when rows ≥ cols, else
                                    per column); s ← lerp(s, q, 1−β_N);  X ← X·s^(−½)·‖X‖_F/‖X·s^(−½)‖_F
                                    (the Frobenius norm is kept; arXiv:2510.05491)
5. blend     d = c_a·a + c_o·o, RMS-matched so one lr serves both directions:
               Adam units: c_a = 1−ω,                         c_o = ω · 0.2·√max(rows, cols)
               Muon units: c_a = (1−ω)·σ / (0.2·√max(rows, cols)), c_o = ω·σ,   σ = √max(1, rows/cols)
             (Newton–Schulz output has RMS ≈ 1/√max(rows, cols); Adam's update RMS is ≈ 0.2, the
             Moonlight observation. ω = 0 in Adam units is AdamW; ω = 1 in Muon units is nanochat's Muon.)
6. trust     T = (1−τ) + τ·r
7. update    decoupled:  p ← p·(1 − lr·wd) − lr·A·T·d
             cautious (``cautious_wd``):  p ← p − (lr·A·T·d + lr·σ̂·wd·p·[d·p ≥ 0]),  σ̂ = σ in Muon
             units, 1 in Adam units (nanochat's scaling: its wd is multiplied by the shape-scaled lr)
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
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fusedgate import gate as G
from fusedgate.spec import GateSpec

# Quintic Newton–Schulz coefficients (a, b, c) from Keller Jordan's Muon.
NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Polar Express: (a, b, c) for iterations 1..5 (safety factor 2e-2, cushion 2), arXiv:2505.16932.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
# (norm scale c, norm eps ε) of the pre-normalisation X = u/(c·‖u‖_F + ε)
NORMALISATION = {"quintic": (1.0, 1e-7), "polar_express": (1.01, 1e-6)}
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
    normuon_beta2: float = 0.0   # β_N: decay of the NorMuon second moment


@dataclass(frozen=True)
class Engine:
    """The spec's engine switches (host facts, shared by both poles)."""

    orthogonaliser: str = "quintic"
    muon_eq: bool = False
    muon_plus: bool = False
    normuon: bool = False
    cautious_wd: bool = False

    @classmethod
    def of(cls, spec: GateSpec) -> Engine:
        return cls(spec.orthogonaliser, spec.muon_eq, spec.muon_plus, spec.normuon, spec.cautious_wd)

    def coefficients(self, steps: int) -> list[tuple[float, float, float]]:
        """The (a, b, c) triple of each of ``steps`` iterations."""
        if self.orthogonaliser == "polar_express":
            return list(POLAR_EXPRESS[:steps])
        return [NS_COEFFS] * steps


def matrix_view_shape(shape: torch.Size) -> tuple[int, int]:
    """Rows × cols of a parameter seen as a matrix (trailing dims flattened, as Muon does for convs)."""
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    return rows, cols


def frobenius(x: torch.Tensor) -> torch.Tensor:
    """‖x‖_F of each matrix of a stack (…, rows, cols), keeping the matrix dims."""
    return x.norm(dim=(-2, -1), keepdim=True)


def polar_iteration(x: torch.Tensor, coefficients, norm_scale: float, norm_eps: float,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """X = x/(c·‖x‖_F + ε), then X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ for each (a, b, c), on the wide
    orientation; x is [rows, cols] or a stack [k, rows, cols]; computed in ``dtype``, returned in x's."""
    X = x.to(dtype)
    X = X / (frobenius(X) * norm_scale + norm_eps)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    for a, b, c in coefficients:
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X.to(x.dtype)


def newton_schulz(x: torch.Tensor, steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximate the orthogonal factor U·Vᵀ of x = U·S·Vᵀ with the quintic iteration (Keller's Muon)."""
    return polar_iteration(x, [NS_COEFFS] * steps, *NORMALISATION["quintic"], dtype)


def muon_eq(u: torch.Tensor) -> torch.Tensor:
    """MuonEq: each row rescaled to the mean row norm ‖u‖_F/√rows (row norms clamped at 1e-6)."""
    target = frobenius(u) / u.size(-2) ** 0.5
    return u * (target / u.norm(dim=-1, keepdim=True).clamp_min(1e-6))


def muon_plus(x: torch.Tensor) -> torch.Tensor:
    """Muon+: ‖X‖_F ← √min(rows, cols), the norm of a semi-orthogonal matrix."""
    return x * (min(x.size(-2), x.size(-1)) ** 0.5 / frobenius(x).clamp_min(1e-6))


def normuon_axis(rows: int, cols: int) -> int:
    """The axis NorMuon averages over: the columns (per-row moment) when rows ≥ cols, else the rows."""
    return -1 if rows >= cols else -2


def normuon_shape(rows: int, cols: int) -> tuple[int, int]:
    """The shape of one matrix's NorMuon second moment, as stored in the state (rows, 1) or (1, cols)."""
    return (rows, 1) if rows >= cols else (1, cols)


def normuon(x: torch.Tensor, second_moment: torch.Tensor, beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NorMuon on a stack x (k, rows, cols): returns (the rescaled x, the new second moment (k, ·, ·))."""
    axis = normuon_axis(x.size(-2), x.size(-1))
    q = x.square().mean(dim=axis, keepdim=True)
    norm_before = (q.sum(dim=(-2, -1), keepdim=True) * x.size(axis)).sqrt()
    second_moment = second_moment.lerp(q, 1 - beta2)
    scale = second_moment.clamp_min(1e-10).rsqrt()
    norm_after = ((q * x.size(axis)) * scale.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return x * (scale * norm_before / norm_after.clamp_min(1e-10)), second_moment


def orthogonalise(u: torch.Tensor, engine: Engine, steps: int, second_moment: torch.Tensor | None = None,
                  beta2: float = 0.0, dtype: torch.dtype = torch.float32,
                  iterate: Callable = polar_iteration) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step 4 of the module docstring on a stack u (k, rows, cols): (o in float32, the new NorMuon
    second moment or None). ``iterate`` runs the polynomial iteration (the Triton backend may pass its own)."""
    if engine.muon_eq:
        u = muon_eq(u.float())
    x = iterate(u, engine.coefficients(steps), *NORMALISATION[engine.orthogonaliser], dtype).float()
    if engine.muon_plus:
        x = muon_plus(x)
    if engine.normuon:
        x, second_moment = normuon(x, second_moment, beta2)
    return x, second_moment


def direction_coefficients(rows: int, cols: int, ortho: torch.Tensor, units: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_a, c_o): the weights of the Adam and Newton–Schulz directions (see the module docstring)."""
    match = ADAM_UPDATE_RMS * math.sqrt(max(rows, cols))
    if units == "adam":
        return 1.0 - ortho, ortho * match
    shape_scale = shape_factor(rows, cols)
    return (1.0 - ortho) * (shape_scale / match), ortho * shape_scale


def shape_factor(rows: int, cols: int) -> float:
    """σ = √max(1, rows/cols): nanochat's Muon lr scale for tall matrices."""
    return math.sqrt(max(1.0, rows / cols)) if cols else 1.0


def decay_scale(rows: int, cols: int, units: str) -> float:
    """σ̂: the factor of lr·wd in the cautious decay (σ in Muon units, 1 in Adam units)."""
    return shape_factor(rows, cols) if units == "muon" else 1.0


def new_matrix_state(p: torch.Tensor, engine: Engine | None = None) -> dict:
    state = {
        "step": torch.zeros((), dtype=torch.float32, device=p.device),
        "exp_avg": torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format),
        "exp_avg_sq": torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format),
        "m_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
        "v_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
        "sensors": G.new_param_sensors(p.device),
    }
    if engine is not None and engine.normuon:
        state["normuon_sq"] = new_normuon_state(p)
    return state


def new_normuon_state(p: torch.Tensor) -> torch.Tensor:
    """A zero NorMuon second moment for p: shape ``normuon_shape`` of its matrix view, float32."""
    return torch.zeros(normuon_shape(*matrix_view_shape(p.shape)), dtype=torch.float32, device=p.device)


def new_adamw_state(p: torch.Tensor) -> dict:
    return {
        "step": torch.zeros((), dtype=torch.float32, device=p.device),
        "exp_avg": torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format),
        "exp_avg_sq": torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format),
        "m_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
        "v_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
    }


@dataclass(frozen=True)
class StackFlags:
    """Host-side facts from the spec (False when every pole makes that work's weight exactly zero:
    ω = 0 for ``ortho``, k = ∞ for ``clip``, ω = 1 for ``adam``), so it is skipped without reading the
    device. ``host_checks``: the device is the host (CPU), so reading a flag costs nothing and the
    masking of skipped steps can be left out when every gradient is finite."""

    ortho: bool
    clip: bool
    adam: bool
    host_checks: bool = False


def _dots(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x·y for each matrix of two stacks (k, rows, cols) → (k,)."""
    k = x.size(0)
    return torch.bmm(x.reshape(k, 1, -1), y.reshape(k, -1, 1)).view(k)


def gated_matrix_stack(params: list[torch.Tensor], states: list[dict], hp: MatrixHyper, engine: Engine,
                       act: dict[str, torch.Tensor], sensors: torch.Tensor, steps: torch.Tensor, flags: StackFlags,
                       ns_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """One gated step of k parameters of one shape (see the module docstring), in place.

    ``act`` holds (k,) float64 actuators update_mult, trust_mix, clip_inv, beta2, ortho; ``sensors``
    (k, N_SLOTS) and ``steps`` (k,) the parameters' sensors and applied-step counts before this step.
    Returns (the step's reductions (k, 6) in ``gate.SUMS`` order, the (k,) bool ``applied``); the caller
    folds them into the sensors with ``gate.observe_param``."""
    k, shape = len(params), params[0].shape
    rows, cols = matrix_view_shape(shape)
    view = (k, rows, cols)
    col = lambda t: t.float().view(k, 1, 1)   # (k,) float64 scalars → float32, as a 0-d tensor would round
    P = torch.stack([p.detach() for p in params]).view(view).float()
    g = torch.stack([p.grad.detach() for p in params]).view(view).float()
    m = torch.stack([s["exp_avg"] for s in states]).view(view)
    applied = torch.isfinite(g).view(k, -1).all(1)
    masked = not (flags.host_checks and bool(applied.all()))

    if flags.clip:
        rms = sensors[:, G.S_GRAD_NORM] / math.sqrt(rows * cols)
        active = (steps > 0) & (rms > 0) & (act["clip_inv"] > 0)
        threshold = col(torch.where(active, rms / act["clip_inv"].clamp_min(1e-30), math.inf))
        g = torch.clamp(g, -threshold, threshold)

    mu = hp.momentum
    m_new = torch.lerp(m, g, 1.0 - mu)
    m_decay = torch.stack([s["m_decay_prod"] for s in states])
    p1 = m_decay * mu
    c_a, c_o = direction_coefficients(rows, cols, act["ortho"], hp.units)
    c_a = c_a / (1.0 - p1)
    trust = (1.0 - act["trust_mix"]) + act["trust_mix"] * sensors[:, G.S_TRUST_RATIO].double()
    step_size = hp.lr * act["update_mult"] * trust

    step_terms, d = [], None   # at least one direction is used: ω < 1 or ω > 0 in some pole
    if flags.adam:
        v = torch.stack([s["exp_avg_sq"] for s in states]).view(view)
        beta2 = act["beta2"]
        v_new = v * col(beta2) + col(1.0 - beta2) * g * g
        v_decay = torch.stack([s["v_decay_prod"] for s in states])
        p2 = v_decay * beta2
        adam_raw = m_new / (v_new.sqrt() / col((1.0 - p2).sqrt()) + hp.eps)   # Adam direction times (1 − P₁)
        step_terms.append(col(step_size * c_a) * adam_raw)
        d = col(c_a) * adam_raw
    if flags.ortho:
        source = torch.lerp(g, m_new, mu) if hp.nesterov else m_new
        moment = torch.stack([s["normuon_sq"] for s in states]) if engine.normuon else None
        o, moment_new = orthogonalise(source, engine, hp.ns_steps, moment, hp.normuon_beta2, ns_dtype)
        step_terms.append(col(step_size * c_o) * o)
        d = col(c_o) * o if d is None else d + col(c_o) * o
    if engine.cautious_wd and hp.weight_decay != 0.0:
        wd = hp.lr * decay_scale(rows, cols, hp.units) * hp.weight_decay
        update = step_terms[0] if len(step_terms) == 1 else step_terms[0] + step_terms[1]
        P_new = P - (update + wd * P * (d * P >= 0))
    else:
        P_new = P * (1.0 - hp.lr * hp.weight_decay)
        for term in step_terms:
            P_new = P_new - term

    sums = torch.stack([_dots(g, g), _dots(g, m), _dots(m, m), _dots(P, P), _dots(d, d),
                        _dots(P_new - P, P_new - P)], dim=1)

    def keep(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """new where the step is applied, else old (a no-op when every gradient is known finite)."""
        return torch.where(applied.view((k,) + (1,) * (new.dim() - 1)), new, old) if masked else new

    torch._foreach_copy_([p.detach() for p in params], list(keep(P_new, P).view((k,) + tuple(shape)).unbind(0)))
    torch._foreach_copy_([s["exp_avg"] for s in states], list(keep(m_new, m).view((k,) + tuple(shape)).unbind(0)))
    torch._foreach_copy_([s["m_decay_prod"] for s in states], list(keep(p1, m_decay).unbind(0)))
    if flags.adam:
        torch._foreach_copy_([s["exp_avg_sq"] for s in states],
                             list(keep(v_new, v).view((k,) + tuple(shape)).unbind(0)))
        torch._foreach_copy_([s["v_decay_prod"] for s in states], list(keep(p2, v_decay).unbind(0)))
    if flags.ortho and engine.normuon:
        torch._foreach_copy_([s["normuon_sq"] for s in states], list(keep(moment_new, moment).unbind(0)))
    torch._foreach_add_([s["step"] for s in states], list(applied.float().unbind(0)))
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
    v_new = torch.lerp(v, g.square(), 1.0 - beta2)
    p1 = state["m_decay_prod"] * beta1
    p2 = state["v_decay_prod"] * beta2
    denom = (v_new / (1.0 - p2)).sqrt() + eps
    P_new = P * (1.0 - lr * weight_decay) + (-lr / (1.0 - p1)) * m_new / denom
    m.copy_(torch.where(applied, m_new, m))
    v.copy_(torch.where(applied, v_new, v))
    state["m_decay_prod"].copy_(torch.where(applied, p1, state["m_decay_prod"]))
    state["v_decay_prod"].copy_(torch.where(applied, p2, state["v_decay_prod"]))
    state["step"].add_(applied.float())
    p.detach().copy_(torch.where(applied, P_new, P).to(p.dtype))
    return applied
