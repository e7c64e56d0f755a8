"""OptBrain torch wrapper: bit-identical neutral start and the documented effect of each knob."""

import math

import numpy as np
import pytest
import torch
from conftest import sliding_mse, tiny_regression

from fusedgate import OptBrain
from fusedgate.brain import BrainError
from fusedgate.brain.features import NORM_BETA

OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adamw": lambda params: torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01),
    "plain": lambda params: torch.optim.SGD(params, lr=0.05),
}
BASES = ["sgd", "adamw"]


def make_problem(seed=0):
    """A tiny two-group MLP regression with fixed data (``conftest.tiny_regression``)."""
    model, x, y = tiny_regression(seed)
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters())}]
    return model, groups, x, y


def run(opt_name, steps, brain_kwargs=None, freeze=None, seed=0, loss_scale=None):
    """Train; return (model, base optimizer, brain or None, grads seen after the last step)."""
    model, groups, x, y = make_problem(seed)
    base = OPTIMIZERS[opt_name](groups)
    brain = OptBrain(base, **brain_kwargs) if brain_kwargs is not None else None
    if brain is not None and freeze is not None:
        brain.freeze(freeze)
    for t in range(steps):
        idx = torch.arange(t * 8, t * 8 + 16) % 64
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        if loss_scale is not None:
            loss = loss * loss_scale(t)
        (brain or base).zero_grad()
        loss.backward()
        if brain is not None:
            brain.step(loss=loss.detach())
        else:
            base.step()
    grads = [p.grad.clone() for p in model.parameters()]
    return model, base, brain, grads


def assert_same_run(a, b):
    (ma, oa, _, ga), (mb, ob, _, gb) = a, b
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(pa, pb)
    for x, y in zip(ga, gb):
        assert torch.equal(x, y), "the brain changed a gradient"
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name])), (k, name)


@pytest.mark.parametrize("opt_name", BASES)
def test_neutral_start_is_bit_identical(opt_name):
    # window 5, 3 warm-up windows: the first 15 steps run under exactly (1, 1, 0)
    brain_run = run(opt_name, 15, dict(window=5, warmup_windows=3))
    assert brain_run[2].core.n_windows == 3
    assert_same_run(run(opt_name, 15), brain_run)
    # the next two windows include at least one explored (non-neutral) one: the runs must part
    explored = run(opt_name, 25, dict(window=5, warmup_windows=3))
    assert not torch.equal(next(explored[0].parameters()), next(run(opt_name, 25)[0].parameters()))


@pytest.mark.parametrize("opt_name", BASES)
def test_zero_exploration_stays_bit_identical_through_learning(opt_name):
    # z_shrink 10: the gate cannot end the policy on a noise-level pair (an ended brain stops learning)
    brain_run = run(opt_name, 80, dict(window=4, warmup_windows=1, explore=0.0, hypergrad=0.0, z_shrink=10.0))
    assert brain_run[2].core.n_cycles >= 4        # it went through cycles and "learnt" from zero noise
    assert_same_run(run(opt_name, 80), brain_run)


def single_step_update(opt_name, knobs, steps_before=0):
    """Δp of the last step under frozen knobs, plus the grads that step saw (before any clipping)."""
    model, groups, x, y = make_problem()
    base = OPTIMIZERS[opt_name](groups)
    brain = OptBrain(base, window=4)
    brain.freeze({0: (1.0, 1.0, 0.0), 1: (1.0, 1.0, 0.0)})
    norms = []
    for t in range(steps_before + 1):
        if t == steps_before:
            brain.freeze(knobs)
        loss = ((model(x) - y) ** 2).mean() * (10.0 if t == steps_before else 1.0)
        brain.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        norms.append([math.sqrt(sum(float(g.pow(2).sum()) for g in grads[:2])),
                      math.sqrt(sum(float(g.pow(2).sum()) for g in grads[2:]))])
        before = [p.detach().clone() for p in model.parameters()]
        lrs = [g["lr"] for g in base.param_groups]
        brain.step(loss=loss.detach())
        assert [g["lr"] for g in base.param_groups] == lrs, "the lr must be restored after the step"
    delta = [p.detach() - b for p, b in zip(model.parameters(), before)]
    return delta, grads, np.array(norms), model


