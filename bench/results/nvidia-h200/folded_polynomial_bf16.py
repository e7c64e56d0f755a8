"""Why the Triton backend's nanochat() path keeps the plain polynomial on CUDA for now: in bf16 the folded form
(``reference.polar_iteration_gemm``, each step's sums inside its products) and the plain one (``polar_iteration``,
nanochat's eager op order) differ by far more than the GPU test's bound, though the folded form is the closer to
float64. Run from the repository root (CPU bf16 matmuls; a GPU's round differently but not by less):

    python bench/results/nvidia-h200/folded_polynomial_bf16.py

Per shape: max |a − b| / max |b| for plain vs folded, and each against the same iteration in float64 (5 quintic
steps on a standard-normal input, seed 0).
"""

import torch

from fusedgate import reference as R


def main() -> None:
    torch.manual_seed(0)
    coefficients = [R.NS_COEFFS] * 5
    scale, eps = R.NORMALISATION["quintic"]
    print("| shape | plain vs folded | plain vs float64 | folded vs float64 |")
    print("|---|---|---|---|")
    for shape in [(6, 64, 96), (3, 96, 64), (2, 33, 17), (1, 3, 1000)]:
        x = torch.randn(*shape)
        plain = R.polar_iteration(x, coefficients, scale, eps, torch.bfloat16).double()
        folded = R.polar_iteration_gemm(x, coefficients, scale, eps, torch.bfloat16).double()
        exact = R.polar_iteration(x.double(), coefficients, scale, eps, torch.float64)
        diff = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
        print(f"| {tuple(shape)} | {diff(plain, folded):.3f} | {diff(plain, exact):.3f} | {diff(folded, exact):.3f} |")


if __name__ == "__main__":
    main()
