"""OptBrain driving FusedGate through its per-group gate keys (the real FusedGate, CPU reference backend)."""

import pytest
import torch

from fusedgate import FusedGate, GateSpec, OptBrain, Pole

CLIPPING = GateSpec.gated().replace(aggressive=Pole(1.0, 0.0, 2.0, 0.95, 1.0),
                                      conservative=Pole(0.5, 0.0, 2.0, 0.99, 0.5))


def make(seed=0, spec=None):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.Tanh(),
                                torch.nn.Linear(16, 16, bias=False), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    muon = dict(kind="muon", lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9, weight_decay=0.0)
    groups = [dict(muon, params=[model[0].weight]), dict(muon, params=[model[2].weight]),
              dict(kind="adamw", params=list(model[4].parameters()), lr=3e-3, betas=(0.9, 0.95), eps=1e-10,
                   weight_decay=0.0)]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 8, generator=gen)
    y = torch.tanh(x[:, :1] - x[:, 1:2])
    return model, FusedGate(groups, spec=spec or GateSpec.gated(), total_steps=60), x, y


def train(model, opt, x, y, steps, wrapped):
    for t in range(steps):
        idx = torch.arange(t * 8, t * 8 + 16) % 64
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step(loss=loss.detach())
    return [p.detach().clone() for p in model.parameters()]


def test_neutral_brain_over_fusedgate_is_bit_identical():
    model, opt, x, y = make()
    ref = train(model, opt, x, y, 40, False)
    ref_state = opt.state_dict()["state"]
    still = dict(window=4, warmup_windows=1, explore=0.0, hypergrad=0.0)
    for kwargs, steps in ((dict(window=5, warmup_windows=3), 15), (still, 40)):
        model, opt, x, y = make()
        brain = OptBrain(opt, **kwargs)
        assert brain.mode == "fusedgate"
        got = train(model, brain, x, y, steps, True)
        model2, opt2, _, _ = make()
        want = train(model2, opt2, x, y, steps, False) if steps != 40 else ref
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        if steps == 40:
            state = opt.state_dict()["state"]
            for k in ref_state:
                for name, v in ref_state[k].items():
                    assert torch.equal(torch.as_tensor(v), torch.as_tensor(state[k][name])), (k, name)


def test_brain_writes_gate_keys_for_gated_groups_and_acts_generically_on_adamw_groups():
    model, opt, x, y = make()
    brain = OptBrain(opt, window=4, warmup_windows=1, seed=1)
    assert brain._gate_group.tolist() == [True, True, False]
    train(model, brain, x, y, 4 * 5, True)          # warm-up + 4 windows: a full cycle
    assert brain.core.n_cycles == 1
    for g, group in enumerate(opt.param_groups[:2]):
        assert (group["gate_scale"], group["gate_clip"], group["gate_dampen"]) == brain.decisions[g]
    assert (opt.param_groups[2]["gate_scale"], opt.param_groups[2]["gate_clip"]) == (1.0, 1.0)
    assert opt.param_groups[2]["lr"] == 3e-3         # the generic scale restores the lr after each step


@pytest.mark.parametrize("spec", [CLIPPING, GateSpec.muon()], ids=["clipping-spec", "muon-spec"])
def test_each_knob_changes_the_fusedgate_trajectory(spec):
    model, opt, x, y = make(spec=spec)
    brain = OptBrain(opt, window=4)
    brain.freeze({0: (1.0, 1.0, 0.0), 1: (1.0, 1.0, 0.0)})
    neutral = train(model, brain, x, y, 12, True)
    for knobs in ((3.0, 1.0, 0.0), (1.0, 1.0, 0.9), (1.0, 0.2, 0.0)):
        model, opt, x, y = make(spec=spec)
        brain = OptBrain(opt, window=4)
        brain.freeze({0: knobs, 1: knobs})
        # muon spec: clip off and equal poles -> clip and dampen act through the generic mechanism
        via_gate = knobs if spec is CLIPPING else (knobs[0], 1.0, 0.0)
        group = opt.param_groups[0]
        assert (group["gate_scale"], group["gate_clip"], group["gate_dampen"]) == via_gate
        got = train(model, brain, x, y, 12, True)
        assert max(float((a - b).abs().max()) for a, b in zip(got[:2], neutral[:2])) > 1e-5, knobs
