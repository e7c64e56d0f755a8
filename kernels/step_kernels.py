"""The element-wise passes: one Triton program per chunk of ``BLOCK`` elements of one parameter.

All parameters of a bucket (same param dtype, same grad dtype) run in one launch: program ``c`` reads
its parameter index and element offset from the chunk table and the tensors' addresses from the
pointer table (``fusedgate.kernels.layout``). Per-parameter scalars come from the coefficient table.

Memory traffic per element (by design; p, g in their own dtype, m, v in float32):
    nonfinite_kernel   reads g                                      (4 B fp32 grad, 2 B bf16)
    step_kernel        reads p, g, m, v; writes p, m, v             (28 B fp32, 22 B bf16 p and g)
    adamw_step_kernel  the same traffic as step_kernel (AdamW params, nanochat's op order)
    moments_kernel     reads g, m, v; writes m, v, s (NS input)     (20 B + s: 4 B fp32 / 2 B bf16)
                       without the Adam direction (USE_ADAM off): reads g, m; writes m, s   (12 B + s)
    apply_kernel       reads p, m, v, o (NS output); writes p       (16 B + o: 4 B fp32 / 2 B bf16)
                       without the Adam direction: reads p, o; writes p                     (8 B + o)
A parameter whose gradient is not finite is masked out of every pass after ``nonfinite_kernel``: its
p, m, v are neither read nor written.

Vector loads (``ALIGNED``). The tensors' addresses come from a table, so the compiler knows nothing of their
alignment and reads one element per instruction (32-bit ``LDG.E``; 16-bit for bf16). When the host has checked
that every address of the bucket's p, g, m, v is a multiple of 16 bytes and every parameter's size a multiple of
8 elements (``layout.BucketLayout.aligned``), the kernels tell the compiler so (``_vector``, ``_chunk``): each
thread's 4 float32 or 8 bf16 elements are one 128-bit access. Under the interpreter the hints do nothing.
"""

import triton
import triton.language as tl

from fusedgate.kernels import slots as S
from fusedgate.kernels._interpret import helper, library

_sum = library(tl.sum)
_max = library(tl.max)

T_P = tl.constexpr(S.T_P)
T_G = tl.constexpr(S.T_G)
T_M = tl.constexpr(S.T_M)
T_V = tl.constexpr(S.T_V)
N_PTR = tl.constexpr(S.N_PTR)
C_APPLIED = tl.constexpr(S.C_APPLIED)
C_CLIP = tl.constexpr(S.C_CLIP)
C_BETA2 = tl.constexpr(S.C_BETA2)
C_ONE_MINUS_B2 = tl.constexpr(S.C_ONE_MINUS_B2)
C_SQRT_BC2 = tl.constexpr(S.C_SQRT_BC2)
C_STEP_A = tl.constexpr(S.C_STEP_A)
C_DIR_A = tl.constexpr(S.C_DIR_A)
C_STEP_O = tl.constexpr(S.C_STEP_O)
C_DIR_O = tl.constexpr(S.C_DIR_O)
C_BC2 = tl.constexpr(S.C_BC2)
C_WD = tl.constexpr(S.C_WD)
N_COEF = tl.constexpr(S.N_COEF)
N_PS = tl.constexpr(S.N_PS)
FP32_MAX = tl.constexpr(3.4028234663852886e38)
VECTOR_BYTES = tl.constexpr(16)     # one 128-bit access
VECTOR_ELEMENTS = tl.constexpr(8)   # a parameter's size is a multiple of it when ALIGNED (8 bf16 = 16 bytes)


