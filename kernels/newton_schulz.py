"""Newton–Schulz-type orthogonalisation (quintic or Polar Express), batched over same-shape matrices.

Both paths compute, for each matrix x of a batch [k, rows, cols] (the reference's ``polar_iteration``):
    X = x / (s·‖x‖_F + ε)   (wide orientation: X = Xᵀ when rows > cols)
    for each (a, b, c):  A = X·Xᵀ;  B = b·A + c·A·A;  X = a·X + B·X
with (a, b, c) = reference.NS_COEFFS every step, s = 1, ε = 1e-7 for the quintic iteration
(``newton_schulz_*``) or any coefficient table (``polar_iteration_triton``, e.g. Polar Express).
``newton_schulz_torch`` uses batched torch matmuls (cuBLAS on the GPU) in the input's dtype.
``newton_schulz_triton`` uses Triton kernels that exploit the symmetry of A = X·Xᵀ (and of A·A, a
polynomial in A): only the blocks on and above the diagonal are computed, each is written to both
(i, j) and (j, i), which halves the flops of the two n×n products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fusedgate import reference as R
from fusedgate.kernels._interpret import library, loop_bound

_zeros = library(tl.zeros)


@dataclass(frozen=True)
class Tiling:
    """How the three kernels are launched: output blocks of ``block`` × ``block``, the reduction in steps of
    ``block_k``, ``num_warps`` warps per program, ``num_stages`` software-pipelined loads (Triton's defaults
    for the last two). The interpreter ignores the last two."""

    block: int = 64
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3


def _normalise_wide(x: torch.Tensor, norm_scale: float = 1.0, norm_eps: float = 1e-7) -> tuple[torch.Tensor, bool]:
    X = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) * norm_scale + norm_eps)
    tall = X.size(-2) > X.size(-1)
    return (X.mT if tall else X), tall


def newton_schulz_torch(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Newton–Schulz of x ([rows, cols] or [k, rows, cols]) with torch matmuls in x's dtype."""
    a, b, c = R.NS_COEFFS
    X, tall = _normalise_wide(x)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


@triton.jit
def _gram_kernel(X, A, n, k, sxb, sxr, sxc, PRECISION: tl.constexpr,
                 BM: tl.constexpr, BK: tl.constexpr):
    """A = X·Xᵀ for one batch entry (program axis 2): block (i, j) with i ≤ j only, written to (i, j)
    and, transposed, to (j, i)."""
    bi, bj, bb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if bi > bj:
        return
    rows_i = bi * BM + tl.arange(0, BM)
    rows_j = bj * BM + tl.arange(0, BM)
    x = X + bb * sxb
    acc = _zeros((BM, BM), tl.float32)
    for k0 in range(0, loop_bound(k), BK):
        cols = k0 + tl.arange(0, BK)
        xi = tl.load(x + rows_i[:, None] * sxr + cols[None, :] * sxc,
                     mask=(rows_i[:, None] < n) & (cols[None, :] < k), other=0.0)
        xj = tl.load(x + rows_j[:, None] * sxr + cols[None, :] * sxc,
                     mask=(rows_j[:, None] < n) & (cols[None, :] < k), other=0.0)
        acc = tl.dot(xi, tl.trans(xj), acc, input_precision=PRECISION)
    a = A + bb * n * n
    out = acc.to(A.dtype.element_ty)
    tl.store(a + rows_i[:, None] * n + rows_j[None, :], out, mask=(rows_i[:, None] < n) & (rows_j[None, :] < n))
    if bi != bj:
        tl.store(a + rows_j[:, None] * n + rows_i[None, :], tl.trans(out),
                 mask=(rows_j[:, None] < n) & (rows_i[None, :] < n))


