"""Per-parameter scalar kernels (one Triton program per parameter; a few dozen flops each).

``gate_kernel``      before the element-wise pass: finiteness of the gradient (from the per-chunk flags),
                     normalised sensors, gate, actuators, decay products and the coefficient-table row
                     (the same formulas as ``fusedgate.gate`` and ``fusedgate.reference``).
``adamw_kernel``     the same for AdamW params: finiteness, decay products, step, coefficients.
``finalize_kernel``  after the pass: sums the chunks' partial sums and folds them into the sensors
                     (``fusedgate.gate.observe_param``), then counts the step (or the skip).
``global_kernel``    before everything (one program): the global step count and the loss sensors
                     (``fusedgate.gate.observe_loss``) — one launch where the torch form takes about twenty.
``param_flags_kernel``, ``param_sums_kernel``  under FSDP2 (``fusedgate.kernels.sharded``): the per-parameter
                     finiteness flags and sums of the local chunks, all-reduced before ``gate_kernel`` and
                     ``finalize_kernel`` read them as one chunk per parameter.

Float64 scalars. Triton passes Python floats as float32, so the float64 host values the reference
uses (lr, μ, the modulation) arrive as a pair (hi, lo) of float32 with hi + lo = x to ~1e-16, and
the pole values sit in a small float64 device table. Actuators, decay products and the step size are
formed in float64, as in the reference, and rounded to float32 once, where the reference's torch
ops round them (multiplying a float32 tensor). The normalised sensors and the gate are float32, as in
the reference; tanh, log and sigmoid are spelled out with exp/log and differ from torch's by ~1e-7.
"""

import triton
import triton.language as tl

from fusedgate import gate as G
from fusedgate.kernels import slots as S
from fusedgate.kernels._interpret import helper, library, loop_bound

_sum = library(tl.sum)
_max = library(tl.max)
_zeros = library(tl.zeros)

T_SENSORS = tl.constexpr(S.T_SENSORS)
T_STEP = tl.constexpr(S.T_STEP)
T_M_DECAY = tl.constexpr(S.T_M_DECAY)
T_V_DECAY = tl.constexpr(S.T_V_DECAY)
N_PTR = tl.constexpr(S.N_PTR)
N_COEF = tl.constexpr(S.N_COEF)
N_PS = tl.constexpr(S.N_PS)
N_STATIC = tl.constexpr(S.N_STATIC)
ST_SQRT_NUMEL = tl.constexpr(S.ST_SQRT_NUMEL)
ST_ADAM_BASE = tl.constexpr(S.ST_ADAM_BASE)
ST_ORTHO_BASE = tl.constexpr(S.ST_ORTHO_BASE)
ST_DECAY_SCALE = tl.constexpr(S.ST_DECAY_SCALE)
C_BC2 = tl.constexpr(S.C_BC2)
C_WD = tl.constexpr(S.C_WD)

G_STEP = tl.constexpr(G.G_STEP)
G_LOSS_EMA = tl.constexpr(G.G_LOSS_EMA)
G_LOSS_REF = tl.constexpr(G.G_LOSS_REF)
G_LOSS_IMPROVEMENT = tl.constexpr(G.G_LOSS_IMPROVEMENT)
G_LOSS_SEEN = tl.constexpr(G.G_LOSS_SEEN)
S_GRAD_NORM = tl.constexpr(G.S_GRAD_NORM)
S_GRAD_NORM_REF = tl.constexpr(G.S_GRAD_NORM_REF)
S_UPDATE_RATIO = tl.constexpr(G.S_UPDATE_RATIO)
S_ALIGNMENT = tl.constexpr(G.S_ALIGNMENT)
S_TRUST_RATIO = tl.constexpr(G.S_TRUST_RATIO)
S_GATE = tl.constexpr(G.S_GATE)
S_UPDATE_MULT = tl.constexpr(G.S_UPDATE_MULT)
S_TRUST_MIX = tl.constexpr(G.S_TRUST_MIX)
S_CLIP_INV = tl.constexpr(G.S_CLIP_INV)
S_BETA2 = tl.constexpr(G.S_BETA2)
S_ORTHO = tl.constexpr(G.S_ORTHO)
S_SKIPPED = tl.constexpr(G.S_SKIPPED)
SENSOR_CLAMP = tl.constexpr(G.SENSOR_CLAMP)
IMPROVEMENT_UNIT = tl.constexpr(G.IMPROVEMENT_UNIT)
INV_UPDATE_RATIO_UNIT = tl.constexpr(1.0 / G.UPDATE_RATIO_UNIT)
TRUST_RATIO_MAX = tl.constexpr(G.TRUST_RATIO_MAX)
FP32_MAX = tl.constexpr(3.4028234663852886e38)
INV_LN10 = tl.constexpr(0.43429448190325176)


