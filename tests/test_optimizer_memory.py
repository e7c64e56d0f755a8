"""Optimizer state only where it is read: a gated matrix keeps ``exp_avg_sq`` only while some pole gives the
Adam direction weight (ω < 1); created (zeros) when a later spec needs it, dropped when a checkpoint
holding it is loaded under a spec that does not. At ω ≡ 1 FusedGate holds what nanochat's MuonAdamW holds
(≤ 1.01× its bytes on the same groups)."""

import copy

import pytest
import torch

from fusedgate import FusedGate, GateSpec, Pole
from fusedgate.distributed import state_bytes
from fusedgate.nanochat.model import GPT, GPTConfig
from fusedgate.nanochat.muon import MuonAdamW


def gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_depth(2, vocab_size=256, sequence_len=32))


def groups(model: GPT) -> list[dict]:
    return model.param_groups(0.3, 0.008, 0.02, 0.0)


def one_step(model: GPT, opt, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt.step(loss=torch.tensor(3.0)) if isinstance(opt, FusedGate) else opt.step()


def with_adam_pole(spec: GateSpec) -> GateSpec:
    """``spec`` with a conservative pole that gives the Adam direction weight (ω = 0.5), no clip."""
    return spec.replace(conservative=Pole(**{**spec.conservative.__dict__, "ortho": 0.5}))


@pytest.mark.parametrize("preset", ["nanochat", "default", "gated", "muon"])
def test_omega_one_presets_hold_what_nanochat_holds(preset):
    model = gpt()
    baseline = MuonAdamW(groups(model))
    one_step(model, baseline)
    ours = gpt()
    opt = FusedGate(groups(ours), spec=getattr(GateSpec, preset)())
    one_step(ours, opt)
    for group in opt.param_groups:
        for p in group["params"]:
            assert ("exp_avg_sq" in opt.state[p]) == (group["kind"] == "adamw")
    assert state_bytes(opt) <= 1.01 * state_bytes(baseline)


def test_a_later_spec_that_needs_the_second_moment_gets_it_as_zeros():
    model = gpt()
    opt = FusedGate(groups(model), spec=GateSpec.nanochat())
    one_step(model, opt)
    matrix = next(p for g in opt.param_groups if g["kind"] == "muon" for p in g["params"])
    assert "exp_avg_sq" not in opt.state[matrix]
    opt.spec = with_adam_pole(GateSpec.nanochat())
    gen = torch.Generator().manual_seed(2)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    grad = matrix.grad.clone()
    opt.step(loss=torch.tensor(3.0))
    beta2 = opt.spec.conservative.beta2
    expected = (1 - beta2) * grad.square()   # v ← β₂·0 + (1 − β₂)·g², from zeros
    assert torch.allclose(opt.state[matrix]["exp_avg_sq"], expected, rtol=1e-6, atol=0)
    assert float(opt.state[matrix]["v_decay_prod"]) == pytest.approx(beta2)


def test_an_old_checkpoint_holding_the_unused_moment_loads_and_continues_identically():
    straight_model = gpt()
    straight = FusedGate(groups(straight_model), spec=GateSpec.nanochat())
    for seed in range(4):
        one_step(straight_model, straight, seed)

    model = gpt()
    opt = FusedGate(groups(model), spec=GateSpec.nanochat())
    for seed in range(2):
        one_step(model, opt, seed)
    old = copy.deepcopy(opt.state_dict())
    for pstate in old["state"].values():   # the format before: a second moment for every matrix
        pstate.setdefault("exp_avg_sq", torch.zeros_like(pstate["exp_avg"]))
    resumed = FusedGate(groups(model), spec=GateSpec.nanochat())
    resumed.load_state_dict(old)
    assert all("exp_avg_sq" not in s for s in resumed.state.values() if "sensors" in s)
    for seed in range(2, 4):
        one_step(model, resumed, seed)
    for a, b in zip(model.parameters(), straight_model.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_whose_spec_reads_the_moment_keeps_it():
    model = gpt()
    spec = with_adam_pole(GateSpec.nanochat())
    opt = FusedGate(groups(model), spec=spec)
    one_step(model, opt)
    saved = opt.state_dict()
    resumed = FusedGate(groups(gpt()), spec=spec)
    resumed.load_state_dict(saved)
    pairs = [(p, q) for g, h in zip(opt.param_groups, resumed.param_groups) for p, q in zip(g["params"], h["params"])]
    assert any("sensors" in opt.state[p] for p, _ in pairs)
    for p, q in pairs:
        assert torch.equal(opt.state[p]["exp_avg_sq"], resumed.state[q]["exp_avg_sq"])
