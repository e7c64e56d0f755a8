"""``global_kernel`` (``kernels.backend.advance_global``) against ``functional.advance_global``'s torch form
(``gate.observe_loss``), bit for bit under the interpreter; and a refused Triton step, which changes nothing."""

import math

import pytest
import torch
from conftest import needs_single_rounding_fma

from fusedgate import FusedGate, GateSpec
from fusedgate import functional as F
from fusedgate import gate as G
from fusedgate.kernels import backend

# the interpreter's NumPy warns on the overflows and NaNs these tests feed it on purpose
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
FP32_MAX = torch.finfo(torch.float32).max

# finite, non-finite and overflowing losses, as tensors of several dtypes and as Python numbers
LOSSES = [float("nan"), 3.0, 2.5, torch.tensor(2.25, dtype=torch.bfloat16), float("inf"), torch.tensor([1.75]),
          torch.tensor(2.0, dtype=torch.float64), 7, -float("inf"), 3e38, -3e38,
          torch.tensor(1e300, dtype=torch.float64), -3e38, 1.5, torch.tensor([[0.5]], dtype=torch.float16), None,
          1e-30, 0.0, -2.0]


def both_sequences(spec: GateSpec, losses):
    """The global state after each loss (None: a step without one), torch form and kernel side by side."""
    torch_state, kernel_state = G.new_global_state("cpu"), G.new_global_state("cpu")
    for loss in losses:
        before_torch = F.advance_global(torch_state, loss, spec, backend="reference")
        before_kernel = backend.advance_global(kernel_state, loss, spec)
        yield torch_state.clone(), kernel_state.clone(), before_torch, before_kernel


@needs_single_rounding_fma()
@pytest.mark.parametrize("spec", [GateSpec.gated(), GateSpec.gated().replace(ema_loss=0.3, ema_loss_improvement=0.7)])
def test_the_kernel_folds_losses_as_the_torch_form_does(spec):
    previous = G.new_global_state("cpu")
    for torch_state, kernel_state, before_torch, before_kernel in both_sequences(spec, LOSSES):
        assert torch.equal(torch_state, kernel_state), (torch_state, kernel_state)
        assert torch.equal(before_torch, previous) and torch.equal(before_kernel, previous)
        previous = torch_state
    assert previous[G.G_STEP].item() == len(LOSSES)
    finite = [x for x in LOSSES if x is not None and math.isfinite(torch.as_tensor(x).float().item())]
    assert previous[G.G_LOSS_SEEN].item() == len(finite)


def test_overflowing_losses_reach_the_clamped_values():
    """A sequence that overflows float32 (3e38 then −3e38: the improvement is −inf before nan_to_num) is
    clamped, not NaN: the case where the kernel's ``_finite_or_max`` is needed, seen from both sides."""
    states = list(both_sequences(GateSpec.gated(), [3e38, -3e38, -3e38]))
    final = states[-1][1]
    assert torch.isfinite(final).all()
    assert final[G.G_LOSS_IMPROVEMENT].abs().item() == FP32_MAX


@needs_single_rounding_fma()
def test_a_first_loss_that_is_not_finite_leaves_the_loss_unseen():
    for torch_state, kernel_state, _, _ in both_sequences(GateSpec.gated(), [float("nan"), float("inf")]):
        assert torch.equal(torch_state, kernel_state)
        assert kernel_state[G.G_LOSS_SEEN].item() == 0 and kernel_state[G.G_LOSS_EMA].item() == 0


@needs_single_rounding_fma()
def test_a_triton_optimizer_advances_its_global_state_in_one_launch():
    """FusedGate(backend='triton') folds the loss with ``global_kernel``: its global state equals the reference
    optimizer's after every step (same gradients into both), and torch runs no op of ``observe_loss`` for it."""
    torch.manual_seed(0)
    shapes = [(6, 5), (7,)]
    ref_params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    tri_params = [torch.nn.Parameter(p.detach().clone()) for p in ref_params]
    ref = FusedGate(ref_params, spec=GateSpec.gated(), backend="reference", total_steps=6)
    tri = FusedGate(tri_params, spec=GateSpec.gated(), backend="triton", total_steps=6)
    for step, loss in enumerate([2.0, float("nan"), 1.5, 1.25]):
        for a, b in zip(ref_params, tri_params):
            a.grad = torch.randn(a.shape, generator=torch.Generator().manual_seed(step))
            b.grad = a.grad.clone()
        ref.step(loss=torch.tensor(loss))
        tri.step(loss=torch.tensor(loss))
        assert torch.equal(ref._global, tri._global)
        for a, b in zip(ref_params, tri_params):
            b.data.copy_(a.data)   # teacher-forced: the next step starts from the same params
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        F.advance_global(tri._global, torch.tensor(1.0), tri.spec, backend="triton")
    names = {event.name for event in prof.events()}
    assert not names & {"aten::lerp", "aten::where", "aten::nan_to_num", "aten::stack", "aten::isfinite"}, names


def refused_setup(corrupt):
    """A Triton FusedGate after two good steps, then ``corrupt`` applied to it: (optimizer, params)."""
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(4, 3)),
              torch.nn.Parameter(torch.randn(5))]
    opt = FusedGate([{"params": params[:1]}, {"params": params[1:]}], spec=GateSpec.gated(), backend="triton",
                    total_steps=8)
    for step in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
        opt.step(loss=torch.tensor(2.0 - step))
    for p in params:
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(9))
    corrupt(opt, params)
    return opt, params


def snapshot(opt, params):
    return ([p.detach().clone() for p in params], opt._global.clone(),
            [{k: v.clone() for k, v in opt.state[p].items()} for p in params])


@pytest.mark.parametrize("corrupt,match", [
    (lambda opt, params: opt.state[params[1]].__setitem__("exp_avg", opt.state[params[1]]["exp_avg"].double()),
     "exp_avg"),
    (lambda opt, params: opt.state[params[2]].__setitem__("step", opt.state[params[2]]["step"].double()), "step"),
    (lambda opt, params: opt.state[params[1]].__setitem__("sensors", torch.zeros(3)), "sensors"),
])
def test_a_refused_triton_step_changes_nothing(corrupt, match):
    """The last group's bad state (a gated matrix's, an AdamW vector's) is found before anything runs: the first
    group's params, every state and the global step count and loss sensors are as they were."""
    opt, params = refused_setup(corrupt)
    before = snapshot(opt, params)
    with pytest.raises((TypeError, ValueError), match=match):
        opt.step(loss=torch.tensor(0.5))
    after = snapshot(opt, params)
    assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
    assert torch.equal(before[1], after[1])
    for state_before, state_after in zip(before[2], after[2]):
        assert state_before.keys() == state_after.keys()
        assert all(torch.equal(state_before[k], state_after[k]) for k in state_before)