def test_scale_multiplies_the_update_sgd_and_adam():
    # plain SGD: Δp = -lr·s·g in group 0, -lr·g in group 1
    delta, grads, _, model = single_step_update("plain", {0: (2.5, 1.0, 0.0)})
    for i, (d, g) in enumerate(zip(delta, grads)):
        s = 2.5 if i < 2 else 1.0
        torch.testing.assert_close(d, -0.05 * s * g, rtol=1e-5, atol=1e-7)
    # Adam: the first step under scale s equals AdamW with lr·s on that group
    delta, grads, _, _ = single_step_update("adamw", {1: (0.3, 1.0, 0.0)})
    model, groups, _, _ = make_problem()
    groups[1]["lr"] = 3e-3 * 0.3
    ref = torch.optim.AdamW(groups, lr=3e-3, weight_decay=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    ref.step()
    for d, p, b in zip(delta, model.parameters(), before):
        torch.testing.assert_close(d, p.detach() - b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sigma, dampens", [(None, False), ((0.25, 0.25, 0.1), True)])
def test_the_dampen_knob_is_off_unless_its_exploration_scale_is_set(sigma, dampens):
    """σ_dampen = 0 (the default): the knob is never explored, so it stays 0 and no smoothing buffer is
    ever kept, even with full trust; σ_dampen > 0 explores it."""
    kwargs = dict(window=4, warmup_windows=1, alpha_start=1.0, z_shrink=10.0, explore=4.0)
    model, groups, x, y = make_problem()
    brain = OptBrain(torch.optim.AdamW(groups), **(kwargs if sigma is None else {**kwargs, "sigma": sigma}))
    damped_steps = 0
    for t in range(200):
        loss = sliding_mse(model, x, y, t)
        brain.zero_grad()
        loss.backward()
        brain.step(loss=loss.detach())
        damped_steps += bool(brain._dampen_buf)
    assert brain.report()["cycles"] > 10
    assert (damped_steps > 0) == dampens and (brain.core.mu[:, 2] != 0).any() == dampens


def test_clip_limits_the_group_grad_norm_to_its_running_norm():
    delta, grads, norms, _ = single_step_update("plain", {0: (1.0, 0.5, 0.0), 1: (1.0, 2.0, 0.0)},
                                                steps_before=6)
    # independent m̂: bias-corrected EMA of the group-0 norms measured before: with the clip off, only
    # on each window's last step (window 4: step 3)
    measured = [t for t in range(6) if t % 4 == 3]
    m = 0.0
    for n in norms[measured, 0]:
        m = NORM_BETA * m + (1 - NORM_BETA) * n
    m_hat = m / (1 - NORM_BETA ** len(measured))
    factor = min(1.0, m_hat * 1.0 / norms[6, 0])  # c = 0.5 -> τ = m̂·0.5/0.5
    assert factor < 0.2  # the 10× loss spike is clipped hard
    for i, (d, g) in enumerate(zip(delta, grads)):
        f = factor if i < 2 else 1.0   # clip 2.0 >= 1: no clipping in group 1
        torch.testing.assert_close(d, -0.05 * f * g, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("opt_name", ["plain", "adamw"])
def test_dampen_smooths_the_applied_update(opt_name):
    model, groups, x, y = make_problem()
    base = OPTIMIZERS[opt_name](groups)
    ref_model, ref_groups, _, _ = make_problem()
    ref = OPTIMIZERS[opt_name](ref_groups)   # the base optimizer alone, fed the same gradients
    brain = OptBrain(base, window=4)
    brain.freeze({0: (1.0, 1.0, 0.4)})
    u = None
    for _ in range(4):
        loss = ((model(x) - y) ** 2).mean()
        brain.zero_grad()
        loss.backward()
        before = [p.detach().clone() for p in model.parameters()]
        for rp, p in zip(ref_model.parameters(), model.parameters()):
            rp.data.copy_(p.data)
            rp.grad = p.grad.clone()
        ref.step()
        base_delta = [rp.detach() - b for rp, b in zip(ref_model.parameters(), before)]
        brain.step(loss=loss.detach())
        applied = [p.detach() - b for p, b in zip(model.parameters(), before)]
        expect0 = base_delta[:2] if u is None else [0.6 * d + 0.4 * v for d, v in zip(base_delta[:2], u)]
        for a, e in zip(applied[:2], expect0):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=2e-7)  # p - before rounds at ~ulp(p)
        for a, e in zip(applied[2:], base_delta[2:]):   # group 1 is not damped
            torch.testing.assert_close(a, e, rtol=1e-5, atol=2e-7)  # p - before rounds at ~ulp(p)
        u = expect0


@pytest.mark.parametrize("opt_name", BASES)
@pytest.mark.parametrize("knobs", [(3.0, 1.0, 0.0), (1.0, 0.3, 0.0), (1.0, 1.0, 0.7)])
def test_each_knob_changes_the_trajectory(opt_name, knobs):
    moved = run(opt_name, 20, dict(window=4), freeze={0: knobs, 1: knobs},
                loss_scale=lambda t: 5.0 if t % 7 == 6 else 1.0)
    base_spiky = [p.detach() for p in run(opt_name, 20, dict(window=4), freeze={0: (1, 1, 0), 1: (1, 1, 0)},
                                          loss_scale=lambda t: 5.0 if t % 7 == 6 else 1.0)[0].parameters()]
    diff = max(float((a.detach() - b).abs().max()) for a, b in zip(moved[0].parameters(), base_spiky))
    assert diff > 1e-4, f"knobs {knobs} did not change the {opt_name} trajectory"


def test_exploration_changes_decisions_and_the_policy_moves():
    model, groups, x, y = make_problem()
    # the gate held still (z thresholds out of reach): this test is about the cycle, not the trust
    brain = OptBrain(torch.optim.AdamW(groups, lr=3e-3), window=4, warmup_windows=2, seed=3, z_grow=10.0,
                     z_shrink=10.0, ladder=0)
    seen = []
    for t in range(4 * 2 + 4 * 4 * 8):
        if t % 4 == 0:                        # the knobs in force for the window starting now
            seen.append(np.array([brain.decisions[g] for g in range(2)]))
        loss = ((model(x) - y) ** 2).mean()
        brain.zero_grad()
        loss.backward()
        brain.step(loss=loss.detach())
    seen = np.array(seen)
    assert np.all(seen[:2] == [[1, 1, 0], [1, 1, 0]])           # warm-up: exactly neutral
    explored = seen[2:]
    neutral = np.all(explored == [[1, 1, 0], [1, 1, 0]], axis=(1, 2))
    # one neutral control window in every cycle of 4 (+ε, −ε, the policy mean, neutral)
    assert [int(neutral[c * 4:(c + 1) * 4].sum()) for c in range(8)] == [1] * 8
    assert len({tuple(np.round(d.ravel(), 6)) for d in explored[~neutral]}) == (~neutral).sum()
    assert np.all(explored[..., 0] > 0.01) and np.all(explored[..., 1] >= 0.1)
    assert brain.core.n_cycles == 8
    assert np.abs(brain.core.b).sum() > 0 and np.abs(brain.core.W).sum() > 0


def test_step_input_errors():
    model, groups, x, y = make_problem()
    brain = OptBrain(torch.optim.SGD(groups, lr=0.1))
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    with pytest.raises(BrainError, match="needs loss"):
        brain.step()
    with pytest.raises(BrainError, match="0-d"):
        brain.step(loss=torch.ones(3))
    with pytest.raises(BrainError, match="float or a 0-d tensor"):
        brain.step(loss="0.5")
    with pytest.raises(BrainError, match="numpy mode only"):
        brain.get_decisions(1.0)
    with pytest.raises(BrainError, match="torch optimizer"):
        OptBrain(object())
    with pytest.raises(BrainError, match="n_groups=3"):
        OptBrain(torch.optim.SGD(groups, lr=0.1), n_groups=3)
    with pytest.raises(BrainError, match="window"):
        OptBrain(torch.optim.SGD(groups, lr=0.1), window=1)
    with pytest.raises(BrainError, match="freeze"):
        brain.freeze({0: (20.0, 1.0, 0.0)})
    odd = torch.Tensor._make_subclass(type("Odd", (torch.Tensor,), {}), torch.zeros(3), True)
    with pytest.raises(BrainError, match="needs plain tensors .or FSDP2 DTensors. as parameters, got Odd"):
        OptBrain(torch.optim.SGD([odd], lr=0.1))
    # a float loss and a closure work too
    brain.step(loss=loss.item())
    brain.step(closure=lambda: ((model(x) - y) ** 2).mean())
    assert brain.step_count == 2


def test_state_size_for_eight_groups_is_under_50_kb():
    layers = torch.nn.ModuleList([torch.nn.Linear(32, 32) for _ in range(8)])
    groups = [{"params": list(layer.parameters())} for layer in layers]
    brain = OptBrain(torch.optim.AdamW(groups))
    assert brain.state_nbytes() <= 50 * 1024
    numpy_brain = OptBrain(None, n_groups=8)
    assert numpy_brain.state_nbytes() <= 50 * 1024


HOST_READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")


def count_host_reads(monkeypatch, wrapped, steps):
    """Tensor→host reads per step (a device sync on GPU), counted on the real tensors."""
    counter = {"n": 0}
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            counter["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    model, groups, x, y = make_problem()
    base = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    opt = OptBrain(base, window=5, warmup_windows=1, seed=2) if wrapped else base
    if wrapped:
        opt.features.on_host = False   # the device path, a GPU's (on the CPU the small arithmetic is numpy's)
        opt.freeze({0: (1.5, 0.5, 0.3), 1: (0.8, 1.0, 0.0)})   # every generic mechanism active
        opt.frozen = False
    per_step = []
    for t in range(steps):
        loss = ((model(x[t:t + 16]) - y[t:t + 16]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        before = counter["n"]
        opt.step(loss=loss.detach()) if wrapped else opt.step()
        per_step.append(counter["n"] - before)
    monkeypatch.undo()
    return per_step


def test_no_host_sync_per_step_only_at_window_ends(monkeypatch):
    base = count_host_reads(monkeypatch, False, 15)
    brain = count_host_reads(monkeypatch, True, 15)
    extra = [b - a for a, b in zip(base, brain)]
    assert [e for t, e in enumerate(extra) if (t + 1) % 5 != 0] == [0] * 12, extra
    assert all(extra[t] >= 1 for t in (4, 9, 14))   # the one read of the window, every K steps


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nonfinite_loss_is_skipped_and_counted_and_the_base_step_runs(bad):
    """NaN/inf ``loss=`` on some steps: the learner skips them (counted), its knobs stay finite, and each
    step is the base's own (a brain that cannot explore stays neutral: bit-identical to the base)."""
    bad_steps = {3, 9, 10, 17, 30}
    model, groups, x, y = make_problem()
    brain = OptBrain(OPTIMIZERS["adamw"](groups), window=4, warmup_windows=1, explore=0.0, hypergrad=0.0)
    for t in range(40):
        idx = torch.arange(t * 8, t * 8 + 16) % 64
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        brain.zero_grad()
        loss.backward()
        brain.step(loss=torch.tensor(bad) if t in bad_steps else loss.detach())
    assert brain.report()["skipped_losses"] == len(bad_steps)
    assert brain.report()["bad_windows"] == 0
    assert all(np.isfinite(v).all() for v in brain.decisions.values())
    reference = run("adamw", 40)
    for p, q in zip(model.parameters(), reference[0].parameters()):
        assert torch.equal(p, q)


def test_a_group_the_clip_leaves_at_factor_one_keeps_its_gradients_bit_for_bit():
    from fusedgate.brain.torch_features import TorchFeatures

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 4, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]
    features = TorchFeatures([[params[0]], [params[1]]], window=4, sketch_size=8, seed=0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    features.record_loss(0, 1.0)
    features.grad_norms()
    features.end_step()                                   # m̂ = this norm
    grads = [p.grad.clone() for p in params]
    versions = [p.grad._version for p in params]
    features.record_loss(1, 1.0)
    features.clip_(np.array([2.0, 0.5]))                  # τ = 2·m̂ (≥ ‖g‖: factor 1) and ½·m̂ (factor ½)
    assert params[0].grad._version == versions[0] and torch.equal(params[0].grad, grads[0])   # not even written
    assert params[1].grad._version > versions[1]
    torch.testing.assert_close(params[1].grad, grads[1] * 0.5, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("on_host", [True, False], ids=["host-path", "device-path"])
def test_the_clip_norms_only_the_groups_it_clips(on_host):
    """A group whose clip is off keeps its running norm m̂ (and its count of measured steps) as it was; the
    clipping group's m̂ is the bias-corrected EMA of its norms on every step (the CPU's numpy path and the
    device's torch path, here on the CPU)."""
    from fusedgate.brain.torch_features import TorchFeatures

    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(8, 4, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]
    features = TorchFeatures([[params[0]], [params[1]]], window=4, sketch_size=8, seed=0)
    features.on_host = on_host
    norms_1 = []
    for k in range(3):
        for p in params:
            p.grad = (1.0 + k) * torch.randn(p.shape, generator=gen)
        norms_1.append(float(params[1].grad.norm()))
        features.record_loss(k, 1.0)
        if k == 0:
            features.grad_norms()                             # every group measured once
            first = float(params[0].grad.norm())
        else:
            features.clip_(np.array([math.inf, 100.0]))       # group 1 alone; τ far above ‖g‖: factor 1
        features.end_step()
    assert features.norm_count.tolist() == [1, 3]
    m = features.running_norm()
    assert m[0].item() == pytest.approx(first, rel=1e-6)
    ema = sum((1 - NORM_BETA) * NORM_BETA ** (2 - i) * x for i, x in enumerate(norms_1))
    assert m[1].item() == pytest.approx(ema / (1 - NORM_BETA ** 3), rel=1e-5)


def test_a_brain_whose_gate_ended_the_policy_stops_sensing(host_reads):
    """α = 0 is final: from the window that ended the policy on, a step is the base step and a counter —
    no features, no window reads, the report as it was — and the run stays the base optimizer's."""
    model, groups, x, y = make_problem()
    brain = OptBrain(torch.optim.SGD(groups, lr=0.05, momentum=0.9), window=4, warmup_windows=1)
    reads = host_reads
    for t in range(40):
        loss = sliding_mse(model, x, y, t)
        brain.zero_grad()
        loss.backward()
        # NaN losses through the first brain window: a bad window, α ⅛ → 1/32 < α_min → 0
        brain.step(loss=loss.detach() if not 4 <= t < 8 else torch.tensor(float("nan")))
        if t == 7:
            assert brain.core.ended and not brain.learning and brain.report()["alpha"] == 0.0
            reads_at_end, report_at_end = reads["n"], brain.report()
            assert brain.decisions == {0: (1.0, 1.0, 0.0), 1: (1.0, 1.0, 0.0)}
    assert reads["n"] == reads_at_end                          # 8 more windows, not one read
    assert {k: v for k, v in brain.report().items() if k != "steps"} == \
        {k: v for k, v in report_at_end.items() if k != "steps"}
    assert brain.report()["steps"] == 40


def test_a_brain_that_starts_at_zero_trust_is_the_base_optimizer_throughout():
    # the ladder is a test of its own (an ended brain still runs it: tests/test_brain_ladder.py); off here
    brain_run = run("adamw", 30, dict(window=4, alpha_start=0.0, alpha_min=0.0, ladder=0))
    assert not brain_run[2].learning and brain_run[2].report()["windows"] == 0
    assert_same_run(run("adamw", 30), brain_run)


def test_a_bfloat16_model_takes_the_device_path_on_the_cpu():
    """numpy has no bfloat16: such parameters are sensed by torch ops even on the CPU (the float32 path's
    numpy arithmetic is for float32/float64 only), and its features are finite."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).to(torch.bfloat16)
    brain = OptBrain(torch.optim.SGD(model.parameters(), lr=0.01), window=4, warmup_windows=1)
    assert not brain.features.on_host
    x = torch.randn(16, 8, dtype=torch.bfloat16)
    for _ in range(12):
        loss = model(x).float().square().mean()
        brain.zero_grad()
        loss.backward()
        brain.step(loss=loss.detach())
    assert brain.features.has_prev and np.isfinite(brain.features.feat).all()
    assert brain.features.norm_count.tolist()[0] >= 3       # the three sensed steps (and any clipping ones)


def test_sync_ranks_must_be_a_bool_and_a_single_process_averages_nothing():
    model, groups, _, _ = make_problem()
    with pytest.raises(BrainError, match="sync_ranks must be True or False"):
        OptBrain(torch.optim.SGD(groups, lr=0.1), sync_ranks="yes")
    assert OptBrain(torch.optim.SGD(groups, lr=0.1))._ranks is None   # no process group: nothing to average


@pytest.mark.parametrize("on_host", [True, False], ids=["host-path", "device-path"])
def test_sparse_gradients_are_refused_in_one_line(on_host):
    embed = torch.nn.Embedding(10, 4, sparse=True)
    brain = OptBrain(torch.optim.SGD(embed.parameters(), lr=0.1), window=3)
    brain.features.on_host = on_host
    with pytest.raises(BrainError, match="does not support sparse gradients"):
        for _ in range(3):                       # the window's last step senses the gradients
            brain.zero_grad()
            embed(torch.tensor([1, 2])).sum().backward()
            brain.step(loss=1.0)
