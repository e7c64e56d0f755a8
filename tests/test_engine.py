"""nanochat's production engine as spec switches: each switch's math, the Triton kernels against the
reference for each switch on odd shapes, and the bad input around them.

Tolerances: Triton (interpreter) vs reference as in test_kernels_step (params ≤ 1e-6 relative, state
≤ 1e-5); the switches' own math against float64 formulas written here, ≤ 1e-5.
"""

import math

import pytest
import torch
from twins import busy_spec, run_and_compare

from fusedgate import FusedGate, GateSpec
from fusedgate import reference as R

ENGINE_OFF = dict(orthogonaliser="quintic", muon_eq=False, muon_plus=False, normuon=False, cautious_wd=False)
SWITCHES = {
    "polar_express": dict(orthogonaliser="polar_express"),
    "muon_eq": dict(muon_eq=True),
    "muon_plus": dict(muon_plus=True),
    "normuon": dict(normuon=True, normuon_beta2=0.9),
    "cautious_wd": dict(cautious_wd=True),
    "all": dict(orthogonaliser="polar_express", muon_eq=True, muon_plus=True, normuon=True, cautious_wd=True),
}
# tall, wide, a single row, 3-D (seen as 5 × 6), and a repeated shape (a stack of two)
SHAPES = [(13, 7), (7, 13), (1, 9), (5, 3, 2), (7, 13)]


@pytest.mark.parametrize("switch", list(SWITCHES))
@pytest.mark.parametrize("units,ortho", [("muon", (1.0, 1.0)), ("muon", (1.0, 0.4)), ("adam", (0.6, 0.0))])
def test_triton_matches_reference_for_each_switch(switch, units, ortho):
    """ω ≡ 1 runs the kernels without the Adam direction (USE_ADAM off), the others blend both."""
    spec = busy_spec(units, ortho).replace(**{**ENGINE_OFF, **SWITCHES[switch]})
    rp, ref, tp, tri = run_and_compare(SHAPES, spec)
    if spec.normuon:
        for p in rp:
            rows, cols = R.matrix_view_shape(p.shape)
            assert ref.state[p]["normuon_sq"].shape == R.normuon_shape(rows, cols)


def _matrices(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(k, r, c, generator=gen) for k, r, c in ((3, 12, 5), (2, 5, 12), (1, 1, 7))]


def test_muon_eq_equalises_row_norms_to_the_mean():
    for u in _matrices():
        out = R.muon_eq(u)
        want = u.double().norm(dim=(-2, -1)) / math.sqrt(u.size(-2))
        assert torch.allclose(out.double().norm(dim=-1), want[:, None].expand(-1, u.size(-2)), rtol=1e-5)


def test_muon_plus_sets_the_frobenius_norm_of_a_semi_orthogonal_matrix():
    for x in _matrices(1):
        out = R.muon_plus(x)
        assert torch.allclose(out.double().norm(dim=(-2, -1)), torch.full((x.size(0),), math.sqrt(min(x.shape[1:])),
                                                                        dtype=torch.float64), rtol=1e-5)


def test_normuon_keeps_the_norm_and_follows_its_factored_moment():
    for x in _matrices(2):
        k, rows, cols = x.shape
        moment = torch.rand(k, *R.normuon_shape(rows, cols), dtype=torch.float32) + 0.1
        out, new = R.normuon(x, moment, 0.9)
        axis = -1 if rows >= cols else -2
        q = x.double().square().mean(dim=axis, keepdim=True)
        want_moment = 0.9 * moment.double() + 0.1 * q
        assert torch.allclose(new.double(), want_moment, rtol=1e-5)
        scaled = x.double() / want_moment.sqrt()
        want = scaled * (x.double().norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True))
        assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("orthogonaliser,steps,band", [("quintic", 5, (0.6, 1.25)), ("polar_express", 5, (0.8, 1.2))])
