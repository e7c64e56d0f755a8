"""What the benchmark steps on: single matrices, NanoChat's matrix-parameter sets, Newton–Schulz inputs.
The opt-in case ``nanochat_muon`` steps the NanoChat matrix sets with Muon (nanochat's optimizer).

NanoChat shapes follow the project's own model (``fusedgate.nanochat.model``): width n_embd = depth·64
(``GPTConfig.from_depth``), and per block the attention projections
q, k, v, o (n_embd × n_embd each) and the MLP's fc (4·n_embd × n_embd) and proj (n_embd × 4·n_embd):
12·n_embd² matrix params per block. d12 = 85M, d20 = 393M, d26 = 864M matrix params. Embedding and
head are AdamW params in every optimizer here and are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CASES = ("matrix", "nanochat", "newton_schulz")  # the default run
# opt-in (``--cases``): nanochat's Muon step on the NanoChat matrix sets, against nanochat's compiled step
EXTRA_CASES = ("nanochat_muon",)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# Sizes per run kind: "gpu" (the list), "cpu" (small, for a CPU run), "quick" (CI smoke test).
MATRIX_SIZES = {"gpu": (1024, 2048, 4096, 8192, 16384), "cpu": (256, 512, 1024), "quick": (64, 128)}
NANOCHAT_DEPTHS = {"gpu": (12, 20, 26), "cpu": (2, 4), "quick": (1,)}
NS_SIZES = {"gpu": (1024, 2048, 4096, 8192), "cpu": (128, 256, 512), "quick": (64, 128)}


@dataclass(frozen=True)
class Workload:
    """One row of the benchmark: a case, a label for the size, and the parameter shapes stepped together."""

    case: str
    label: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def params(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)


def matrix_workload(n: int) -> Workload:
    return Workload("matrix", f"{n}x{n}", ((n, n),))


def nanochat_shapes(depth: int) -> tuple[tuple[int, ...], ...]:
    """Shapes of the matrix params (the transformer blocks' weights) of a NanoChat model of this depth,
    in ``GPT.matrix_params()`` order: per block c_q, c_k, c_v, c_proj (d×d), mlp c_fc (4d×d), c_proj (d×4d).
    The width rule is the model's own (``GPTConfig.from_depth``); tests check the shapes against ``GPT``."""
    from fusedgate.nanochat.model import GPTConfig

    d = GPTConfig.from_depth(depth, vocab_size=64, sequence_len=8).n_embd
    block = ((d, d), (d, d), (d, d), (d, d), (4 * d, d), (d, 4 * d))
    return block * depth


def nanochat_workload(depth: int, case: str = "nanochat") -> Workload:
    return Workload(case, f"d{depth}", nanochat_shapes(depth))


def ns_workload(n: int) -> Workload:
    return Workload("newton_schulz", f"{n}x{n}", ((n, n),))


def ns_flops(rows: int, cols: int, steps: int) -> int:
    """Floating-point operations of ``steps`` quintic Newton–Schulz iterations on a rows × cols matrix.
    On the wide orientation (m ≤ n): A = X·Xᵀ (2m²n), A·A (2m³), B·X (2m²n) per iteration."""
    m, n = min(rows, cols), max(rows, cols)
    return steps * (4 * m * m * n + 2 * m**3)


def workloads(
    kind: str, cases: tuple[str, ...] = CASES, matrix_sizes=None, depths=None, ns_sizes=None
) -> list[Workload]:
    """The workloads of a run kind ("gpu", "cpu", "quick"), optionally with sizes overridden."""
    out: list[Workload] = []
    if "matrix" in cases:
        out += [matrix_workload(n) for n in (matrix_sizes or MATRIX_SIZES[kind])]
    if "nanochat" in cases:
        out += [nanochat_workload(d) for d in (depths or NANOCHAT_DEPTHS[kind])]
    if "newton_schulz" in cases:
        out += [ns_workload(n) for n in (ns_sizes or NS_SIZES[kind])]
    if "nanochat_muon" in cases:
        out += [nanochat_workload(d, "nanochat_muon") for d in (depths or NANOCHAT_DEPTHS[kind])]
    return out
