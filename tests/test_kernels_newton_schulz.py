"""Newton–Schulz: the Triton kernels (symmetric X·Xᵀ and A·A) and the batched torch path against
fusedgate.reference.newton_schulz, on odd shapes, wide and tall, single and batched.

Tolerances (max |a − b| / max |b|): torch path fp32 ≤ 1e-6; Triton fp32 (exact-fp32 dots) ≤ 2e-5;
Triton fp16 vs the fp32 reference ≤ 2e-2 (fp16 storage of A, B and X between launches).
"""

import pytest
import torch

from fusedgate.kernels.newton_schulz import Tiling, newton_schulz_torch, newton_schulz_triton
from fusedgate.reference import newton_schulz

SHAPES = [(24, 40), (70, 33), (3, 17, 17), (2, 9, 70)]


def reference(x, steps):
    if x.dim() == 2:
        return newton_schulz(x, steps)
    return torch.stack([newton_schulz(m, steps) for m in x])


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_triton_and_torch_match_reference(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    want = reference(x, 5)
    assert max_rel(newton_schulz_torch(x, 5), want) <= 1e-6
    got = newton_schulz_triton(x, 5, Tiling(block=16, block_k=16))
    assert got.shape == x.shape and got.dtype == x.dtype
    assert max_rel(got, want) <= 2e-5


def test_newton_schulz_triton_fp16():
    x = torch.randn(2, 20, 36, generator=torch.Generator().manual_seed(3))
    got = newton_schulz_triton(x.half(), 5, Tiling(block=16, block_k=16))
    assert got.dtype == torch.float16
    assert max_rel(got.float(), reference(x, 5)) <= 2e-2


def test_newton_schulz_output_is_nearly_orthogonal():
    """Five quintic steps push the singular values into roughly [0.7, 1.2] (Muon's design)."""
    x = torch.randn(16, 48, generator=torch.Generator().manual_seed(5))
    s = torch.linalg.svdvals(newton_schulz_triton(x, 5, Tiling(block=16, block_k=16)))
    assert s.min() > 0.5 and s.max() < 1.3