@helper
def _f64(hi, lo):
    """The float64 value hi + lo of a (float32, float32) pair."""
    return (tl.full([], 0.0, tl.float64) + hi) + lo


@helper
def _lerp(a, b, w):
    """torch.lerp with a float32 weight, bit for bit: fma(w, b − a, a) for w < 0.5, else fma(w − 1, b − a, b)
    (``step_kernels._lerp``, with w − 1 formed here)."""
    small = w < 0.5
    return tl.fma(tl.where(small, w, w - 1.0), b - a, tl.where(small, a, b))


@helper
def _clamp(x, lo, hi):
    return tl.minimum(tl.maximum(x, lo), hi)


@helper
def _tanh(x):
    """tanh in float32: odd Taylor series below |x| = 0.1 (error < 1e-10), (1 − e^{−2|x|})/(1 + e^{−2|x|}) above."""
    ax = tl.abs(x)
    x2 = x * x
    series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    return tl.where(ax < 0.1, series, tl.where(x < 0, -big, big))


@helper
def _applied(chunk_start, flags, i, FBLOCK: tl.constexpr):
    """True when no chunk of parameter i flagged a non-finite gradient element."""
    c0 = tl.load(chunk_start + i)
    c1 = tl.load(chunk_start + i + 1)
    bad = _zeros((FBLOCK,), tl.int32)
    for c in range(loop_bound(c0), loop_bound(c1), FBLOCK):
        offs = c + tl.arange(0, FBLOCK)
        bad = tl.maximum(bad, tl.load(flags + offs, mask=offs < c1, other=0))
    return _max(bad, axis=0) == 0


@helper
def _gate(global_state, sensors, step, total_steps, gate_bias, sharpness, dampen_keep,
          w_loss, w_imp, w_gn, w_ur, w_al, w_sf):
    """fusedgate.gate.normalised_sensors followed by gate_value (float32)."""
    seen = tl.load(global_state + G_LOSS_SEEN) > 0
    loss_ref = tl.load(global_state + G_LOSS_REF)
    ref_scale = tl.abs(loss_ref) + 1e-12
    s_loss = _clamp((tl.load(global_state + G_LOSS_EMA) - loss_ref) / ref_scale, -SENSOR_CLAMP, SENSOR_CLAMP)
    s_loss = tl.where(seen, s_loss, 0.0)
    s_imp = _tanh(tl.load(global_state + G_LOSS_IMPROVEMENT) / (IMPROVEMENT_UNIT * ref_scale))
    s_imp = tl.where(seen, s_imp, 0.0)

    gn = tl.load(sensors + S_GRAD_NORM)
    gn_ref = tl.load(sensors + S_GRAD_NORM_REF)
    s_gn = tl.log(tl.maximum(gn, 1e-30) / tl.maximum(gn_ref, 1e-30))
    s_gn = _clamp(tl.where((gn > 0) & (gn_ref > 0), s_gn, 0.0), -SENSOR_CLAMP, SENSOR_CLAMP)

    ratio = tl.maximum(tl.load(sensors + S_UPDATE_RATIO), 1e-12)
    s_ur = tl.log(ratio * INV_UPDATE_RATIO_UNIT) * INV_LN10
    s_ur = _clamp(tl.where(step > 0, s_ur, 0.0), -SENSOR_CLAMP, SENSOR_CLAMP)

    s_al = _clamp(tl.load(sensors + S_ALIGNMENT), -1.0, 1.0)
    s_sf = _clamp(tl.load(global_state + G_STEP) / tl.maximum(total_steps, 1.0), 0.0, 1.0)
    s_sf = tl.where(total_steps > 0, s_sf, 0.0)

    z = gate_bias + (s_loss * w_loss + s_imp * w_imp + s_gn * w_gn + s_ur * w_ur + s_al * w_al + s_sf * w_sf)
    return dampen_keep / (1.0 + tl.exp(-(sharpness * z)))


