"""Sensor normalisation, gate and actuators against the documented formulas, written with math/numpy."""

import math

import numpy as np
import pytest
import torch

from fusedgate import gate as G
from fusedgate.spec import GateSpec, Pole


def test_loss_sensors_follow_their_emas():
    spec = GateSpec.gated().replace(ema_loss=0.8, ema_loss_improvement=0.5)
    state = G.new_global_state("cpu")
    losses = [4.0, 3.0, float("nan"), 2.5, 2.0]
    ema = ref = None
    imp = 0.0
    for loss in losses:
        G.observe_loss(state, torch.tensor(loss), spec)
        if math.isnan(loss):
            continue
        if ema is None:
            ema, ref = loss, loss
        else:
            new = ema + 0.2 * (loss - ema)
            imp = imp + 0.5 * ((ema - new) - imp)
            ema = new
    assert state[G.G_LOSS_EMA].item() == pytest.approx(ema, rel=1e-6)
    assert state[G.G_LOSS_REF].item() == ref
    assert state[G.G_LOSS_IMPROVEMENT].item() == pytest.approx(imp, rel=1e-5)
    assert state[G.G_LOSS_SEEN].item() == 4


def test_normalised_sensors_match_their_definitions():
    gs = G.new_global_state("cpu")
    for slot, value in ((G.G_STEP, 30), (G.G_LOSS_EMA, 3.0), (G.G_LOSS_REF, 6.0), (G.G_LOSS_IMPROVEMENT, 0.002),
                        (G.G_LOSS_SEEN, 5)):
        gs[slot] = value
    s = G.new_param_sensors("cpu")
    s[G.S_GRAD_NORM], s[G.S_GRAD_NORM_REF], s[G.S_UPDATE_RATIO], s[G.S_ALIGNMENT] = 0.5, 2.0, 4e-3, -0.3
    got = G.normalised_sensors(gs, s, torch.tensor(7.0), total_steps=120).numpy()
    expected = np.array([
        (3.0 - 6.0) / 6.0,
        np.tanh(0.002 / (1e-3 * 6.0)),
        np.log(0.5 / 2.0),
        np.log10(4e-3 / 1e-3),
        -0.3,
        30 / 120,
    ])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_sensors_without_data_read_zero_and_clamp():
    gs, s = G.new_global_state("cpu"), G.new_param_sensors("cpu")
    assert G.normalised_sensors(gs, s, torch.tensor(0.0), None).abs().sum() == 0
    s[G.S_GRAD_NORM], s[G.S_GRAD_NORM_REF], s[G.S_UPDATE_RATIO] = 1e9, 1.0, 0.0
    got = G.normalised_sensors(gs, s, torch.tensor(3.0), None)
    assert got[2] == 5.0 and got[3] == -5.0


def test_gate_and_actuator_blend():
    spec = GateSpec.gated().replace(gate_bias=0.5, w_loss=1.0, w_grad_alignment=-2.0, sharpness=2.0,
                                      aggressive=Pole(update_mult=2.0, clip=4.0, beta2=0.9, ortho=1.0),
                                      conservative=Pole(update_mult=0.5, clip=math.inf, beta2=0.99, ortho=0.0))
    normalised = torch.tensor([[0.3, 0.0, 0.0, 0.0, 0.25, 0.0], [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]])
    g = G.gate_value(spec, normalised)
    for row, value in zip(normalised.tolist(), g.tolist()):
        z = 0.5 + 1.0 * row[0] - 2.0 * row[4]
        assert value == pytest.approx(1 / (1 + math.exp(-2.0 * z)), rel=1e-6)
    act = G.actuators(spec, g)
    np.testing.assert_allclose(act["update_mult"].numpy(), 0.5 + g.double().numpy() * 1.5, rtol=1e-12)
    np.testing.assert_allclose(act["clip_inv"].numpy(), g.double().numpy() * 0.25, rtol=1e-12)
    np.testing.assert_allclose(act["beta2"].numpy(), 0.99 - g.double().numpy() * 0.09, rtol=1e-12)


def test_inert_poles_pass_exact_values_whatever_the_gate():
    spec = GateSpec.adamw(betas=(0.9, 0.999))
    act = G.actuators(spec, torch.tensor([0.0, 0.37, 1.0]))
    assert act["beta2"].dtype == torch.float64
    assert (act["beta2"] == 0.999).all() and (act["update_mult"] == 1.0).all() and (act["clip_inv"] == 0).all()


def test_observe_param_emas_and_lagged_trust_ratio():
    spec = GateSpec.gated().replace(ema_grad_norm=0.5, ema_update_ratio=0.5, ema_grad_alignment=0.5)
    s = G.new_param_sensors("cpu")
    sums = torch.tensor([4.0, 0.0, 0.0, 9.0, 36.0, 0.01])  # gg, gm, mm, pp, dd, uu
    G.observe_param(s, torch.tensor(0.0), spec, sums, torch.tensor(True))
    assert s[G.S_GRAD_NORM] == 2.0 and s[G.S_GRAD_NORM_REF] == 2.0
    assert s[G.S_TRUST_RATIO].item() == pytest.approx(3.0 / 6.0)
    assert s[G.S_UPDATE_RATIO].item() == pytest.approx(0.1 / 3.1)
    sums2 = torch.tensor([16.0, 2.0, 1.0, 0.0, 1.0, 0.0])
    G.observe_param(s, torch.tensor(1.0), spec, sums2, torch.tensor(True))
    assert s[G.S_GRAD_NORM].item() == pytest.approx(0.5 * 2.0 + 0.5 * 4.0)
    assert s[G.S_GRAD_NORM_REF] == 2.0
    assert s[G.S_ALIGNMENT].item() == pytest.approx(0.5 * 0.0 + 0.5 * (2.0 / (4.0 * 1.0)))
    assert s[G.S_TRUST_RATIO] == 1.0  # ‖p‖ = 0: no trust information
    frozen = s.clone()
    G.observe_param(s, torch.tensor(2.0), spec, sums, torch.tensor(False))
    assert torch.equal(s[:G.S_SKIPPED], frozen[:G.S_SKIPPED]) and s[G.S_SKIPPED] == 1


def test_observe_param_on_a_stack_equals_one_at_a_time():
    spec = GateSpec.gated()
    gen = torch.Generator().manual_seed(0)
    stack = torch.rand(5, G.N_SLOTS, generator=gen)
    steps = torch.tensor([0.0, 1.0, 4.0, 2.0, 0.0])
    sums = torch.rand(5, 6, generator=gen)
    applied = torch.tensor([True, True, False, True, True])
    singles = stack.clone()
    for i in range(5):
        G.observe_param(singles[i], steps[i], spec, sums[i], applied[i])
    G.observe_param(stack, steps, spec, sums, applied)
    assert torch.equal(stack, singles)


def test_the_actuator_slots_are_one_span_in_their_order():
    """``_constant_actuators`` writes the five actuators as one slice of the sensors."""
    assert list(G.ACTUATOR_SLOTS.values()) == list(range(G.N_SLOTS))[G.ACTUATOR_SPAN]
