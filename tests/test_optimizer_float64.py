"""float64 parameters are computed in float64 (on the reference path; the Triton backend hands them to it),
like torch's optimizers: ``GateSpec.adamw`` against ``torch.optim.AdamW`` in float64.

Tolerance: max |a − b| / max |b| ≤ 1e-13 after 20 steps (float64 rounding of two op orders; float32
arithmetic anywhere would show as ~1e-7)."""

import pytest
import torch
from conftest import max_rel_diff

from fusedgate import FusedGate, GateSpec

STEPS = 20


def model64(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.GELU(), torch.nn.Linear(32, 24),
                               torch.nn.GELU(), torch.nn.Linear(24, 6)).double()


def train(model, opt, steps=STEPS, loss_kw=True):
    dtype = next(model.parameters()).dtype
    for step in range(steps):
        gen = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(16, 12, generator=gen, dtype=torch.float64).to(dtype)
        y = torch.randn(16, 6, generator=gen, dtype=torch.float64).to(dtype)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step(loss=loss.detach()) if loss_kw else opt.step()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_adamw_preset_matches_torch_adamw_in_float64(backend):
    ours_model, theirs_model = model64(), model64()
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    ours = FusedGate(ours_model.parameters(), spec=GateSpec.adamw(**kw), backend=backend)
    theirs = torch.optim.AdamW(theirs_model.parameters(), **kw)
    train(ours_model, ours)
    train(theirs_model, theirs, loss_kw=False)
    for a, b in zip(ours_model.parameters(), theirs_model.parameters()):
        assert a.dtype == torch.float64
        assert max_rel_diff(a.detach(), b.detach()) <= 1e-13
    for p in ours_model.parameters():
        assert all(v.dtype == torch.float64 for k, v in ours.state[p].items() if k in ("exp_avg", "exp_avg_sq"))


def test_the_production_engine_runs_in_float64():
    """nanochat's engine (Polar Express, NorMuon, cautious decay) keeps float64 end to end, and its first step
    agrees with the float32 run to float32 precision."""
    results = {}
    for dtype in (torch.float64, torch.float32):
        model = model64().to(dtype)
        opt = FusedGate(model.parameters(), spec=GateSpec.gated())
        train(model, opt, steps=1)
        results[dtype] = [p.detach() for p in model.parameters()]
        assert all(v.dtype in (dtype, torch.float32) or k in ("m_decay_prod", "v_decay_prod")
                   for s in opt.state.values() for k, v in s.items())
        assert all(s["exp_avg"].dtype == dtype for s in opt.state.values())
    for a, b in zip(results[torch.float64], results[torch.float32]):
        assert a.dtype == torch.float64 and max_rel_diff(b, a) <= 1e-5


def test_float64_matrices_of_one_shape_apart_in_a_group_step_with_their_sensors():
    """Two float64 matrices of one shape with another between them (the run is gathered by an index, whose put
    does not cast float64 sums into the float32 sums table): each steps as it does alone in a group."""
    torch.manual_seed(3)
    shapes = [(6, 5), (4, 7), (6, 5)]
    together = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
    alone = [torch.nn.Parameter(p.detach().clone()) for p in together]
    spec = GateSpec.gated()
    opt = FusedGate(together, spec=spec, total_steps=4)
    singles = [FusedGate([p], spec=spec, total_steps=4) for p in alone]
    for step in range(3):
        for a, b in zip(together, alone):
            a.grad = torch.randn(a.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
            b.grad = a.grad.clone()
        opt.step(loss=torch.tensor(1.0 - 0.1 * step))
        for single in singles:
            single.step(loss=torch.tensor(1.0 - 0.1 * step))
    for a, b, single in zip(together, alone, singles):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["sensors"], single.state[b]["sensors"])
