"""The seam ``fusedgate.functional.gated_step``: plain lists in, the optimizer's step out, every backend one
signature, no state kept at module level.

Tolerances: the reference backend called directly equals ``FusedGate.step`` exactly (the same code on the
same inputs); the Triton backend against the reference as in ``twins.TOL``.
"""

import inspect

import pytest
import torch
from twins import busy_spec, make_params, random_grads, rel

from fusedgate import FusedGate, GateSpec
from fusedgate import functional as F
from fusedgate import gate as G
from fusedgate import reference as R
from fusedgate.kernels import backend as triton_backend
from fusedgate.stack import AdamWHyper, Gate, MatrixHyper, Stack

SHAPES = [(6, 5), (6, 5), (4, 9), (7,)]


def hand_built(params, spec, states, total_steps, global_state) -> tuple[list[Stack], Gate]:
    """The stacks and gate of one step, built without an optimizer: matrices gated in the spec's units,
    the vector with AdamW, every hyperparameter from the spec."""
    matrices, vectors = params[:3], params[3:]
    hyper = MatrixHyper(lr=spec.lr, weight_decay=spec.weight_decay, momentum=spec.beta1, eps=spec.eps,
                        nesterov=spec.nesterov, ns_steps=spec.ns_steps, units=spec.units,
                        normuon_beta2=spec.normuon_beta2)
    adam = AdamWHyper(lr=spec.lr, beta1=spec.beta1, beta2=spec.beta2, eps=spec.eps, weight_decay=spec.weight_decay)
    stacks = [Stack(matrices, [p.grad for p in matrices], [states[i] for i in range(3)], hyper),
              Stack(vectors, [p.grad for p in vectors], [states[3]], adam)]
    return stacks, Gate(spec, global_state, total_steps, measures=True)


@pytest.mark.parametrize("ortho", [(0.0, 0.0), (1.0, 0.5)])
def test_the_reference_backend_called_directly_is_the_optimizer_step(ortho):
    spec = busy_spec("adam", ortho)
    opt_params, own_params = make_params(SHAPES), make_params(SHAPES)
    opt = FusedGate(opt_params, spec=spec, total_steps=10, backend="reference")
    states = [R.new_matrix_state(p, R.Engine.of(spec)) for p in own_params[:3]] + [R.new_adamw_state(own_params[3])]
    global_state = G.new_global_state("cpu")
    for step in range(3):
        grads = random_grads(SHAPES, step)
        for p, q, g in zip(opt_params, own_params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        loss = torch.tensor(2.0 - 0.1 * step)
        opt.step(loss=loss)
        global_state[G.G_STEP] += 1
        G.observe_loss(global_state, loss, spec)
        F.gated_step(*hand_built(own_params, spec, states, 10, global_state), backend="reference")
    for p, q, state in zip(opt_params, own_params, states):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, state[key]), key


def test_the_triton_backend_takes_the_same_stacks():
    spec = busy_spec("muon", (1.0, 0.5))
    results = {}
    for backend in ("reference", "triton"):
        params = make_params(SHAPES)
        states = [R.new_matrix_state(p, R.Engine.of(spec)) for p in params[:3]] + [R.new_adamw_state(params[3])]
        global_state, cache = G.new_global_state("cpu"), {}
        for step in range(2):
            for p, g in zip(params, random_grads(SHAPES, step)):
                p.grad = g
            global_state[G.G_STEP] += 1
            G.observe_loss(global_state, torch.tensor(1.5), spec)
            F.gated_step(*hand_built(params, spec, states, 10, global_state), backend=backend, cache=cache)
        assert (len(cache) > 0) == (backend == "triton")   # the launch tables live in the caller's cache
        results[backend] = params
    for a, b in zip(results["triton"], results["reference"]):
        assert rel(a.detach(), b.detach()) <= 1e-6


def test_every_backend_has_one_signature_and_no_module_state():
    from fusedgate import compiled

    assert inspect.signature(R.gated_step) == inspect.signature(triton_backend.gated_step)
    assert inspect.signature(R.gated_step) == inspect.signature(compiled.gated_step)
    assert not hasattr(triton_backend, "NS_IMPL") and not hasattr(triton_backend, "_layouts")
    assert F.newton_schulz("torch") is R.polar_iteration
    with pytest.raises(ValueError, match="newton_schulz='cubic' is not one of"):
        F.newton_schulz("cubic")
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        F.gated_step([], Gate(GateSpec.gated(), G.new_global_state("cpu"), None, True), backend="cuda")


def test_optimizers_keep_their_own_launch_tables():
    """Two Triton optimizers: each caches its own tables; a copy starts with none."""
    import copy

    spec = busy_spec("adam", (0.0, 0.0))
    first = FusedGate(make_params(SHAPES), spec=spec, backend="triton")
    second = FusedGate(make_params(SHAPES), spec=spec, backend="triton")
    for opt in (first, second):
        for p, g in zip(opt.param_groups[0]["params"], random_grads(SHAPES, 0)):
            p.grad = g
        opt.step(loss=torch.tensor(1.0))
    assert first._cache and second._cache
    assert not set(map(id, first._cache.values())) & set(map(id, second._cache.values()))
    assert copy.deepcopy(first)._cache == {}
