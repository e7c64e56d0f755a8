import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_threads():
    """Keep CPU numerics reproducible and leave a core for the rest of the machine."""
    torch.set_num_threads(1)
    yield


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|: a tensor-level relative difference that tiny entries cannot blow up."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
