"""Each actuator in isolation, against the formula in fusedgate.reference's docstring."""

import math

import pytest
import torch
from references import newton_schulz5

from fusedgate import FusedGate, GateSpec, Pole

ROWS, COLS = 16, 8


def one_matrix(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Parameter(torch.randn(ROWS, COLS) * 0.5)


def spec_with(**pole_fields):
    """AdamW-like spec (lr 1e-2, no wd) with both poles set to the given actuator values."""
    base = GateSpec.adamw(lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    pole = Pole(**{**base.aggressive.__dict__, **pole_fields})
    return base.replace(aggressive=pole, conservative=pole)


def step_with(p, opt, grad):
    p.grad = grad.clone()
    before = p.detach().clone()
    opt.step(loss=torch.tensor(1.0))
    return p.detach() - before


def grads(n, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(ROWS, COLS, generator=gen) for _ in range(n)]


def test_clip_cuts_a_spike_in_the_step_it_arrives():
    p = one_matrix()
    k = 3.0
    opt = FusedGate([p], spec=spec_with(clip=k))
    g1, g2 = grads(2)
    step_with(p, opt, g1)
    m1 = opt.state[p]["exp_avg"].clone()
    threshold = k * g1.norm() / math.sqrt(p.numel())  # k · running RMS (the EMA starts at ‖g₁‖)
    spiked = g2.clone()
    spiked[3, 4] = 1000.0
    step_with(p, opt, spiked)
    expected_g = torch.clamp(spiked, -threshold, threshold)
    assert expected_g[3, 4] == pytest.approx(threshold.item())
    torch.testing.assert_close(opt.state[p]["exp_avg"], 0.9 * m1 + 0.1 * expected_g, rtol=1e-6, atol=1e-7)


def test_clip_is_off_at_infinity_and_on_the_first_step():
    p, q = one_matrix(), one_matrix()
    g = grads(1)[0]
    g[0, 0] = 1e4
    d_clip = step_with(p, FusedGate([p], spec=spec_with(clip=1.0)), g)
    d_off = step_with(q, FusedGate([q], spec=spec_with()), g)
    assert torch.equal(d_clip, d_off)  # no running RMS yet: nothing to clip against


def test_update_multiplier_scales_the_step():
    p, q = one_matrix(), one_matrix()
    g = grads(1)[0]
    d1 = step_with(p, FusedGate([p], spec=spec_with(update_mult=1.0)), g)
    d2 = step_with(q, FusedGate([q], spec=spec_with(update_mult=2.5)), g)
    torch.testing.assert_close(d2, 2.5 * d1, rtol=1e-5, atol=1e-8)


def test_trust_mix_scales_by_previous_param_to_direction_ratio():
    p, q = one_matrix(), one_matrix()
    o_plain, o_trust = FusedGate([p], spec=spec_with()), FusedGate([q], spec=spec_with(trust_mix=1.0))
    g1, g2 = grads(2)
    p0 = p.detach().clone()
    d_plain = step_with(p, o_plain, g1)
    d_trust = step_with(q, o_trust, g1)
    assert torch.equal(d_plain, d_trust)  # no history yet: r = 1
    direction = -d_plain / 1e-2  # lr·d with update_mult 1, trust 1, no weight decay
    r = min(p0.norm().item() / direction.norm().item(), 10.0)
    # Δp is read back as a difference of fp32 params of size ~1 (ulp 6e-8), and r inherits that error.
    torch.testing.assert_close(step_with(q, o_trust, g2), r * step_with(p, o_plain, g2), rtol=1e-4, atol=2e-7)


@pytest.mark.parametrize("beta2", [0.9, 0.999])
def test_second_moment_beta_is_the_actuator(beta2):
    p = one_matrix()
    opt = FusedGate([p], spec=spec_with(beta2=beta2))
    g1, g2 = grads(2)
    step_with(p, opt, g1)
    step_with(p, opt, g2)
    expected = beta2 * (1 - beta2) * g1**2 + (1 - beta2) * g2**2
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], expected, rtol=1e-6, atol=1e-12)


def test_full_orthogonal_projection_in_adam_units_is_rms_matched_newton_schulz():
    p = one_matrix()
    opt = FusedGate([p], spec=spec_with(ortho=1.0))
    g = grads(1)[0]
    delta = step_with(p, opt, g)
    # first step: m = 0.1·g, nesterov blend = lerp(g, m, 0.9); NS is scale-free
    source = torch.lerp(g, 0.1 * g, 0.9)
    expected = -1e-2 * 0.2 * math.sqrt(max(ROWS, COLS)) * newton_schulz5(source)
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-7)
    rms = (delta.pow(2).mean().sqrt() / 1e-2).item()
    assert 0.1 < rms < 0.3  # ≈ 0.2, Adam's typical update RMS


def test_half_orthogonal_blends_both_directions():
    p, q, r = one_matrix(), one_matrix(), one_matrix()
    g = grads(1)[0]
    d_adam = step_with(p, FusedGate([p], spec=spec_with(ortho=0.0)), g)
    d_orth = step_with(q, FusedGate([q], spec=spec_with(ortho=1.0)), g)
    d_half = step_with(r, FusedGate([r], spec=spec_with(ortho=0.5)), g)
    torch.testing.assert_close(d_half, 0.5 * d_adam + 0.5 * d_orth, rtol=1e-5, atol=1e-8)


def test_gate_follows_step_fraction_and_blends_the_poles():
    p = one_matrix()
    spec = GateSpec.adamw(lr=1e-2, weight_decay=0.0).replace(
        gate_bias=4.0, w_step_fraction=-8.0, sharpness=1.0,
        aggressive=Pole(update_mult=1.0, beta2=0.999), conservative=Pole(update_mult=0.2, beta2=0.999))
    opt = FusedGate([p], spec=spec, total_steps=10)
    for t, g in enumerate(grads(10), start=1):
        step_with(p, opt, g)
        state = opt.gate_state()["group0.param0"]
        gate = 1 / (1 + math.exp(-(4.0 - 8.0 * t / 10)))
        assert state["gate"] == pytest.approx(gate, rel=1e-5)
        assert state["update_mult"] == pytest.approx(0.2 + gate * 0.8, rel=1e-5)
        assert state["sensors"]["step_fraction"] == pytest.approx(t / 10)


def test_brain_modulation_keys_scale_clip_and_dampen():
    spec = GateSpec.adamw(lr=1e-2, weight_decay=0.0).replace(
        aggressive=Pole(update_mult=1.0, clip=4.0), conservative=Pole(update_mult=0.0, clip=4.0))
    p = one_matrix()
    opt = FusedGate([dict(params=[p], gate_scale=3.0, gate_clip=2.0, gate_dampen=1.0)], spec=spec)
    step_with(p, opt, grads(1)[0])
    state = opt.gate_state()["group0.param0"]
    assert state["gate"] == 0.0                                 # dampen 1 → fully conservative
    assert state["update_mult"] == 0.0                          # conservative mult 0, times scale 3
    assert state["clip"] == pytest.approx(8.0)                  # k 4 × clip multiplier 2
    opt.param_groups[0].update(gate_dampen=0.0)
    step_with(p, opt, grads(1, seed=9)[0])
    state = opt.gate_state()["group0.param0"]
    assert state["gate"] == pytest.approx(0.5)                  # all weights 0: sigmoid(0)
    assert state["update_mult"] == pytest.approx(3.0 * 0.5)
