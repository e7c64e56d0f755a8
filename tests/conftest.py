import sysconfig
from pathlib import Path

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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    """1 MB of this Python's stdlib source in one file: real text the trainer loads in milliseconds."""
    root = Path(sysconfig.get_paths()["stdlib"])
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(b"".join(p.read_bytes() for p in sorted(root.glob("*.py")))[:1_000_000])
    return str(path)
