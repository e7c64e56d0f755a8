"""The numbers FusedGate takes are refused where they enter, in one line naming the group and the value:
param-group hyperparameters (construction, add_param_group, and what a scheduler writes before a step),
total_steps, and the loss."""

import math

import pytest
import torch

from fusedgate import FusedGate, GateSpec


def matrix() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(4, 3))


@pytest.mark.parametrize("key,value,fragment", [
    ("lr", -1.0, "lr=-1.0"), ("lr", math.nan, "lr=nan"), ("lr", math.inf, "lr=inf"),
    ("momentum", 1.0, "momentum=1.0"), ("betas", (0.9, 1.0), "betas[1]=1.0"), ("betas", (-0.1, 0.9), "betas[0]=-0.1"),
    ("eps", 0.0, "eps=0.0"), ("eps", math.nan, "eps=nan"), ("weight_decay", -0.1, "weight_decay=-0.1"),
    ("ns_steps", 0, "ns_steps=0"), ("ns_steps", -3, "ns_steps=-3"), ("ns_steps", 2.5, "ns_steps=2.5"),
    ("beta2", 1.5, "beta2=1.5"), ("lr", "fast", "lr='fast'"),
])
def test_bad_group_hyperparameters_are_refused_at_construction_and_add_param_group(key, value, fragment):
    with pytest.raises(ValueError, match=f"param group 0: {fragment.replace('[', '.').replace(']', '.')}") as info:
        FusedGate([{"params": [matrix()], key: value}], spec=GateSpec.gated())
    assert "\n" not in str(info.value)
    opt = FusedGate([matrix()], spec=GateSpec.gated())
    with pytest.raises(ValueError, match="param group 1: "):
        opt.add_param_group({"params": [matrix()], key: value})
    assert len(opt.param_groups) == 1


def test_ns_steps_matters_only_where_the_orthogonaliser_runs():
    FusedGate([{"params": [matrix()], "ns_steps": 0}], spec=GateSpec.adamw())   # ω ≡ 0: never used
    FusedGate([{"params": [torch.nn.Parameter(torch.randn(5))], "ns_steps": 0}], spec=GateSpec.gated())


def test_what_a_scheduler_writes_is_checked_before_the_step_changes_anything():
    p = matrix()
    opt = FusedGate([p], spec=GateSpec.gated())
    p.grad = torch.randn(4, 3)
    opt.step(loss=torch.tensor(1.0))
    before = p.detach().clone()
    opt.param_groups[0]["lr"] = math.nan   # a broken schedule
    with pytest.raises(ValueError, match="param group 0: lr=nan must be a finite number"):
        opt.step(loss=torch.tensor(1.0))
    assert torch.equal(p, before)
    opt.param_groups[0]["lr"] = torch.tensor(0.01)   # torch's tensor lr is a number too
    opt.step(loss=torch.tensor(1.0))


@pytest.mark.parametrize("total_steps", [True, False, 0, -100, 1e30, 100.0, 2**40, "100"])
def test_total_steps_must_be_a_positive_int(total_steps):
    with pytest.raises(ValueError, match="total_steps=.* must be None or an int in \\[1, "):
        FusedGate([matrix()], total_steps=total_steps)


def test_a_numpy_int_total_steps_is_an_int():
    numpy = pytest.importorskip("numpy")
    assert FusedGate([matrix()], total_steps=numpy.int64(100)).total_steps == 100


@pytest.mark.parametrize("loss", [torch.tensor(1.0 + 2.0j), 1.0 + 2.0j, torch.tensor(True), "1.0"])
def test_a_loss_must_be_real(loss):
    p = matrix()
    opt = FusedGate([p], spec=GateSpec.gated())
    p.grad = torch.randn(4, 3)
    with pytest.raises(ValueError, match="step\\(loss=...\\) takes a real"):
        opt.step(loss=loss)
    assert not opt.state