@triton.jit
def _poly_kernel(A, B, n, coef_b, coef_c, PRECISION: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
    """B = b·A + c·A·A for symmetric A: block (i, j), i ≤ j, mirrored to (j, i)."""
    bi, bj, bb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    if bi > bj:
        return
    rows_i = bi * BM + tl.arange(0, BM)
    cols_j = bj * BM + tl.arange(0, BM)
    a = A + bb * n * n
    acc = _zeros((BM, BM), tl.float32)
    for k0 in range(0, loop_bound(n), BK):
        kk = k0 + tl.arange(0, BK)
        left = tl.load(a + rows_i[:, None] * n + kk[None, :], mask=(rows_i[:, None] < n) & (kk[None, :] < n),
                       other=0.0)
        right = tl.load(a + kk[:, None] * n + cols_j[None, :], mask=(kk[:, None] < n) & (cols_j[None, :] < n),
                        other=0.0)
        acc = tl.dot(left, right, acc, input_precision=PRECISION)
    block_mask = (rows_i[:, None] < n) & (cols_j[None, :] < n)
    a_ij = tl.load(a + rows_i[:, None] * n + cols_j[None, :], mask=block_mask, other=0.0).to(tl.float32)
    out = (coef_b * a_ij + coef_c * acc).to(B.dtype.element_ty)
    b = B + bb * n * n
    tl.store(b + rows_i[:, None] * n + cols_j[None, :], out, mask=block_mask)
    if bi != bj:
        tl.store(b + cols_j[:, None] * n + rows_i[None, :], tl.trans(out),
                 mask=(cols_j[:, None] < n) & (rows_i[None, :] < n))


@triton.jit
def _update_kernel(X, B, Y, n, k, coef_a, PRECISION: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Y = a·X + B·X (X, Y contiguous [batch, n, k], B [batch, n, n])."""
    bi, bj, bb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = bi * BM + tl.arange(0, BM)
    cols = bj * BN + tl.arange(0, BN)
    x = X + bb * n * k
    b = B + bb * n * n
    acc = _zeros((BM, BN), tl.float32)
    for k0 in range(0, loop_bound(n), BK):
        kk = k0 + tl.arange(0, BK)
        left = tl.load(b + rows[:, None] * n + kk[None, :], mask=(rows[:, None] < n) & (kk[None, :] < n), other=0.0)
        right = tl.load(x + kk[:, None] * k + cols[None, :], mask=(kk[:, None] < n) & (cols[None, :] < k), other=0.0)
        acc = tl.dot(left, right, acc, input_precision=PRECISION)
    block_mask = (rows[:, None] < n) & (cols[None, :] < k)
    x_ij = tl.load(x + rows[:, None] * k + cols[None, :], mask=block_mask, other=0.0).to(tl.float32)
    tl.store(Y + bb * n * k + rows[:, None] * k + cols[None, :], (coef_a * x_ij + acc).to(Y.dtype.element_ty),
             mask=block_mask)


def newton_schulz_triton(x: torch.Tensor, steps: int, tiling: Tiling = Tiling()) -> torch.Tensor:
    """Quintic Newton–Schulz of x ([rows, cols] or [k, rows, cols], float32/bfloat16/float16) with the
    Triton kernels above: 3 launches per iteration for the whole batch. float32 inputs use exact-fp32 dots."""
    return _iterate_triton(x, [R.NS_COEFFS] * steps, *R.NORMALISATION["quintic"], tiling)


def polar_iteration_triton(x: torch.Tensor, coefficients, norm_scale: float, norm_eps: float,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``reference.polar_iteration`` with the Triton kernels (same signature, so the backend can pass it)."""
    return _iterate_triton(x.to(dtype), coefficients, norm_scale, norm_eps).to(x.dtype)


def _iterate_triton(x: torch.Tensor, coefficients, norm_scale: float, norm_eps: float,
                    tiling: Tiling = Tiling()) -> torch.Tensor:
    batched = x.dim() == 3
    X, tall = _normalise_wide(x if batched else x.unsqueeze(0), norm_scale, norm_eps)
    X = X.contiguous()
    count, n, k = X.shape
    precision = "ieee" if X.dtype == torch.float32 else "tf32"
    A = torch.empty(count, n, n, dtype=X.dtype, device=X.device)
    Bm = torch.empty_like(A)
    Y = torch.empty_like(X)
    block = tiling.block
    tiles_n = triton.cdiv(n, block)
    shape = dict(BK=tiling.block_k, num_warps=tiling.num_warps, num_stages=tiling.num_stages)
    for a, b, c in coefficients:
        _gram_kernel[(tiles_n, tiles_n, count)](X, A, n, k, X.stride(0), X.stride(1), X.stride(2),
                                                PRECISION=precision, BM=block, **shape)
        _poly_kernel[(tiles_n, tiles_n, count)](A, Bm, n, b, c, PRECISION=precision, BM=block, **shape)
        _update_kernel[(tiles_n, triton.cdiv(k, block), count)](X, Bm, Y, n, k, a, PRECISION=precision,
                                                                BM=block, BN=block, **shape)
        X, Y = Y, X
    out = X.mT if tall else X
    return out if batched else out[0]