@helper
def _chunk(chunk_param, chunk_off, numels, c, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """(c, parameter index, element offsets, parameter size) of chunk c. ALIGNED: the offsets start at a multiple
    of BLOCK and the size is a multiple of VECTOR_ELEMENTS (told to the compiler, so a mask ``offs < size`` is
    uniform over each vector)."""
    i = tl.load(chunk_param + c)
    start = tl.load(chunk_off + c)
    numel = tl.load(numels + i)
    if ALIGNED:
        start = tl.multiple_of(start, BLOCK)
        numel = tl.multiple_of(numel, VECTOR_ELEMENTS)
    return c, i, start + tl.arange(0, BLOCK), numel


@helper
def _applied_chunk(chunk_param, chunk_off, numels, coefs, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """As ``_chunk`` plus the parameter's coefficient row; the mask is empty when the step is skipped. The chunks
    are taken last first: the GPU starts programs roughly in ``program_id`` order, so the update passes begin on
    the gradient chunks ``nonfinite_kernel`` read last, which may still sit in L2 (each chunk's result and partial
    sums are its own, so the order changes no value)."""
    c, i, offs, numel = _chunk(chunk_param, chunk_off, numels, tl.num_programs(0) - 1 - tl.program_id(0), BLOCK,
                               ALIGNED)
    cf = coefs + i * N_COEF
    limit = tl.where(tl.load(cf + C_APPLIED) != 0, numel, 0)
    return c, i, cf, offs, offs < limit


@helper
def _vector(base, offs, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """The addresses ``base + offs`` of a chunk's BLOCK elements; ALIGNED: told to the compiler as contiguous from
    a 16-byte boundary (vector accesses). The hint is put on the addition made here: on an argument of a helper,
    which the compiler sees as a block argument, it would be lost."""
    pointers = base + offs
    if ALIGNED:
        pointers = tl.max_contiguous(tl.multiple_of(pointers, VECTOR_BYTES), BLOCK)
    return pointers


@helper
def _ptr(ptrs, i, col: tl.constexpr, DTYPE: tl.constexpr, offs, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """The addresses of elements ``offs`` of the tensor in column ``col`` of row ``i`` of the pointer table,
    typed as ``DTYPE*`` (``_vector``)."""
    return _vector(tl.load(ptrs + i * N_PTR + col).to(tl.pointer_type(DTYPE)), offs, BLOCK, ALIGNED)


@helper
def _ns_start(ns_base, i, ALIGNED: tl.constexpr):
    """Parameter i's offset in the orthogonaliser's buffer (a sum of sizes: a multiple of VECTOR_ELEMENTS when
    ALIGNED)."""
    start = tl.load(ns_base + i)
    if ALIGNED:
        start = tl.multiple_of(start, VECTOR_ELEMENTS)
    return start


@helper
def _lerp(a, b, w, w_minus_one):
    """torch.lerp, bit for bit: fma(w, b − a, a) for w < 0.5, else fma(w − 1, b − a, b) — torch's vectorised
    lerp rounds once per branch, as a fused multiply-add. ``w`` and ``w_minus_one`` come from the host,
    both float32 (``layout.lerp_weight``), so that w − 1 is formed in float32 as torch forms it."""
    diff = b - a
    return tl.where(w < 0.5, tl.fma(w, diff, a), tl.fma(w_minus_one, diff, b))


@helper
def _round_to(x, DTYPE: tl.constexpr):
    """float32 → DTYPE with round-to-nearest-even (spelled out for bf16: the interpreter truncates)."""
    if DTYPE == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


@helper
def _store_sums(partials, c, s0, s1, s2, FIRST: tl.constexpr):
    """Write three partial sums into columns FIRST..FIRST+2 of this chunk's row."""
    row = partials + c * N_PS + FIRST
    tl.store(row, s0)
    tl.store(row + 1, s1)
    tl.store(row + 2, s2)


@helper
def _moments(g, m, v, cf, one_minus_mu, one_minus_mu_m1, USE_CLIP: tl.constexpr):
    """Clipped gradient g̃ and the new moments (m ← lerp(m, g̃, 1 − μ), v ← β₂·v + (1 − β₂)·g̃²)."""
    if USE_CLIP:
        threshold = tl.load(cf + C_CLIP)
        g = tl.minimum(tl.maximum(g, -threshold), threshold)
    m_new = _lerp(m, g, one_minus_mu, one_minus_mu_m1)
    v_new = v * tl.load(cf + C_BETA2) + tl.load(cf + C_ONE_MINUS_B2) * g * g
    return g, m_new, v_new


@helper
def _adam_direction(m_new, v_new, cf, eps):
    """(1 − P₁)·Adam direction = m / (√v / √(1 − P₂) + eps)."""
    return m_new / (tl.sqrt_rn(v_new) / tl.load(cf + C_SQRT_BC2) + eps)


@triton.jit
def nonfinite_kernel(ptrs, chunk_param, chunk_off, numels, flags, G_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                     ALIGNED: tl.constexpr):
    """flags[c] = 1 when chunk c of its gradient holds a NaN or an infinity, else 0."""
    c, i, offs, numel = _chunk(chunk_param, chunk_off, numels, tl.program_id(0), BLOCK, ALIGNED)
    mask = offs < numel
    g = tl.load(_ptr(ptrs, i, T_G, G_DTYPE, offs, BLOCK, ALIGNED), mask=mask, other=0.0).to(tl.float32)
    bad = (g != g) | (tl.abs(g) > FP32_MAX)
    tl.store(flags + c, _max(bad.to(tl.int32), axis=0))


@triton.jit
def step_kernel(ptrs, chunk_param, chunk_off, numels, coefs, partials, one_minus_mu, one_minus_mu_m1, decay, eps,
                P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, USE_CLIP: tl.constexpr, CAUTIOUS: tl.constexpr,
                BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """The whole gated update without orthogonalisation in one pass:

        g̃ = clamp(g, ±threshold);  m, v ← moments;  a = m / (√v/√(1 − P₂) + eps);  d = C_DIR_A·a
        p ← p·decay − C_STEP_A·a           (decay = 1 − lr·wd)
        CAUTIOUS: p ← p − (C_STEP_A·a + C_WD·p·[d·p ≥ 0])
    and the chunk's ‖g̃‖², g̃·m₋, ‖m₋‖², ‖p₋‖², ‖d‖², ‖Δp‖²."""
    c, i, cf, offs, mask = _applied_chunk(chunk_param, chunk_off, numels, coefs, BLOCK, ALIGNED)
    p_ptr = _ptr(ptrs, i, T_P, P_DTYPE, offs, BLOCK, ALIGNED)
    m_ptr = _ptr(ptrs, i, T_M, tl.float32, offs, BLOCK, ALIGNED)
    v_ptr = _ptr(ptrs, i, T_V, tl.float32, offs, BLOCK, ALIGNED)
    p = tl.load(p_ptr, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(_ptr(ptrs, i, T_G, G_DTYPE, offs, BLOCK, ALIGNED), mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr, mask=mask, other=0.0)
    v = tl.load(v_ptr, mask=mask, other=0.0)
    g, m_new, v_new = _moments(g, m, v, cf, one_minus_mu, one_minus_mu_m1, USE_CLIP)
    adam = _adam_direction(m_new, v_new, cf, eps)
    d = tl.load(cf + C_DIR_A) * adam
    if CAUTIOUS:
        p_new = p - (tl.load(cf + C_STEP_A) * adam + tl.where(d * p >= 0, tl.load(cf + C_WD) * p, 0.0))
    else:
        p_new = p * decay - tl.load(cf + C_STEP_A) * adam
    tl.store(p_ptr, _round_to(p_new, P_DTYPE), mask=mask)
    tl.store(m_ptr, m_new, mask=mask)
    tl.store(v_ptr, v_new, mask=mask)
    u = p_new - p
    _store_sums(partials, c, _sum(g * g, axis=0), _sum(g * m, axis=0), _sum(m * m, axis=0), 0)
    _store_sums(partials, c, _sum(p * p, axis=0), _sum(d * d, axis=0), _sum(u * u, axis=0), 3)


@triton.jit
def moments_kernel(ptrs, chunk_param, chunk_off, numels, coefs, partials, ns_input, ns_base, one_minus_mu,
                   one_minus_mu_m1, mu, mu_m1,
                   G_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr, USE_CLIP: tl.constexpr, NESTEROV: tl.constexpr,
                   USE_ADAM: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """First pass of the orthogonalised update: clip, moments (v only with USE_ADAM), and the
    orthogonaliser's input s = lerp(g̃, m, μ) (Nesterov) or m, written at ``ns_base[i]`` in ``ns_input``;
    sums ‖g̃‖², g̃·m₋, ‖m₋‖²."""
    c, i, cf, offs, mask = _applied_chunk(chunk_param, chunk_off, numels, coefs, BLOCK, ALIGNED)
    m_ptr = _ptr(ptrs, i, T_M, tl.float32, offs, BLOCK, ALIGNED)
    g = tl.load(_ptr(ptrs, i, T_G, G_DTYPE, offs, BLOCK, ALIGNED), mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr, mask=mask, other=0.0)
    if USE_ADAM:
        v_ptr = _ptr(ptrs, i, T_V, tl.float32, offs, BLOCK, ALIGNED)
        v = tl.load(v_ptr, mask=mask, other=0.0)
        g, m_new, v_new = _moments(g, m, v, cf, one_minus_mu, one_minus_mu_m1, USE_CLIP)
        tl.store(v_ptr, v_new, mask=mask)
    else:
        g, m_new, _ = _moments(g, m, m, cf, one_minus_mu, one_minus_mu_m1, USE_CLIP)
    tl.store(m_ptr, m_new, mask=mask)
    if NESTEROV:
        source = _lerp(g, m_new, mu, mu_m1)
    else:
        source = m_new
    s_ptr = _vector(ns_input + _ns_start(ns_base, i, ALIGNED), offs, BLOCK, ALIGNED)
    tl.store(s_ptr, _round_to(source, S_DTYPE), mask=mask)
    _store_sums(partials, c, _sum(g * g, axis=0), _sum(g * m, axis=0), _sum(m * m, axis=0), 0)


@triton.jit
def apply_kernel(ptrs, chunk_param, chunk_off, numels, coefs, partials, ns_output, ns_base, decay, eps,
                 P_DTYPE: tl.constexpr, USE_ADAM: tl.constexpr, CAUTIOUS: tl.constexpr, BLOCK: tl.constexpr,
                 ALIGNED: tl.constexpr):
    """Second pass, with o the orthogonaliser's output and (USE_ADAM) a recomputed from the new m, v:
        d = C_DIR_A·a + C_DIR_O·o
        decoupled decay:  p ← p·decay − C_STEP_A·a − C_STEP_O·o
        CAUTIOUS:         p ← p − (C_STEP_A·a + C_STEP_O·o + C_WD·p·[d·p ≥ 0])
    sums ‖p₋‖², ‖d‖², ‖Δp‖²."""
    c, i, cf, offs, mask = _applied_chunk(chunk_param, chunk_off, numels, coefs, BLOCK, ALIGNED)
    p_ptr = _ptr(ptrs, i, T_P, P_DTYPE, offs, BLOCK, ALIGNED)
    p = tl.load(p_ptr, mask=mask, other=0.0).to(tl.float32)
    o_ptr = _vector(ns_output + _ns_start(ns_base, i, ALIGNED), offs, BLOCK, ALIGNED)
    o = tl.load(o_ptr, mask=mask, other=0.0).to(tl.float32)
    o_term = tl.load(cf + C_STEP_O) * o
    o_dir = tl.load(cf + C_DIR_O) * o
    if USE_ADAM:
        m_new = tl.load(_ptr(ptrs, i, T_M, tl.float32, offs, BLOCK, ALIGNED), mask=mask, other=0.0)
        v_new = tl.load(_ptr(ptrs, i, T_V, tl.float32, offs, BLOCK, ALIGNED), mask=mask, other=0.0)
        adam = _adam_direction(m_new, v_new, cf, eps)
        a_term = tl.load(cf + C_STEP_A) * adam
        d = tl.load(cf + C_DIR_A) * adam + o_dir
        if CAUTIOUS:
            p_new = p - ((a_term + o_term) + tl.where(d * p >= 0, tl.load(cf + C_WD) * p, 0.0))
        else:
            p_new = p * decay - a_term - o_term
    else:
        d = o_dir
        if CAUTIOUS:
            p_new = p - (o_term + tl.where(d * p >= 0, tl.load(cf + C_WD) * p, 0.0))
        else:
            p_new = p * decay - o_term
    tl.store(p_ptr, _round_to(p_new, P_DTYPE), mask=mask)
    u = p_new - p
    _store_sums(partials, c, _sum(p * p, axis=0), _sum(d * d, axis=0), _sum(u * u, axis=0), 3)


@triton.jit
def adamw_step_kernel(ptrs, chunk_param, chunk_off, numels, coefs, one_minus_beta1, one_minus_beta1_m1,
                      one_minus_beta2, one_minus_beta2_m1, decay, eps,
                      P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """AdamW in nanochat's op order (the same math as torch's AdamW):
        p ← p·decay;  m ← lerp(m, g, 1 − β₁);  v ← lerp(v, g², 1 − β₂)
        p ← p + (−lr/(1 − P₁))·m / (√(v/(1 − P₂)) + eps)        (decay = 1 − lr·wd)"""
    c, i, cf, offs, mask = _applied_chunk(chunk_param, chunk_off, numels, coefs, BLOCK, ALIGNED)
    p_ptr = _ptr(ptrs, i, T_P, P_DTYPE, offs, BLOCK, ALIGNED)
    m_ptr = _ptr(ptrs, i, T_M, tl.float32, offs, BLOCK, ALIGNED)
    v_ptr = _ptr(ptrs, i, T_V, tl.float32, offs, BLOCK, ALIGNED)
    p = tl.load(p_ptr, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(_ptr(ptrs, i, T_G, G_DTYPE, offs, BLOCK, ALIGNED), mask=mask, other=0.0).to(tl.float32)
    m_new = _lerp(tl.load(m_ptr, mask=mask, other=0.0), g, one_minus_beta1, one_minus_beta1_m1)
    v_new = _lerp(tl.load(v_ptr, mask=mask, other=0.0), g * g, one_minus_beta2, one_minus_beta2_m1)
    denom = tl.sqrt_rn(v_new / tl.load(cf + C_BC2)) + eps
    p_new = p * decay + tl.load(cf + C_STEP_A) * m_new / denom
    tl.store(p_ptr, _round_to(p_new, P_DTYPE), mask=mask)
    tl.store(m_ptr, m_new, mask=mask)
    tl.store(v_ptr, v_new, mask=mask)
