"""Shared helpers of the kernel tests: twin optimizers (reference vs Triton) fed identical gradients, and
the step-by-step comparison with its tolerances.

Tolerances (max |a − b| / max |b| per tensor, fp32): params ≤ 1e-6, moments ≤ 1e-5, sensors ≤ 1e-5,
decay products ≤ 1e-7. Sources of difference: summation order of the sensor reductions, tanh/log/sigmoid
spelled out in the gate kernel (~1e-7), and Newton–Schulz batched over equal shapes.
"""

import math

import torch

from fusedgate import FusedGate, GateSpec, Pole
from fusedgate.kernels import layout as L

STATE_KEYS = ("exp_avg", "exp_avg_sq", "m_decay_prod", "v_decay_prod", "step", "sensors", "normuon_sq")


def busy_spec(units: str = "adam", ortho: tuple[float, float] = (0.0, 0.0), clip: float = 2.0,
              nesterov: bool = True) -> GateSpec:
    """A gated spec in which every sensor, actuator and pole matters (aggressive, conservative ortho given)."""
    base = GateSpec.gated()
    return base.replace(
        units=units, lr=2e-2 if units == "muon" else 1e-2, weight_decay=0.1, nesterov=nesterov, ns_steps=5,
        gate_bias=0.5, w_loss=-0.5, w_loss_improvement=1.0, w_grad_norm=0.5, w_update_ratio=0.3,
        w_grad_alignment=1.0, w_step_fraction=-2.0,
        aggressive=Pole(update_mult=1.0, trust_mix=0.5, clip=math.inf, beta2=0.95, ortho=ortho[0]),
        conservative=Pole(update_mult=0.5, trust_mix=0.0, clip=clip, beta2=0.99, ortho=ortho[1]))


def make_params(shapes, dtype=torch.float32, seed=0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(*s, generator=gen) * 0.5).to(dtype)) for s in shapes]


def twin_optimizers(shapes, spec, dtype=torch.float32, total_steps=20, newton_schulz="torch"):
    """(reference params, reference optimizer, triton params, triton optimizer) on identical params; the
    Triton optimizer's orthogonaliser iterates with ``newton_schulz``."""
    ref_params, tri_params = make_params(shapes, dtype), make_params(shapes, dtype)
    ref = FusedGate(ref_params, spec=spec, total_steps=total_steps, backend="reference")
    tri = FusedGate(tri_params, spec=spec, total_steps=total_steps, backend="triton", newton_schulz=newton_schulz)
    return ref_params, ref, tri_params, tri


def random_grads(shapes, step, dtype=torch.float32, spike=False):
    gen = torch.Generator().manual_seed(1000 + step)
    grads = [torch.randn(*s, generator=gen) * (1.0 + 0.3 * step) for s in shapes]
    if spike:
        for g in grads:
            if g.numel():
                g.view(-1)[g.numel() // 2] = 50.0
    return [g.to(dtype) for g in grads]


def step_both(ref_params, ref, tri_params, tri, grads, loss):
    for params, opt in ((ref_params, ref), (tri_params, tri)):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step(loss=torch.tensor(loss))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| (0 for empty tensors)."""
    if a.numel() == 0:
        return 0.0
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def worst_differences(ref_params, ref, tri_params, tri) -> dict[str, float]:
    """The largest relative difference of the params and of each state entry over all params."""
    worst = {"param": 0.0, **{k: 0.0 for k in STATE_KEYS}}
    for a, b in zip(tri_params, ref_params):
        worst["param"] = max(worst["param"], rel(a.detach(), b.detach()))
        sa, sb = tri.state[a], ref.state[b]
        for key in STATE_KEYS:
            if key in sb:
                assert sa[key].dtype == sb[key].dtype and sa[key].shape == sb[key].shape, key
                worst[key] = max(worst[key], rel(sa[key], sb[key]))
    return worst


ODD_SHAPES = [(7, 13), (1, 5), (0, 4), (5, 3, 2), (7, 13), (3, L.BLOCK + 5)]
TOL = {"param": 1e-6, "exp_avg": 1e-5, "exp_avg_sq": 1e-5, "sensors": 1e-5, "normuon_sq": 1e-5, "m_decay_prod": 1e-7,
       "v_decay_prod": 1e-7, "step": 0.0}


def run_and_compare(shapes, spec, dtype=torch.float32, steps=3, spike_at=1):
    rp, ref, tp, tri = twin_optimizers(shapes, spec, dtype)
    for s in range(steps):
        step_both(rp, ref, tp, tri, random_grads(shapes, s, dtype, spike=(s == spike_at)), 2.0 - 0.1 * s)
    worst = worst_differences(rp, ref, tp, tri)
    for key, tol in TOL.items():
        assert worst[key] <= tol, (key, worst[key])
    return rp, ref, tp, tri