def test_orthogonalisers_against_the_float64_polar_factor(orthogonaliser, steps, band):
    """Both iterations land the singular values (of an input with condition number 100) in a band around 1 —
    Keller's quintic is known to leave them in ≈ [0.7, 1.2] — and point along U·Vᵀ from a float64 SVD."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 48, 24, generator=gen, dtype=torch.float64) @ torch.diag(torch.logspace(-2, 0, 24,
                                                                                              dtype=torch.float64))
    engine = R.Engine(orthogonaliser=orthogonaliser)
    o, _ = R.orthogonalise(x.float(), engine, steps)
    s = torch.linalg.svdvals(o.double())
    assert band[0] <= s.min() and s.max() <= band[1], (s.min(), s.max())
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    polar = u @ vh
    cosine = (o.double() * polar).sum((-2, -1)) / (o.double().norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert cosine.min() > 0.97


@pytest.mark.parametrize("shape", [(3, 40, 24), (3, 24, 40), (2, 32, 32), (40, 24), (24, 40)])
@pytest.mark.parametrize("orthogonaliser", ["quintic", "polar_express"])
def test_the_gemm_folded_iteration_is_the_same_polynomial(shape, orthogonaliser):
    """``polar_iteration_gemm`` (the sums inside baddbmm/addmm) against the plain ``polar_iteration`` run in
    float64: ≤ 2e-5 in float32 (the accumulation order is all that differs), ≤ 1e-12 in float64."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    engine = R.Engine(orthogonaliser=orthogonaliser)
    args = (engine.coefficients(5), *R.NORMALISATION[orthogonaliser])
    truth = R.polar_iteration(x, *args, dtype=torch.float64)
    assert (R.polar_iteration_gemm(x.float(), *args).double() - truth).abs().max() < 2e-5
    assert (R.polar_iteration_gemm(x, *args, dtype=torch.float64) - truth).abs().max() < 1e-12


def test_cautious_decay_only_where_the_update_agrees_with_the_weight():
    """One step from zero momentum with lr·σ̂·wd = 0.5: where d·p ≥ 0 the weight loses half of itself on top of
    the update, elsewhere only the update applies (Muon units, a wide matrix: σ̂ = 1)."""
    gen = torch.Generator().manual_seed(4)
    p0 = torch.randn(4, 6, generator=gen)
    grad = torch.randn(4, 6, generator=gen)
    spec = GateSpec.nanochat().replace(muon_eq=False, muon_plus=False, normuon=False)
    results = {}
    for wd in (0.0, 25.0):
        p = torch.nn.Parameter(p0.clone())
        opt = FusedGate([dict(kind="muon", params=[p], lr=0.02, momentum=0.0, ns_steps=5, beta2=0.9,
                              weight_decay=wd)], spec=spec)
        p.grad = grad.clone()
        opt.step()
        results[wd] = p.detach().clone()
    update = results[0.0] - p0                      # −lr·o
    agree = (-update) * p0 >= 0                     # d = o = −update/lr
    want = p0 + update - 0.5 * p0 * agree
    assert torch.allclose(results[25.0], want, atol=1e-6)
    assert agree.any() and (~agree).any()


def test_a_muon_group_needs_beta2_while_normuon_is_on():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="beta2"):
        FusedGate([dict(kind="muon", params=[p], lr=0.02, momentum=0.95, ns_steps=5, weight_decay=0.0)],
                  spec=GateSpec.nanochat())
    FusedGate([dict(kind="muon", params=[p], lr=0.02, momentum=0.95, ns_steps=5, weight_decay=0.0)],
              spec=GateSpec.muon())   # no NorMuon: no beta2 needed


def test_polar_express_groups_take_at_most_five_steps_and_a_refused_group_leaves_no_trace():
    q, r = torch.nn.Parameter(torch.zeros(4, 4)), torch.nn.Parameter(torch.zeros(4, 4))
    opt = FusedGate([dict(kind="muon", params=[q], lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9,
                          weight_decay=0.0)], spec=GateSpec.nanochat())
    with pytest.raises(ValueError, match="ns_steps=6"):
        opt.add_param_group(dict(kind="muon", params=[r], lr=0.02, momentum=0.95, ns_steps=6, beta2=0.9,
                                 weight_decay=0.0))
    assert len(opt.param_groups) == 1
    opt.add_param_group(dict(kind="muon", params=[r], lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9,
                             weight_decay=0.0))   # the same param, now accepted
    assert len(opt.param_groups) == 2


def test_a_checkpoint_written_before_the_engine_switches_loads_and_continues():
    """A version-1 spec and state without NorMuon moments (what the previous release wrote) load; a spec that
    switches NorMuon on later starts its moments at zero instead of failing."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 4))
    groups = [dict(kind="muon", params=[p], lr=0.02, momentum=0.95, ns_steps=5, beta2=0.9, weight_decay=0.0)]
    opt = FusedGate(groups, spec=GateSpec.muon())
    for _ in range(2):
        p.grad = torch.randn(6, 4)
        opt.step()
    saved = opt.state_dict()
    for name in ("orthogonaliser", "muon_eq", "muon_plus", "normuon", "normuon_beta2", "cautious_wd"):
        saved["fusedgate"]["spec"].pop(name)
    saved["fusedgate"]["spec"]["version"] = 1
    again = FusedGate([dict(groups[0], params=[p])], spec=GateSpec.nanochat())
    again.load_state_dict(saved)
    assert again.spec == GateSpec.muon()
    again.spec = GateSpec.nanochat()
    p.grad = torch.randn(6, 4)
    again.step()
    assert again.state[p]["normuon_sq"].shape == (6, 1) and torch.isfinite(p).all()