@triton.jit
def gate_kernel(ptrs, chunk_start, flags, static64, poles64, coefs, global_state,
                total_steps, gate_bias, sharpness, dampen_keep, w_loss, w_imp, w_gn, w_ur, w_al, w_sf,
                scale_hi, scale_lo, clip_hi, clip_lo, lr_hi, lr_lo, mu_hi, mu_lo, lr_wd_hi, lr_wd_lo,
                USE_ADAM: tl.constexpr, FBLOCK: tl.constexpr):
    """Gate, actuators and this step's coefficients of parameter ``program_id``; records the gate and
    actuators in its sensors (always) and its new decay products (when the gradient is finite; P₂ only
    with USE_ADAM, as v is only advanced then). C_WD = lr·wd·σ̂ (the cautious decay's coefficient).

    poles64 = [conservative ×5, aggressive − conservative ×5] for update_mult, trust_mix, clip_inv,
    beta2, ortho (fusedgate.gate.pole_values order)."""
    i = tl.program_id(0)
    row = ptrs + i * N_PTR
    sensors = tl.load(row + T_SENSORS).to(tl.pointer_type(tl.float32))
    step = tl.load(tl.load(row + T_STEP).to(tl.pointer_type(tl.float32)))
    m_decay_ptr = tl.load(row + T_M_DECAY).to(tl.pointer_type(tl.float64))
    v_decay_ptr = tl.load(row + T_V_DECAY).to(tl.pointer_type(tl.float64))
    applied = _applied(chunk_start, flags, i, FBLOCK)

    g = _gate(global_state, sensors, step, total_steps, gate_bias, sharpness, dampen_keep,
              w_loss, w_imp, w_gn, w_ur, w_al, w_sf)
    g64 = g.to(tl.float64)
    update_mult = (tl.load(poles64 + 0) + g64 * tl.load(poles64 + 5)) * _f64(scale_hi, scale_lo)
    trust_mix = tl.load(poles64 + 1) + g64 * tl.load(poles64 + 6)
    clip_inv = (tl.load(poles64 + 2) + g64 * tl.load(poles64 + 7)) / _f64(clip_hi, clip_lo)
    beta2 = tl.load(poles64 + 3) + g64 * tl.load(poles64 + 8)
    ortho = tl.load(poles64 + 4) + g64 * tl.load(poles64 + 9)
    tl.store(sensors + S_GATE, g)
    tl.store(sensors + S_UPDATE_MULT, update_mult.to(tl.float32))
    tl.store(sensors + S_TRUST_MIX, trust_mix.to(tl.float32))
    tl.store(sensors + S_CLIP_INV, clip_inv.to(tl.float32))
    tl.store(sensors + S_BETA2, beta2.to(tl.float32))
    tl.store(sensors + S_ORTHO, ortho.to(tl.float32))

    # clip threshold k·G/√N against the running gradient RMS (off on the first step, at G = 0, at k = ∞)
    st = static64 + i * N_STATIC
    rms = tl.load(sensors + S_GRAD_NORM) / tl.load(st + ST_SQRT_NUMEL).to(tl.float32)
    active = (step > 0) & (rms > 0) & (clip_inv > 0)
    threshold = tl.where(active, rms.to(tl.float64) / tl.maximum(clip_inv, 1e-30), FP32_MAX)
    threshold = tl.minimum(threshold, FP32_MAX)   # FP32_MAX: off (clamping a finite g to ±FP32_MAX is a no-op)

    p1 = tl.load(m_decay_ptr) * _f64(mu_hi, mu_lo)
    p2 = tl.load(v_decay_ptr) * beta2
    tl.store(m_decay_ptr, p1, mask=applied)
    if USE_ADAM:
        tl.store(v_decay_ptr, p2, mask=applied)
    trust = (1.0 - trust_mix) + trust_mix * tl.load(sensors + S_TRUST_RATIO).to(tl.float64)
    step_size = _f64(lr_hi, lr_lo) * update_mult * trust
    c_a = (1.0 - ortho) * tl.load(st + ST_ADAM_BASE) / (1.0 - p1)
    c_o = ortho * tl.load(st + ST_ORTHO_BASE)

    cf = coefs + i * N_COEF
    tl.store(cf + 0, applied.to(tl.float32))
    tl.store(cf + 1, threshold.to(tl.float32))
    tl.store(cf + 2, beta2.to(tl.float32))
    tl.store(cf + 3, (1.0 - beta2).to(tl.float32))
    tl.store(cf + 4, tl.sqrt(1.0 - p2).to(tl.float32))
    tl.store(cf + 5, (step_size * c_a).to(tl.float32))
    tl.store(cf + 6, c_a.to(tl.float32))
    tl.store(cf + 7, (step_size * c_o).to(tl.float32))
    tl.store(cf + 8, c_o.to(tl.float32))
    tl.store(cf + C_WD, (_f64(lr_wd_hi, lr_wd_lo) * tl.load(st + ST_DECAY_SCALE)).to(tl.float32))


