"""FusedGate under torch.compile, with float64 and malformed input, copied and pickled: each test here failed on
the release before it (issue: correct under torch.compile, exact in every dtype, nothing accepted that breaks
later)."""

import copy
import math
import pickle

import pytest
import torch

from fusedgate import FusedGate, GateSpec
from fusedgate import gate as G

PRESETS = ["gated", "nanochat", "muon", "adamw"]


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def batches(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(16, 8, generator=gen)
        yield x, torch.sin(x[:, :4])


def train(model, opt, steps, step_fn=None):
    step_fn = step_fn or opt.step
    for x, y in batches(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        step_fn(loss=loss.detach())
        opt.zero_grad()


# ------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize("preset", PRESETS)
def test_compiled_step_is_the_eager_step(preset):
    """torch.compile(opt.step) runs the eager step (a graph break): bit-identical params, global state created,
    decay products advanced."""
    spec = GateSpec.from_name_or_file(preset)
    eager_model, compiled_model = mlp(), mlp()
    eager = FusedGate(eager_model.parameters(), spec=spec, total_steps=5)
    compiled = FusedGate(compiled_model.parameters(), spec=spec, total_steps=5)
    train(eager_model, eager, 5)
    train(compiled_model, compiled, 5, step_fn=torch.compile(compiled.step))
    for a, b in zip(compiled_model.parameters(), eager_model.parameters()):
        assert torch.equal(a, b)
    assert compiled.gate_state().keys() == eager.gate_state().keys() and compiled.gate_state()
    for p in compiled_model.parameters():
        assert compiled.state[p]["m_decay_prod"].item() < 1.0 and compiled.state[p]["step"].item() == 5


@pytest.mark.parametrize("preset", ["gated", "nanochat"])
def test_compiled_training_step_matches_eager(preset):
    """A whole compiled training step (model, backward, opt.step): the only differences are the compiled
    model's own gradients (~1e-7), as with torch's AdamW under the same compile."""
    spec = GateSpec.from_name_or_file(preset)
    results = []
    for compile_it in (False, True):
        model = mlp()
        opt = FusedGate(model.parameters(), spec=spec, total_steps=5)

        def train_step(x, y, model=model, opt=opt):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step(loss=loss.detach())
            opt.zero_grad()

        fn = torch.compile(train_step) if compile_it else train_step
        for x, y in batches(5):
            fn(x, y)
        results.append(([p.detach().clone() for p in model.parameters()], opt))
    (eager, eager_opt), (compiled, compiled_opt) = results
    assert max((a - b).abs().max().item() for a, b in zip(eager, compiled)) <= 1e-5
    assert compiled_opt._global is not None and compiled_opt._global[G.G_STEP].item() == 5


# ------------------------------------------------------------------ dtypes
def test_non_float_params_are_refused_clearly():
    """(float64 is computed in float64 since the drop-in issue: test_optimizer_float64.)"""
    p = torch.nn.Parameter(torch.ones(4, 4, dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match="float32/bfloat16/float16/float64 parameters, got torch.int32"):
        FusedGate([p], spec=GateSpec.nanochat())
    q = torch.nn.Parameter(torch.ones(4, dtype=torch.float32))
    opt = FusedGate([q], spec=GateSpec.adamw())
    with pytest.raises(TypeError, match="torch.int32"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1


# ------------------------------------------------------------------ load_state_dict
def _trained():
    model = mlp()
    opt = FusedGate(model.named_parameters(), spec=GateSpec.gated(), total_steps=10)
    train(model, opt, 2)
    return model, opt


def _first_gated(sd):
    return next(pid for pid, s in sd["state"].items() if "sensors" in s)


@pytest.mark.parametrize("corrupt, match", [
    (lambda sd: sd["state"][_first_gated(sd)].update(exp_avg_sq=torch.zeros(3)), "exp_avg_sq"),
    (lambda sd: sd["state"][_first_gated(sd)].update(sensors=torch.zeros(5)), "sensors"),
    (lambda sd: sd["state"][_first_gated(sd)].update(step=torch.zeros(2)), "step"),
    (lambda sd: sd["state"][_first_gated(sd)].update(m_decay_prod="one"), "m_decay_prod"),
    (lambda sd: sd["state"][_first_gated(sd)].pop("exp_avg"), "exp_avg"),
    (lambda sd: sd["state"][_first_gated(sd)].update(extra=torch.zeros(1)), "unknown"),
    (lambda sd: sd["fusedgate"].update(global_state=None) or sd["fusedgate"].update(**{"global": torch.zeros(3)}),
     "global"),
    (lambda sd: sd["param_groups"][0].pop("lr"), "lr"),
    (lambda sd: sd["fusedgate"].update(total_steps=0), "total_steps"),
    (lambda sd: sd["fusedgate"]["spec"].update(sharpness=99.0), "sharpness"),
    (lambda sd: sd.pop("param_groups"), "param groups"),
])
def test_malformed_state_dicts_are_refused_before_anything_changes(corrupt, match):
    model, opt = _trained()
    sd = opt.state_dict()
    corrupt(sd)
    fresh_model = mlp(1)
    fresh = FusedGate(fresh_model.named_parameters(), spec=GateSpec.gated(), total_steps=10)
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(sd)
    after = fresh.state_dict()
    assert after["param_groups"] == before["param_groups"] and not after["state"]
    train(fresh_model, fresh, 1)   # still usable


def test_step_saved_as_a_python_number_loads_and_steps():
    model, opt = _trained()
    sd = opt.state_dict()
    for pstate in sd["state"].values():
        pstate["step"] = float(pstate["step"])
    again = FusedGate(model.named_parameters(), spec=GateSpec.gated(), total_steps=10)
    again.load_state_dict(sd)
    train(model, again, 1)
    assert all(torch.is_tensor(s["step"]) and s["step"].item() == 3 for s in again.state.values())


# ------------------------------------------------------------------ copies
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_keeps_every_public_attribute_and_can_step(how):
    """Copied together with its model (so the copy's params are the copied model's), the optimizer keeps
    spec, backend, total_steps, adamw_names and its state, and continues exactly as the original."""
    model, opt = _trained()
    pair = (model, opt)
    twin_model, twin = copy.deepcopy(pair) if how == "deepcopy" else pickle.loads(pickle.dumps(pair))
    for attr in ("spec", "backend", "total_steps", "adamw_names"):
        assert getattr(twin, attr) == getattr(opt, attr), attr
    assert torch.equal(twin._global, opt._global)
    train(model, opt, 2)
    train(twin_model, twin, 2)
    for a, b in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ groups
def test_a_rejected_param_group_leaves_no_trace():
    w = torch.nn.Parameter(torch.zeros(3, 3))
    opt = FusedGate([w], spec=GateSpec.muon())
    bias = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="matrices only"):
        opt.add_param_group(dict(kind="muon", params=[bias], lr=0.02, momentum=0.95, ns_steps=5))
    with pytest.raises(TypeError, match="complex"):
        opt.add_param_group(dict(params=[torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]))
    assert len(opt.param_groups) == 1
    opt.add_param_group(dict(kind="adamw", params=[bias], lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0))
    assert len(opt.param_groups) == 2


# ------------------------------------------------------------------ skipped steps, loss
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_non_finite_adamw_steps_are_counted(backend):
    model = mlp()
    opt = FusedGate(model.named_parameters(), spec=GateSpec.gated(), backend=backend)
    train(model, opt, 1)
    bias = model[0].bias
    before = bias.detach().clone()
    loss = torch.nn.functional.mse_loss(model(torch.randn(4, 8)), torch.zeros(4, 4))
    loss.backward()
    bias.grad[0] = math.nan
    opt.step(loss=loss.detach())
    assert torch.equal(bias, before)
    assert opt.skipped_steps()["0.bias"] == 1 and opt.skipped_steps()["0.weight"] == 0


def test_a_non_scalar_loss_is_refused():
    model = mlp()
    opt = FusedGate(model.parameters(), spec=GateSpec.gated())
    loss = torch.nn.functional.mse_loss(model(torch.randn(4, 8)), torch.zeros(4, 4), reduction="none")
    loss.sum().backward()
    with pytest.raises(ValueError, match="scalar"):
        opt.step(loss=loss.detach())
