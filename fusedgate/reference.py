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

import itertools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fusedgate import gate as G
from fusedgate.spec import GateSpec
from fusedgate.stack import AdamWHyper, Gate, MatrixHyper, Stack

__all__ = ["MatrixHyper", "AdamWHyper", "Stack", "Gate"]   # re-exported: the types every backend takes

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
    """X = x/(c·‖x‖_F + ε), then X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ for each (a, b, c) — for a tall X
    the same polynomial as X ← a·X + X·(b·A + c·A²) with the smaller A = Xᵀ·X, in X's own layout (as
    nanochat computes it); x is [rows, cols] or a stack [k, rows, cols]; computed in ``dtype``, returned in x's."""
    X = x.to(dtype)
    X = X / (frobenius(X) * norm_scale + norm_eps)
    if X.size(-2) > X.size(-1):   # tall: the same polynomial on the small Gram matrix XᵀX, X kept in its layout
        for a, b, c in coefficients:
            A = X.mT @ X
            B = b * A + c * (A @ A)
            X = a * X + X @ B
    else:
        for a, b, c in coefficients:
            A = X @ X.mT
            B = b * A + c * (A @ A)
            X = a * X + B @ X
    return X.to(x.dtype)


def polar_iteration_gemm(x: torch.Tensor, coefficients, norm_scale: float, norm_eps: float,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``polar_iteration`` with each step's sums folded into its products: B = b·A + c·A·A and
    X ← a·X + B·X (X·B for a tall X) are each one GEMM C ← β·C + α·L·R (``baddbmm``), so neither sum is
    another pass over memory. The same polynomial; the GEMM's accumulation rounds differently (≈1e-6 in
    float32), so the reference keeps the plain form, bit-identical to nanochat's; the compiled backend
    uses this one."""
    X = x.to(dtype)
    X = X / (frobenius(X) * norm_scale + norm_eps)
    add_product = torch.baddbmm if X.dim() == 3 else torch.addmm
    tall = X.size(-2) > X.size(-1)
    for a, b, c in coefficients:
        A = X.mT @ X if tall else X @ X.mT
        B = add_product(A, A, A, beta=b, alpha=c)
        X = add_product(X, X, B, beta=a) if tall else add_product(X, B, X, beta=a)
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
    second_moment = second_moment.lerp(q, weight(1 - beta2, q))
    scale = second_moment.clamp_min(1e-10).rsqrt()
    norm_after = ((q * x.size(axis)) * scale.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return x * (scale * norm_before / norm_after.clamp_min(1e-10)), second_moment


def orthogonalise(u: torch.Tensor, engine: Engine, steps: int, second_moment: torch.Tensor | None = None,
                  beta2: float = 0.0, dtype: torch.dtype = torch.float32,
                  iterate: Callable = polar_iteration) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step 4 of the module docstring on a stack u (k, rows, cols): (o in float32 — float64 for a float64 u —,
    the new NorMuon second moment or None). ``iterate`` runs the polynomial iteration (the Newton–Schulz
    implementation: ``polar_iteration``, or the Triton kernels' ``polar_iteration_triton``)."""
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    if engine.muon_eq:
        u = muon_eq(u.to(work))
    x = iterate(u, engine.coefficients(steps), *NORMALISATION[engine.orthogonaliser], dtype).to(work)
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