@triton.jit
def adamw_kernel(ptrs, chunk_start, flags, coefs, beta2, one_minus_beta2,
                 lr_hi, lr_lo, beta1_hi, beta1_lo, beta2_hi, beta2_lo, FBLOCK: tl.constexpr):
    """AdamW scalars of parameter ``program_id``: P₁ ← β₁·P₁, P₂ ← β₂·P₂, step += 1 (when the gradient
    is finite, else skipped += 1, at the pointer table's sensors column); coefficients −lr/(1 − P₁) and 1 − P₂."""
    i = tl.program_id(0)
    row = ptrs + i * N_PTR
    step_ptr = tl.load(row + T_STEP).to(tl.pointer_type(tl.float32))
    m_decay_ptr = tl.load(row + T_M_DECAY).to(tl.pointer_type(tl.float64))
    v_decay_ptr = tl.load(row + T_V_DECAY).to(tl.pointer_type(tl.float64))
    applied = _applied(chunk_start, flags, i, FBLOCK)
    p1 = tl.load(m_decay_ptr) * _f64(beta1_hi, beta1_lo)
    p2 = tl.load(v_decay_ptr) * _f64(beta2_hi, beta2_lo)
    tl.store(m_decay_ptr, p1, mask=applied)
    tl.store(v_decay_ptr, p2, mask=applied)
    tl.store(step_ptr, tl.load(step_ptr) + 1.0, mask=applied)
    skipped_ptr = tl.load(row + T_SENSORS).to(tl.pointer_type(tl.float32))
    tl.store(skipped_ptr, tl.load(skipped_ptr) + 1.0, mask=~applied)
    cf = coefs + i * N_COEF
    tl.store(cf + 0, applied.to(tl.float32))
    tl.store(cf + 2, beta2)
    tl.store(cf + 3, one_minus_beta2)
    tl.store(cf + C_BC2, (1.0 - p2).to(tl.float32))
    tl.store(cf + 5, (-_f64(lr_hi, lr_lo) / (1.0 - p1)).to(tl.float32))


@helper
def _param_sums(chunk_start, partials, i, FBLOCK: tl.constexpr):
    """(column indices, the N_PS column sums of parameter i's chunk rows of ``partials``)."""
    c0 = tl.load(chunk_start + i)
    c1 = tl.load(chunk_start + i + 1)
    cols = tl.arange(0, N_PS)
    acc = _zeros((FBLOCK, N_PS), tl.float32)
    for c in range(loop_bound(c0), loop_bound(c1), FBLOCK):
        rows = c + tl.arange(0, FBLOCK)
        acc += tl.load(partials + rows[:, None] * N_PS + cols[None, :], mask=(rows < c1)[:, None], other=0.0)
    return cols, _sum(acc, axis=0)


@triton.jit
def param_sums_kernel(chunk_start, partials, out, FBLOCK: tl.constexpr):
    """out[i, :] = Σ over parameter i's chunks of their partial sums (``finalize_kernel``'s first half, for
    FSDP2: the sums over the local rows are all-reduced, then folded by ``finalize_kernel`` with one row per
    parameter)."""
    i = tl.program_id(0)
    cols, sums = _param_sums(chunk_start, partials, i, FBLOCK)
    tl.store(out + i * N_PS + cols, sums)


@triton.jit
def param_flags_kernel(chunk_start, flags, out, FBLOCK: tl.constexpr):
    """out[i] = 1 when a chunk of parameter i flagged a non-finite gradient element, else 0 (``gate_kernel``'s
    test, for FSDP2: the local flags are all-reduced (MAX), then read by ``gate_kernel`` one per parameter)."""
    i = tl.program_id(0)
    tl.store(out + i, 1 - _applied(chunk_start, flags, i, FBLOCK).to(tl.int32))


