"""Neutral presets reproduce their optimizers: GateSpec.adamw == torch AdamW, GateSpec.muon == Muon."""

import math

import pytest
import torch
from conftest import max_rel_diff
from references import newton_schulz5

from fusedgate import FusedGate, GateSpec


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.GELU(), torch.nn.Linear(32, 24),
                               torch.nn.GELU(), torch.nn.Linear(24, 5))


def batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(64, 12, generator=gen)
        yield x, torch.sin(x[:, :5] * 2) + 0.1 * torch.randn(64, 5, generator=gen)


def train(model, opt, steps, pass_loss):
    for x, y in batches(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if pass_loss:
            opt.step(loss=loss.detach())
        else:
            opt.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("foreach", [False, True])
def test_adamw_preset_matches_torch_adamw(weight_decay, foreach):
    ours, theirs = small_model(), small_model()
    kwargs = dict(lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    train(theirs, torch.optim.AdamW(theirs.parameters(), foreach=foreach, **kwargs), 100, pass_loss=False)
    train(ours, FusedGate(ours.parameters(), spec=GateSpec.adamw(**kwargs)), 100, pass_loss=True)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert max_rel_diff(a, b) <= 1e-6


class PlainMuon(torch.optim.Optimizer):
    """Muon for matrices (nesterov momentum, NS5, nanochat's sqrt(max(1, rows/cols)) scale)."""

    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state[p].setdefault("buf", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = newton_schulz5(p.grad.lerp(buf, group["momentum"]))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * math.sqrt(max(1.0, p.shape[0] / p.shape[1])))


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_muon_preset_matches_plain_muon(weight_decay):
    ours, theirs = small_model(), small_model()
    matrices = [p for p in theirs.parameters() if p.ndim == 2]
    vectors = [p for p in theirs.parameters() if p.ndim < 2]
    muon = PlainMuon(matrices, lr=0.02, momentum=0.95, weight_decay=weight_decay)
    adamw = torch.optim.AdamW(vectors, lr=0.02, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)

    class Both:
        def zero_grad(self):
            muon.zero_grad()
            adamw.zero_grad()

        def step(self):
            muon.step()
            adamw.step()

    train(theirs, Both(), 50, pass_loss=False)
    spec = GateSpec.muon(lr=0.02, momentum=0.95, weight_decay=weight_decay, adamw_betas=(0.9, 0.95))
    train(ours, FusedGate(ours.parameters(), spec=spec), 50, pass_loss=True)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert max_rel_diff(a, b) <= 2e-6


def test_nanochat_style_groups_use_their_own_hyperparameters():
    """kind='muon' groups get Muon with the group's lr/momentum; kind='adamw' groups AdamW with theirs."""
    ours, theirs = small_model(), small_model()
    mats = lambda m: [p for p in m.parameters() if p.ndim == 2]
    vecs = lambda m: [p for p in m.parameters() if p.ndim < 2]
    groups = [dict(kind="adamw", params=vecs(ours), lr=4e-3, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0),
              dict(kind="muon", params=mats(ours), lr=0.03, momentum=0.9, ns_steps=5, beta2=0.9, weight_decay=0.0)]
    # an arbitrary spec: kind='muon' groups take lr/momentum from the group, the inert poles from the spec
    spec = GateSpec.muon(lr=0.5, momentum=0.5)
    opt = FusedGate(groups, spec=spec)
    muon = PlainMuon(mats(theirs), lr=0.03, momentum=0.9, weight_decay=0.0)
    adamw = torch.optim.AdamW(vecs(theirs), lr=4e-3, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)

    class Both:
        def zero_grad(self):
            muon.zero_grad()
            adamw.zero_grad()

        def step(self):
            muon.step()
            adamw.step()

    train(theirs, Both(), 30, pass_loss=False)
    train(ours, opt, 30, pass_loss=True)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert max_rel_diff(a, b) <= 2e-6