def weight(w: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A lerp weight: a float as it is; a 0-D tensor (the compiled backend's hyperparameters, float64) in
    ``like``'s dtype, which is how torch rounds a float weight."""
    return w if isinstance(w, float) else w.to(like.dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a parameter's update and state are computed in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def new_matrix_state(p: torch.Tensor, engine: Engine | None = None, second_moment: bool = True) -> dict:
    """A gated matrix's state; ``exp_avg_sq`` only with ``second_moment`` (some pole gives ω < 1)."""
    work = compute_dtype(p.dtype)
    state = {
        "step": torch.zeros((), dtype=torch.float32, device=p.device),
        "exp_avg": torch.zeros_like(p, dtype=work, memory_format=torch.contiguous_format),
        "m_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
        "v_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
        "sensors": G.new_param_sensors(p.device),
    }
    if second_moment:
        state["exp_avg_sq"] = new_second_moment(p)
    if engine is not None and engine.normuon:
        state["normuon_sq"] = new_normuon_state(p)
    return state


def new_second_moment(p: torch.Tensor) -> torch.Tensor:
    """A zero ``exp_avg_sq`` for p (in its compute dtype)."""
    return torch.zeros_like(p, dtype=compute_dtype(p.dtype), memory_format=torch.contiguous_format)


def new_normuon_state(p: torch.Tensor) -> torch.Tensor:
    """A zero NorMuon second moment for p: shape ``normuon_shape`` of its matrix view, in its compute dtype."""
    return torch.zeros(normuon_shape(*matrix_view_shape(p.shape)), dtype=compute_dtype(p.dtype), device=p.device)


def new_adamw_state(p: torch.Tensor) -> dict:
    work = compute_dtype(p.dtype)
    return {
        "step": torch.zeros((), dtype=torch.float32, device=p.device),
        "skipped": torch.zeros((), dtype=torch.float32, device=p.device),   # steps skipped for a non-finite gradient
        "exp_avg": torch.zeros_like(p, dtype=work, memory_format=torch.contiguous_format),
        "exp_avg_sq": torch.zeros_like(p, dtype=work, memory_format=torch.contiguous_format),
        "m_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
        "v_decay_prod": torch.ones((), dtype=torch.float64, device=p.device),
    }


def pack(states: list[dict], key: str) -> torch.Tensor:
    """The states' ``key`` tensors as one stacked tensor (k, ...) whose slices *are* the states' tensors.

    The first call stacks them and replaces each state's tensor by its view into the stack, so later calls
    find the stack and return it without copying: the update then reads and writes the state in place
    (as nanochat keeps one buffer per same-shape group) while the state stays per parameter for
    ``state_dict``. A state loaded from a checkpoint is re-packed on its first step."""
    tensors = list(map(operator.itemgetter(key), states))
    base = tensors[0]._base
    if (base is None or base.dim() != tensors[0].dim() + 1 or base.size(0) != len(tensors)
            or not base.is_contiguous() or not _views_in_order(tensors, base)):
        base = torch.stack(tensors)
        for state, view in zip(states, base.unbind(0)):
            state[key] = view
    return base


def _views_in_order(tensors: list[torch.Tensor], base: torch.Tensor) -> bool:
    """Whether ``tensors[i]`` is ``base[i]`` for every i (C-level maps: ``pack`` runs on every step)."""
    first, stride = base.storage_offset(), base.stride(0)
    offsets = list(range(first, first + len(tensors) * stride, stride)) if stride else [first] * len(tensors)
    return (all(map(operator.is_, map(_BASE, tensors), itertools.repeat(base)))
            and list(map(torch.Tensor.storage_offset, tensors)) == offsets)


_BASE = operator.attrgetter("_base")


@dataclass(frozen=True)
class StackFlags:
    """Host-side facts from the spec (False when every pole makes that work's weight exactly zero:
    ω = 0 for ``ortho``, k = ∞ for ``clip``, ω = 1 for ``adam``), so it is skipped without reading the
    device. ``host_checks``: the device is the host (CPU), so reading a flag costs nothing and the
    masking of skipped steps can be left out when every gradient is finite. ``engine``: the spec's
    switches; ``ns_dtype`` the orthogonaliser's dtype (float64 stacks use float64) and ``iterate`` its
    polynomial iteration (the Newton–Schulz implementation); ``decays``: the group's weight decay is not 0.
    ``flags.engine``/``decays`` decide whether the cautious decay runs."""

    ortho: bool
    clip: bool
    adam: bool
    host_checks: bool = False
    sensors: bool = True   # False: nothing reads the sensors (see ``FusedGate.reads_sensors``), skip their sums
    engine: Engine = Engine()
    decays: bool = True    # the group's weight decay is not 0 (the cautious decay's mask is formed only then)
    ns_dtype: torch.dtype = torch.float32
    iterate: Callable = polar_iteration


def _dots(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x·y for each matrix of two stacks (k, rows, cols) → (k,)."""
    k = x.size(0)
    return torch.linalg.vecdot(x.reshape(k, -1), y.reshape(k, -1))


def _squares(x: torch.Tensor) -> torch.Tensor:
    """‖x‖² for each matrix of a stack (k, rows, cols) → (k,)."""
    return torch.linalg.vector_norm(x, dim=(-2, -1)).square()


@dataclass
class _Directions:
    """Steps 3–6 of one stack: ``terms`` the update's terms lr·A·T·c·direction (one per direction used),
    ``d`` the blended direction (``o`` alone without the Adam direction, whose c_o > 0 only scales it),
    ``o``/``c_o`` the orthogonal direction and its weight, ``updates`` the (state tensor, new value)
    pairs copied back where the step is applied."""

    terms: list
    d: torch.Tensor | None
    o: torch.Tensor | None
    c_o: torch.Tensor | float
    updates: list
    step_size: torch.Tensor | float = 1.0   # lr·A·T


def gated_matrix_stack(stack: Stack, act: dict[str, torch.Tensor | float], sensors: torch.Tensor,
                       steps: torch.Tensor | None, flags: StackFlags) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One gated step of a stack of k parameters of one shape and dtype (the module docstring), in place.

    ``act`` holds (k,) float64 actuators update_mult, trust_mix, clip_inv, beta2, ortho — or Python floats
    shared by the stack, when the sensors are not measured (then trust_mix = 0 and clip_inv = 0); ``sensors``
    (k, N_SLOTS) and ``steps`` (k,) the parameters' sensors and applied-step counts before this step.
    Returns (the step's reductions (k, 6) in ``gate.SUMS`` order or None without ``flags.sensors``, the
    (k,) bool ``applied``); the caller folds them into the sensors with ``gate.observe_param`` and advances
    the step counts. The state tensors are packed (``pack``) and updated in place."""
    P, g, moments = stacked(stack, flags)
    # finite iff the sum is: NaN and ±inf propagate through a sum (a finite gradient whose elements sum
    # past ±3.4e38 would read as non-finite and be skipped: such a step could not be applied anyway)
    applied = torch.isfinite(g.sum(dim=(-2, -1)))
    masked = not (flags.host_checks and bool(applied.all()))
    sums, P_new, updates = stack_update(P, g, moments, act, sensors, steps, stack.hyper, flags, in_place=not masked)
    write_back(stack.params, applied if masked else None, P_new, P, updates)
    return sums, applied


def stacked(stack: Stack, flags: StackFlags) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(P, g, the state's packed moments) of a stack: ``stacked_tensors`` and ``packed_moments``."""
    P, g = stacked_tensors(stack.params, stack.grads)
    return P, g, packed_moments(stack, flags)


def stacked_tensors(params: list[torch.Tensor], grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, g) of a stack, each a fresh copy (k, rows, cols) in the compute dtype."""
    k, shape = len(params), params[0].shape
    view, work = (k, *matrix_view_shape(shape)), compute_dtype(params[0].dtype)
    # (no .detach(): the optimizer steps under torch.no_grad, and each detach is one more dispatch)
    return torch.stack(params).view(view).to(work), torch.stack(grads).view(view).to(work)


def packed_moments(stack: Stack, flags: StackFlags) -> dict:
    """The state's moments of a stack, packed (``pack``): m and v viewed (k, rows, cols), NorMuon's
    (k, ·, ·), the decay products (k,)."""
    view = (len(stack.params), *matrix_view_shape(stack.params[0].shape))
    moments = {"exp_avg": pack(stack.states, "exp_avg").view(view), "m_decay": pack(stack.states, "m_decay_prod")}
    if flags.adam:
        moments.update(exp_avg_sq=pack(stack.states, "exp_avg_sq").view(view),
                       v_decay=pack(stack.states, "v_decay_prod"))
    if flags.ortho and flags.engine.normuon:
        moments["normuon"] = pack(stack.states, "normuon_sq")
    return moments


def stack_update(P: torch.Tensor, g: torch.Tensor, moments: dict, act: dict, sensors: torch.Tensor,
                 steps: torch.Tensor | None, hp: MatrixHyper, flags: StackFlags, in_place: bool = False):
    """Steps 1–8 on stacked tensors, reading nothing on the host: (the sums or None, the new P, the
    (state tensor, new value) pairs). The scalars of ``hp`` and ``act`` are floats (eager) or 0-D / (k,)
    float64 tensors (the compiled backend compiles this function); ``in_place`` advances m in place."""
    k, rows, cols = g.shape
    col = lambda t: t if isinstance(t, float) else t.to(g.dtype).view(k, 1, 1)   # (k,) → (k, 1, 1), rounded
    if flags.clip:
        _clip_(g, act["clip_inv"], sensors, steps, col)
    # 2. the sums that read the old m are taken first; then m advances (in place when nothing can be undone)
    m = moments["exp_avg"]
    old_m_sums = (_dots(g, m), _squares(m)) if flags.sensors else None
    w = weight(1.0 - hp.momentum, m)
    m_new = m.lerp_(g, w) if in_place else torch.lerp(m, g, w)
    dirs = _directions(g, m_new, moments, act, sensors, hp, flags, col)
    cautious = flags.engine.cautious_wd and flags.decays
    P_new, decrement = _decayed_update(P, dirs, hp, cautious, rows, cols)
    sums = _step_sums(g, old_m_sums, P, P_new, decrement, dirs, flags.adam) if flags.sensors else None
    return sums, P_new, ([] if in_place else [(m, m_new)]) + dirs.updates


def _clip_(g: torch.Tensor, clip_inv: torch.Tensor, sensors: torch.Tensor, steps: torch.Tensor, col,
           numel: int | None = None) -> None:
    """Step 1, in place on g (this step's own stacked copy): each element clamped to ±k·G/√N (``numel``: N
    of the whole matrix when g holds a shard of it, as under FSDP2; else g's own)."""
    rms = sensors[:, G.S_GRAD_NORM] / math.sqrt(numel if numel is not None else g.size(-2) * g.size(-1))
    active = (steps > 0) & (rms > 0) & (clip_inv > 0)
    threshold = col(torch.where(active, rms / clip_inv.clamp_min(1e-30), math.inf))
    # min/max are 3× faster than clamp with tensor bounds, and every large temporary avoided is an
    # allocation (and its page faults) saved
    torch.minimum(torch.maximum(g, -threshold, out=g), threshold, out=g)


def _directions(g: torch.Tensor, m_new: torch.Tensor, moments: dict, act: dict, sensors: torch.Tensor,
                hp: MatrixHyper, flags: StackFlags, col) -> _Directions:
    """Steps 2–6 past the first moment: P₁, the Adam direction (v, P₂ advanced), the orthogonal direction
    (NorMuon's moment advanced), the blend weights c_a, c_o and the trust-scaled step size."""
    out, source = _adam_directions(g, m_new, moments, act, sensors, hp, flags, col)
    if flags.ortho:
        moment = moments.get("normuon")
        o, moment_new = orthogonalise(source, flags.engine, hp.ns_steps, moment, hp.normuon_beta2,
                                      orthogonaliser_dtype(g, flags), flags.iterate)
        _add_orthogonal(out, o, moment, moment_new, col)
    return out


def _adam_directions(g: torch.Tensor, m_new: torch.Tensor, moments: dict, act: dict, sensors: torch.Tensor,
                     hp: MatrixHyper, flags: StackFlags, col,
                     shape: tuple[int, int] | None = None) -> tuple[_Directions, torch.Tensor | None]:
    """``_directions`` up to the orthogonaliser: (the directions with the Adam term, the orthogonaliser's
    input u — None without ``flags.ortho``). When g holds row shards of larger matrices (FSDP2,
    ``fusedgate.fsdp``), ``shape`` is the whole matrices' (rows, cols)."""
    rows, cols = (g.size(-2), g.size(-1)) if shape is None else shape
    m_decay = moments["m_decay"]
    p1 = m_decay * hp.momentum
    c_a, c_o = direction_coefficients(rows, cols, act["ortho"], hp.units)
    tau = act["trust_mix"]
    trust = 1.0 if isinstance(tau, float) and tau == 0.0 else (1.0 - tau) + tau * sensors[:, G.S_TRUST_RATIO].double()
    step_size = hp.lr * act["update_mult"] * trust
    out = _Directions(terms=[], d=None, o=None, c_o=c_o, updates=[(m_decay, p1)], step_size=step_size)
    if flags.adam:   # at least one direction is used: ω < 1 or ω > 0 in some pole
        v, v_decay, beta2 = moments["exp_avg_sq"], moments["v_decay"], act["beta2"]
        v_new = v * col(beta2) + col(1.0 - beta2) * g * g
        p2 = v_decay * beta2
        c_a = c_a / (1.0 - p1)
        adam_raw = m_new / (v_new.sqrt() / col((1.0 - p2).sqrt()) + hp.eps)   # Adam direction times (1 − P₁)
        out.terms.append(col(step_size * c_a) * adam_raw)
        out.d = col(c_a) * adam_raw
        out.updates += [(v, v_new), (v_decay, p2)]
    if not flags.ortho:
        return out, None
    return out, (torch.lerp(g, m_new, weight(hp.momentum, g)) if hp.nesterov else m_new)


def orthogonaliser_dtype(g: torch.Tensor, flags: StackFlags) -> torch.dtype:
    """The orthogonaliser's dtype: float64 for float64 stacks, else ``flags.ns_dtype``."""
    return torch.float64 if g.dtype == torch.float64 else flags.ns_dtype


def _add_orthogonal(out: _Directions, o: torch.Tensor, moment: torch.Tensor | None,
                    moment_new: torch.Tensor | None, col) -> None:
    """The orthogonal direction o into ``out``: its term, the blend d, NorMuon's moment update."""
    out.terms.append(col(out.step_size * out.c_o) * o)
    # without the Adam direction d = c_o·o with c_o > 0 is never formed: the cautious mask reads the sign
    # of o·p, and ‖d‖² = c_o²·‖o‖²
    out.o, out.d = o, (o if out.d is None else out.d + col(out.c_o) * o)
    if moment is not None:
        out.updates.append((moment, moment_new))


def _decayed_update(P: torch.Tensor, dirs: _Directions, hp: MatrixHyper, cautious: bool, rows: int,
                    cols: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step 7: (the new parameters, the cautious decrement or None for the decoupled decay)."""
    if cautious:
        wd = hp.lr * decay_scale(rows, cols, hp.units) * hp.weight_decay
        update = dirs.terms[0] if len(dirs.terms) == 1 else dirs.terms[0] + dirs.terms[1]
        decrement = update + wd * P * (dirs.d * P >= 0).to(P.dtype)
        return P - decrement, decrement   # nanochat's op order: p − (lr·o + lr·wd·p·mask)
    P_new = P * (1.0 - hp.lr * hp.weight_decay)
    for term in dirs.terms:
        P_new = P_new - term
    return P_new, None


def _step_sums(g, old_m_sums, P, P_new, decrement, dirs: _Directions, adam: bool) -> torch.Tensor:
    """Step 8: (k, 6) reductions ‖g̃‖², g̃·m₋, ‖m₋‖², ‖p₋‖², ‖d‖², ‖Δp‖² (the last up to rounding)."""
    k = g.size(0)
    dd = _squares(dirs.d) if adam else _squares(dirs.o) * torch.as_tensor(dirs.c_o, dtype=torch.float64).float() ** 2
    step_norm = _squares(decrement if decrement is not None else P_new - P)
    return torch.stack([_squares(g), *old_m_sums, _squares(P), dd.expand(k), step_norm], dim=1)


def write_back(params: list[torch.Tensor], applied: torch.Tensor | None, P_new, P, updates: list) -> None:
    """Copy the new parameters and state back where the step is applied (``applied`` None: every gradient
    is known finite, nothing to mask)."""
    k, shape = len(params), tuple(params[0].shape)

    def keep(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return new if applied is None else torch.where(applied.view((k,) + (1,) * (new.dim() - 1)), new, old)

    torch._foreach_copy_(params, list(keep(P_new, P).view((k,) + shape).unbind(0)))
    for stored, new in updates:
        stored.copy_(keep(new, stored))


def adamw_step(p: torch.Tensor, grad: torch.Tensor, state: dict, hp: AdamWHyper,
               host_checks: bool = False) -> torch.Tensor:
    """One AdamW step in nanochat's op order (the same math as torch's AdamW), in place; skipped when the
    gradient is not finite (counted in ``state['skipped']``). ``host_checks`` as in ``StackFlags``: on the host
    the finiteness is read first and the step runs in place or not at all. Returns the 0-d bool ``applied``."""
    work = compute_dtype(p.dtype)
    g = grad.detach().to(work)
    applied = torch.isfinite(g.sum())   # as in gated_matrix_stack
    if not host_checks:
        return adamw_masked(p.detach(), g, state["exp_avg"], state["exp_avg_sq"], state["m_decay_prod"],
                            state["v_decay_prod"], state["step"], state["skipped"], hp, applied)
    if bool(applied):
        p1 = state["m_decay_prod"].mul_(hp.beta1)
        p2 = state["v_decay_prod"].mul_(hp.beta2)
        P = p.detach() if p.dtype == work else p.detach().to(work)
        P.mul_(1.0 - hp.lr * hp.weight_decay)
        state["exp_avg"].lerp_(g, 1.0 - hp.beta1)
        state["exp_avg_sq"].lerp_(g.square(), 1.0 - hp.beta2)
        denom = (state["exp_avg_sq"] / (1.0 - p2)).sqrt_().add_(hp.eps)
        P.addcdiv_(state["exp_avg"], denom, value=-hp.lr / (1.0 - float(p1)))
        if P is not p:
            p.detach().copy_(P)
        state["step"].add_(1.0)
    else:
        state["skipped"].add_(1.0)
    return applied


def adamw_masked(p, g, m, v, m_decay, v_decay, step, skipped, hp: AdamWHyper, applied: torch.Tensor) -> torch.Tensor:
    """The AdamW step of ``adamw_step`` computed whatever ``applied`` says and kept only where it is true (no
    host read; the compiled backend compiles it with 0-D tensor hyperparameters). Returns ``applied``."""
    m_new = torch.lerp(m, g, weight(1.0 - hp.beta1, m))
    v_new = torch.lerp(v, g.square(), weight(1.0 - hp.beta2, v))
    p1 = m_decay * hp.beta1
    p2 = v_decay * hp.beta2
    denom = (v_new / (1.0 - p2)).sqrt() + hp.eps
    P = p.to(m.dtype)
    P_new = P * (1.0 - hp.lr * hp.weight_decay) + (-hp.lr / (1.0 - p1)) * m_new / denom
    m.copy_(torch.where(applied, m_new, m))
    v.copy_(torch.where(applied, v_new, v))
    m_decay.copy_(torch.where(applied, p1, m_decay))
    v_decay.copy_(torch.where(applied, p2, v_decay))
    step.add_(applied.float())
    skipped.add_((~applied).float())
    p.copy_(torch.where(applied, P_new, P))
    return applied


# ---------------------------------------------------------------------------------------------- the backend
def gated_step(stacks: list[Stack], gate: Gate, *, iterate: Callable = polar_iteration,
               cache: dict | None = None) -> None:
    """The reference backend of ``fusedgate.functional.gated_step``: every stack's step, in place.

    The gated stacks' gate and sensor EMAs are computed for all their matrices at once (state packed,
    see ``pack``), the update per run of same-shape, same-dtype matrices (``gated_matrix_stack``); the
    AdamW stacks parameter by parameter (``adamw_step``). ``iterate``: the Newton–Schulz implementation.
    ``cache`` is unused here (the Triton backend keeps its launch tables in it): every backend takes the
    same arguments."""
    step_stacks(stacks, gate, iterate, StepFunctions())


@dataclass(frozen=True)
class StepFunctions:
    """The tensor work ``step_stacks`` orchestrates, by contract: ``run_step`` that of ``gated_matrix_stack``,
    ``adamw`` that of ``adamw_step``, ``actuators`` that of ``gate.step_actuators``, ``observe`` that of
    ``gate.observe_param``. The reference's own by default; the compiled backend passes compiled ones."""

    run_step: Callable = gated_matrix_stack
    adamw: Callable = adamw_step
    actuators: Callable = G.step_actuators
    observe: Callable = G.observe_param
    schedule: Callable | None = None   # ``_gated_stacks``' order of the run steps (None: one after the other)


def step_stacks(stacks: list[Stack], gate: Gate, iterate: Callable, fns: StepFunctions) -> None:
    """The reference backend's orchestration, with its tensor work ``fns`` (``StepFunctions``)."""
    gated = [stack for stack in stacks if stack.gated and stack.params]
    if gated:
        _gated_stacks(gated, gate, iterate, fns)
    for stack in stacks:
        if not stack.gated:
            host_checks = bool(stack.params) and stack.params[0].device.type == "cpu"
            for p, grad, state in zip(stack.params, stack.grads, stack.states):
                fns.adamw(p, grad, state, stack.hyper, host_checks)


def _gated_stacks(stacks: list[Stack], gate: Gate, iterate: Callable, fns: StepFunctions) -> None:
    """The gate of every gated stack, then ``fns.run_step`` on each same-shape run and the sensors folded.
    ``fns.schedule(run_step, calls)`` returns the runs' (sums, applied) (None: one call after the other;
    FSDP2 interleaves them to overlap their collectives)."""
    states = [state for stack in stacks for state in stack.states]
    device = stacks[0].params[0].device
    sensors = pack(states, "sensors")
    # applied-step counts before this step (the update advances the packed counts); read by the gate only
    steps = pack(states, "step").clone() if gate.measures else None
    act = fns.actuators(gate, sensors, steps, [stack.modulation for stack in stacks for _ in stack.params])
    ortho, adam, clip = gate.uses
    flags = dict(ortho=ortho, clip=clip, adam=adam, host_checks=device.type == "cpu", sensors=gate.measures,
                 engine=Engine.of(gate.spec), ns_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
                 iterate=iterate)
    sums = torch.empty(len(states), len(G.SUMS), dtype=torch.float32, device=device)
    applied = torch.empty(len(states), dtype=torch.bool, device=device)
    offset, where, calls = 0, [], []
    for stack in stacks:
        stack_flags = StackFlags(**flags, decays=float(stack.hyper.weight_decay) != 0.0)
        for run in same_shape_runs(stack.params):
            at = slice(offset + run[0], offset + run[-1] + 1)
            if len(run) != run[-1] - run[0] + 1:
                at = torch.tensor([offset + i for i in run], device=device)
            run_act = {k: v if isinstance(v, float) else v[at] for k, v in act.items()}
            where.append(at)
            calls.append((take(stack, run), run_act, sensors[at], None if steps is None else steps[at], stack_flags))
        offset += len(stack.params)
    results = [fns.run_step(*call) for call in calls] if fns.schedule is None else fns.schedule(fns.run_step, calls)
    for at, (s, a) in zip(where, results):
        if gate.measures:
            sums[at] = s.to(sums.dtype)   # a float64 run's sums (an index put does not cast)
        applied[at] = a
    if gate.measures:
        fns.observe(sensors, steps, gate.spec, sums, applied)
    if flags["host_checks"] and bool(applied.all()):
        pack(states, "step").add_(1.0)
    else:
        if not gate.measures:
            sensors[:, G.S_SKIPPED] += (~applied).float()
        pack(states, "step").add_(applied.float())


def same_shape_runs(params: list[torch.Tensor]) -> list[list[int]]:
    """Indices of ``params`` grouped by shape and dtype (first-seen order; consecutive when the group's
    params of one shape are)."""
    runs: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        runs.setdefault((tuple(p.shape), p.dtype), []).append(i)
    return list(runs.values())


def take(stack: Stack, indices: list[int]) -> Stack:
    """The sub-stack of ``stack`` at ``indices``."""
    return Stack([stack.params[i] for i in indices], [stack.grads[i] for i in indices],
                 [stack.states[i] for i in indices], stack.hyper, stack.modulation)
