"""The full optimizer on the Triton backend (interpreter without a GPU) over whole trajectories.

Tolerance: after 50 steps of a small MLP, max |a − b| / max |b| ≤ 5e-6 per parameter between
backend="triton" and backend="reference" (gated default spec and both neutral presets); gate values
within 1e-5. Checkpoints move between the backends mid-run.
"""

import pytest
import torch

from fusedgate import FusedGate, GateSpec


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.GELU(), torch.nn.Linear(32, 24),
                               torch.nn.GELU(), torch.nn.Linear(24, 5))


def train(model, opt, steps, seed=1, start=0):
    gen = torch.Generator().manual_seed(seed)
    for t in range(start + steps):
        x = torch.randn(32, 12, generator=gen)
        y = torch.sin(x[:, :5] * 2)
        if t < start:
            continue
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step(loss=loss.detach())


def max_rel(a, b):
    return ((a.detach() - b.detach()).abs().max() / b.detach().abs().max()).item()


SPECS = {
    "gated-default": GateSpec.gated(),
    "adamw-preset": GateSpec.adamw(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1),
    "muon-preset": GateSpec.muon(lr=0.02, momentum=0.95, weight_decay=0.05),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_fifty_step_trajectory_matches_reference(name):
    spec = SPECS[name]
    ref_model, tri_model = small_model(), small_model()
    ref = FusedGate(ref_model.parameters(), spec=spec, total_steps=50, backend="reference")
    tri = FusedGate(tri_model.parameters(), spec=spec, total_steps=50, backend="triton")
    train(ref_model, ref, 50)
    train(tri_model, tri, 50)
    for a, b in zip(tri_model.parameters(), ref_model.parameters()):
        assert max_rel(a, b) <= 5e-6
    ref_gates, tri_gates = ref.gate_state(), tri.gate_state()
    assert ref_gates.keys() == tri_gates.keys() and ref_gates
    for key, want in ref_gates.items():
        got = tri_gates[key]
        for field in ("gate", "update_mult", "beta2", "ortho", "trust_ratio"):
            assert got[field] == pytest.approx(want[field], rel=1e-5, abs=1e-6), (key, field)
        assert got["skipped"] == want["skipped"] == 0


@pytest.mark.parametrize("first,second", [("triton", "reference"), ("reference", "triton")])
def test_checkpoint_moves_between_backends(first, second):
    """10 reference steps == 5 steps on one backend, state_dict, 5 steps on the other."""
    spec = GateSpec.gated()
    straight_model = small_model()
    straight = FusedGate(straight_model.parameters(), spec=spec, total_steps=10, backend="reference")
    train(straight_model, straight, 10)

    model = small_model()
    opt = FusedGate(model.parameters(), spec=spec, total_steps=10, backend=first)
    train(model, opt, 5)
    saved = opt.state_dict()
    resumed = FusedGate(model.parameters(), spec=spec, total_steps=10, backend=second)
    resumed.load_state_dict(saved)
    train(model, resumed, 5, start=5)
    for a, b in zip(model.parameters(), straight_model.parameters()):
        assert max_rel(a, b) <= 2e-6


def test_auto_backend_takes_the_reference_for_cpu_tensors():
    model = small_model()
    opt = FusedGate(model.parameters(), spec=GateSpec.gated(), backend="auto")
    train(model, opt, 1)
    assert not opt._cache   # no launch table: the reference path
    forced = FusedGate(model.parameters(), spec=GateSpec.gated(), backend="triton")
    train(model, forced, 1)
    assert forced._cache
