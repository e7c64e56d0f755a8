"""Independent re-implementations the tests compare fusedgate against (written out without fusedgate)."""

import torch


def newton_schulz5(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic iteration of Keller Jordan's Muon, written out independently of fusedgate."""
    x = g / (g.norm() + 1e-7)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = 3.4445 * x + (-4.7750 * gram + 2.0315 * gram @ gram) @ x
    return x.T if transposed else x
