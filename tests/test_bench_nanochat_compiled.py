"""nanochat's compiled Muon step (the benchmark's reference for ``nanochat()``): the same numbers as the eager
``MuonAdamW`` it compiles, and no recompilation when the schedule changes the hyperparameters (they are
0-D tensors, as in nanochat). On the CPU the graph is traced by dynamo with the eager backend."""

import pytest
import torch

from fusedgate.bench.nanochat_compiled import CompiledMuon
from fusedgate.nanochat.muon import MuonAdamW

SHAPES = [(32, 16)] * 3 + [(16, 48)] * 2


def make_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(0.1 * torch.randn(shape, generator=gen)) for shape in SHAPES]


def groups(params):
    shapes = sorted({tuple(p.shape) for p in params})
    return [dict(kind="muon", params=[p for p in params if tuple(p.shape) == shape], lr=0.02, momentum=0.95,
                 ns_steps=5, beta2=0.9, weight_decay=0.1) for shape in shapes]


def run_steps(optimizer, params, steps=4):
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()
        for group in optimizer.param_groups:  # a schedule: lr and momentum change every step
            group["lr"] *= 0.8
            group["momentum"] = 0.85 + 0.02 * step


def test_compiled_step_equals_the_eager_muon():
    eager, compiled = make_params(), make_params()
    start = [p.detach().clone() for p in eager]
    run_steps(MuonAdamW(groups(eager)), eager)
    run_steps(CompiledMuon(groups(compiled)), compiled)
    for a, b, p0 in zip(compiled, eager, start):
        moved = (b.detach() - p0).abs().max().item()
        assert moved > 1e-3
        assert (a.detach() - b.detach()).abs().max().item() <= 1e-5 * moved


def test_a_changing_schedule_compiles_no_new_graph():
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters["stats"]
    before = counters["unique_graphs"]
    params = make_params()
    optimizer = CompiledMuon(groups(params))
    run_steps(optimizer, params, steps=1)
    assert counters["unique_graphs"] == before + 2  # one graph per stack shape
    run_steps(optimizer, params, steps=3)
    assert counters["unique_graphs"] == before + 2


def test_a_group_of_two_shapes_is_refused():
    params = make_params()
    with pytest.raises(ValueError, match="share one shape"):
        CompiledMuon([dict(kind="muon", params=params, lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9,
                           weight_decay=0.0)])