@triton.jit
def finalize_kernel(ptrs, chunk_start, partials, coefs, w_grad_norm, w_update_ratio, w_alignment, measure,
                    FBLOCK: tl.constexpr):
    """fusedgate.gate.observe_param for parameter ``program_id`` from the sum of its chunks' partial sums;
    then step += 1 (applied) or skipped += 1. ``w_*`` are the EMA weights 1 − decay. ``measure`` = 0: the
    spec reads no sensor (``FusedGate.reads_sensors``), they are left as they are."""
    i = tl.program_id(0)
    row = ptrs + i * N_PTR
    sensors = tl.load(row + T_SENSORS).to(tl.pointer_type(tl.float32))
    step_ptr = tl.load(row + T_STEP).to(tl.pointer_type(tl.float32))
    applied = tl.load(coefs + i * N_COEF) != 0
    cols, sums = _param_sums(chunk_start, partials, i, FBLOCK)
    gg = _sum(tl.where(cols == 0, sums, 0.0), axis=0)
    gm = _sum(tl.where(cols == 1, sums, 0.0), axis=0)
    mm = _sum(tl.where(cols == 2, sums, 0.0), axis=0)
    pp = _sum(tl.where(cols == 3, sums, 0.0), axis=0)
    dd = _sum(tl.where(cols == 4, sums, 0.0), axis=0)
    uu = _sum(tl.where(cols == 5, sums, 0.0), axis=0)

    step = tl.load(step_ptr)
    first = step == 0
    gnorm = tl.sqrt_rn(gg)
    mnorm = tl.sqrt_rn(mm)
    pnorm = tl.sqrt_rn(pp)
    dnorm = tl.sqrt_rn(dd)
    unorm = tl.sqrt_rn(uu)
    cos = tl.where((gnorm > 0) & (mnorm > 0), gm / tl.maximum(gnorm * mnorm, 1e-30), 0.0)
    ratio = tl.where(unorm > 0, unorm / tl.maximum(pnorm + unorm, 1e-30), 0.0)
    trust = tl.where((pnorm > 0) & (dnorm > 0), _clamp(pnorm / tl.maximum(dnorm, 1e-30), 0.0, TRUST_RATIO_MAX), 1.0)

    observe = applied & (measure != 0)
    old_gn = tl.load(sensors + S_GRAD_NORM)
    old_ref = tl.load(sensors + S_GRAD_NORM_REF)
    old_ur = tl.load(sensors + S_UPDATE_RATIO)
    old_al = tl.load(sensors + S_ALIGNMENT)
    tl.store(sensors + S_GRAD_NORM, tl.where(first, gnorm, _lerp(old_gn, gnorm, w_grad_norm)), mask=observe)
    tl.store(sensors + S_GRAD_NORM_REF, tl.where(old_ref > 0, old_ref, gnorm), mask=observe)
    tl.store(sensors + S_UPDATE_RATIO, tl.where(first, ratio, _lerp(old_ur, ratio, w_update_ratio)), mask=observe)
    tl.store(sensors + S_ALIGNMENT, tl.where(first, cos, _lerp(old_al, cos, w_alignment)), mask=observe)
    tl.store(sensors + S_TRUST_RATIO, trust, mask=observe)
    tl.store(step_ptr, step + 1.0, mask=applied)
    tl.store(sensors + S_SKIPPED, tl.load(sensors + S_SKIPPED) + 1.0, mask=~applied)


@helper
def _finite_or_max(x):
    """torch.nan_to_num for float32: NaN → 0, ±inf → ±(the largest float32)."""
    return tl.where(x != x, 0.0, _clamp(x, -FP32_MAX, FP32_MAX))


@triton.jit
def global_kernel(global_state, loss, before, w_loss, w_improvement, HAS_LOSS: tl.constexpr):
    """``before`` ← the global state; step += 1, then (``HAS_LOSS``) fusedgate.gate.observe_loss of ``loss[0]``
    (any real dtype, read as float32), in place: the first finite loss sets the EMA and the reference, later
    ones are folded with the EMA weights ``w_*`` = 1 − decay; a non-finite loss leaves the loss sensors as they
    are."""
    step = tl.load(global_state + G_STEP)
    prev_ema = tl.load(global_state + G_LOSS_EMA)
    ref = tl.load(global_state + G_LOSS_REF)
    prev_improvement = tl.load(global_state + G_LOSS_IMPROVEMENT)
    count = tl.load(global_state + G_LOSS_SEEN)
    tl.store(before + G_STEP, step)
    tl.store(before + G_LOSS_EMA, prev_ema)
    tl.store(before + G_LOSS_REF, ref)
    tl.store(before + G_LOSS_IMPROVEMENT, prev_improvement)
    tl.store(before + G_LOSS_SEEN, count)
    tl.store(global_state + G_STEP, step + 1.0)
    if HAS_LOSS:
        x = tl.load(loss).to(tl.float32)
        finite = tl.abs(x) <= FP32_MAX   # false for ±inf and NaN
        seen = count > 0
        ema = tl.where(seen, _lerp(prev_ema, x, w_loss), x)
        improvement = tl.where(seen, _lerp(prev_improvement, prev_ema - ema, w_improvement), 0.0)
        tl.store(global_state + G_LOSS_EMA, _finite_or_max(ema), mask=finite)
        tl.store(global_state + G_LOSS_REF, _finite_or_max(tl.where(seen, ref, x)), mask=finite)
        tl.store(global_state + G_LOSS_IMPROVEMENT, _finite_or_max(improvement), mask=finite)
        tl.store(global_state + G_LOSS_SEEN, _finite_or_max(count + 1.0), mask=finite)
