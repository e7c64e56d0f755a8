"""Checkpointing, the torch.optim conventions, and bad input."""

import io

import pytest
import torch

from fusedgate import FusedGate, GateSpec


class TinyLM(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(20, 16)
        self.mix = torch.nn.Linear(16, 16)
        self.norm_gain = torch.nn.Parameter(torch.ones(16))
        self.lm_head = torch.nn.Linear(16, 20, bias=False)

    def forward(self, idx):
        return self.lm_head(torch.tanh(self.mix(self.embed(idx))) * self.norm_gain)


def lm_batches(start, n):
    for i in range(start, start + n):
        gen = torch.Generator().manual_seed(100 + i)
        idx = torch.randint(0, 20, (8, 6), generator=gen)
        yield idx, (idx + 1) % 20


def run(model, opt, start, n, sched=None):
    losses = []
    for idx, tgt in lm_batches(start, n):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), tgt.flatten())
        loss.backward()
        opt.step(loss=loss.detach())
        if sched:
            sched.step()
        losses.append(loss.item())
    return losses


def make(seed=0, spec=None):
    model = TinyLM(seed)
    return model, FusedGate(model.named_parameters(), spec=spec or GateSpec.gated(), total_steps=30)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_named_parameters_route_embeddings_and_heads_to_adamw():
    model, opt = make()
    run(model, opt, 0, 1)
    gated = {name for name in opt.gate_state()}
    assert gated == {"mix.weight"}
    assert "sensors" not in opt.state[model.embed.weight]
    assert "sensors" not in opt.state[model.lm_head.weight]


def test_resume_is_bit_identical():
    model, opt = make()
    run(model, opt, 0, 20)
    checkpoint = roundtrip({"model": model.state_dict(), "opt": opt.state_dict()})
    expected = run(model, opt, 20, 10)

    model2, opt2 = make(seed=123)  # different init: everything must come from the checkpoint
    model2.load_state_dict(checkpoint["model"])
    opt2.load_state_dict(checkpoint["opt"])
    assert run(model2, opt2, 20, 10) == expected
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt.gate_state() == opt2.gate_state()


def test_bf16_params_keep_fp32_state_through_a_checkpoint():
    w = torch.nn.Parameter(torch.randn(8, 4, dtype=torch.bfloat16))
    opt = FusedGate([w], spec=GateSpec.gated())
    w.grad = torch.randn(8, 4, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[w]["exp_avg"].dtype == torch.float32
    opt2 = FusedGate([w], spec=GateSpec.gated())
    opt2.load_state_dict(roundtrip(opt.state_dict()))
    assert opt2.state[w]["exp_avg"].dtype == torch.float32
    assert opt2.state[w]["m_decay_prod"].dtype == torch.float64
    assert torch.equal(opt2.state[w]["exp_avg"], opt.state[w]["exp_avg"])


def test_state_dict_from_another_layout_is_refused_whole():
    model, opt = make()
    run(model, opt, 0, 3)
    other = torch.nn.Linear(16, 16)
    other_opt = FusedGate(other.parameters(), spec=GateSpec.gated())
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="param"):
        other_opt.load_state_dict(opt.state_dict())
    assert len(other_opt.state) == 0 and other_opt._global is None
    # same count of params but another shape
    twin = TinyLM()
    twin.mix = torch.nn.Linear(16, 16, bias=True)
    twin.lm_head = torch.nn.Linear(16, 21, bias=False)
    twin_opt = FusedGate(twin.named_parameters(), spec=GateSpec.gated())
    with pytest.raises(ValueError, match="shape"):
        twin_opt.load_state_dict(opt.state_dict())
    assert len(twin_opt.state) == 0
    with pytest.raises(ValueError, match="not a FusedGate"):
        opt.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())
    assert {k: v for k, v in other.state_dict().items()}.keys() == before.keys()


def test_non_finite_gradient_skips_that_param_only_and_is_counted():
    model, opt = make()
    run(model, opt, 0, 3)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    mix_state = {k: v.clone() for k, v in opt.state[model.mix.weight].items()}
    opt.zero_grad()
    idx, tgt = next(lm_batches(50, 1))
    torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), tgt.flatten()).backward()
    model.mix.weight.grad[0, 0] = float("nan")
    model.norm_gain.grad[1] = float("inf")
    opt.step()
    assert torch.equal(model.mix.weight, snapshot["mix.weight"])
    assert torch.equal(model.norm_gain, snapshot["norm_gain"])
    assert not torch.equal(model.embed.weight, snapshot["embed.weight"])
    after = opt.state[model.mix.weight]
    assert after.keys() == mix_state.keys()   # (no exp_avg_sq at ω ≡ 1: nothing reads it)
    for key in ("exp_avg", "exp_avg_sq", "step", "m_decay_prod", "v_decay_prod"):
        if key in mix_state:
            assert torch.equal(after[key], mix_state[key]), key
    assert opt.gate_state()["mix.weight"]["skipped"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_loss_leaves_loss_sensors_alone():
    model, opt = make()
    run(model, opt, 0, 2)
    before = opt._global.clone()
    opt.zero_grad()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step(loss=torch.tensor(float("nan")))
    assert torch.equal(opt._global[1:], before[1:])


def test_sparse_gradients_and_complex_params_are_refused():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = FusedGate(emb.parameters(), spec=GateSpec.gated())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    with pytest.raises(TypeError, match="complex"):
        FusedGate([torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))])


@pytest.mark.parametrize("kwargs, match", [
    (dict(backend="cuda"), "backend"),
    (dict(total_steps=0), "total_steps"),
    (dict(spec={"lr": 1}), "GateSpec"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        FusedGate([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_bad_groups():
    with pytest.raises(ValueError, match="kind"):
        FusedGate([dict(params=[torch.nn.Parameter(torch.zeros(2, 2))], kind="sgd")])
    with pytest.raises(ValueError, match="matrices only"):
        FusedGate([dict(params=[torch.nn.Parameter(torch.zeros(4))], kind="muon")])


def test_lr_scheduler_add_param_group_zero_grad_and_closure():
    model, opt = make(spec=GateSpec.adamw(lr=1e-2, weight_decay=0.0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    run(model, opt, 0, 3, sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)
    extra = torch.nn.Parameter(torch.ones(3, 3))
    opt.add_param_group({"params": [("extra", extra)], "lr": 0.1})  # torch: named like the others
    opt.zero_grad()
    assert all(p.grad is None for group in opt.param_groups for p in group["params"])

    def closure():
        opt.zero_grad()
        loss = (extra**2).sum()
        loss.backward()
        return loss

    returned = opt.step(closure)
    assert returned.item() == pytest.approx(9.0)
    assert not torch.equal(extra.detach(), torch.ones(3, 3))


def test_lr_schedule_scales_the_matrix_step():
    deltas = []
    for lr in (1e-2, 5e-3):
        w = torch.nn.Parameter(torch.ones(4, 4))
        opt = FusedGate([w], spec=GateSpec.adamw(lr=1e-2, weight_decay=0.0))
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.full((4, 4), 0.3)
        opt.step()
        deltas.append(1 - w.detach())
    torch.testing.assert_close(deltas[1], 0.5 * deltas[0], rtol=1e-5, atol=1e-9)
