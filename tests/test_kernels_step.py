"""The Triton kernels (under TRITON_INTERPRET=1 without a GPU) against fusedgate.reference, step by step
(tolerances: ``twins.TOL``)."""

import math

import pytest
import torch
from twins import (
    ODD_SHAPES,
    TOL,
    busy_spec,
    make_params,
    random_grads,
    rel,
    run_and_compare,
    step_both,
    twin_optimizers,
    worst_differences,
)

from fusedgate import FusedGate, GateSpec
from fusedgate import gate as G
from fusedgate.kernels import backend
from fusedgate.kernels import layout as L


@pytest.mark.parametrize("units,ortho,nesterov", [("adam", (0.0, 0.0), True), ("adam", (1.0, 0.5), True),
                                                  ("muon", (1.0, 0.0), True), ("muon", (0.7, 0.2), False)])
def test_gated_step_matches_reference_fp32(units, ortho, nesterov):
    run_and_compare(ODD_SHAPES, busy_spec(units, ortho, nesterov=nesterov))


@pytest.mark.parametrize("ortho", [(0.0, 0.0), (1.0, 0.3)])
def test_gated_step_matches_reference_bf16_params(ortho):
    """bf16 params, fp32 state: the kernel rounds p to bf16 to nearest-even, as .to(torch.bfloat16) does."""
    rp, _, tp, _ = run_and_compare([(9, 6), (4, 11)], busy_spec("adam", ortho), dtype=torch.bfloat16)
    for a, b in zip(tp, rp):
        assert a.dtype == torch.bfloat16
        assert torch.equal(a, b)


def test_adamw_group_matches_reference_fp32_and_bf16():
    spec = GateSpec.adamw(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)
    shapes = [(5,), (7, 3), (0,), (L.BLOCK + 3,)]
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 0.0)):
        rp, ref, tp, tri = twin_optimizers(shapes, spec, dtype)
        for s in range(3):
            step_both(rp, ref, tp, tri, random_grads(shapes, s, dtype), 1.0)
        for a, b in zip(tp, rp):
            assert rel(a.detach(), b.detach()) <= tol
            for key in ("exp_avg", "exp_avg_sq", "m_decay_prod", "v_decay_prod", "step"):
                assert rel(tri.state[a][key], ref.state[b][key]) <= 1e-6, key


def test_sensor_sums_match_torch_reductions():
    """The per-chunk partial sums, added per parameter, equal torch's reductions (rtol 1e-5)."""
    shapes = [(6, 9), (3, 2 * L.BLOCK + 7)]
    spec = busy_spec("adam", (0.0, 0.0), clip=math.inf)  # no clip: g̃ = g
    params = make_params(shapes)
    opt = FusedGate(params, spec=spec, backend="triton")
    for s in range(2):
        grads = random_grads(shapes, s)
        before = [(p.detach().clone(), opt.state[p]["exp_avg"].clone() if opt.state[p] else torch.zeros_like(p))
                  for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step(loss=torch.tensor(1.0))
    (layout,) = opt._cache.values()
    start = layout.chunk_start.tolist()
    for i, (p, g) in enumerate(zip(params, grads)):
        row = layout.shapes.index(tuple(p.shape))   # the layout orders params by shape
        sums = layout.partials[start[row]:start[row + 1]].double().sum(0)
        p_old, m_old = before[i]
        expected = [(g * g).sum(), (g * m_old).sum(), (m_old * m_old).sum(), (p_old * p_old).sum(),
                    None, ((p.detach() - p_old) ** 2).sum()]
        for column, value in enumerate(expected):
            if value is not None:
                assert sums[column].item() == pytest.approx(value.item(), rel=1e-5), column


def test_non_finite_gradient_skips_only_that_param():
    shapes = [(6, 5), (4, 4), (3, 8)]
    rp, ref, tp, tri = twin_optimizers(shapes, busy_spec("adam", (1.0, 0.5)))
    for s in range(3):
        grads = random_grads(shapes, s)
        if s == 1:
            grads[0][2, 3] = float("nan")
            grads[2][0, 0] = float("inf")
        kept = [tri.state[p]["exp_avg"].clone() if tri.state[p] else None for p in tp]
        p_before = [p.detach().clone() for p in tp]
        step_both(rp, ref, tp, tri, grads, 1.5)
        if s == 1:
            assert torch.equal(tp[0].detach(), p_before[0]) and torch.equal(tp[2].detach(), p_before[2])
            assert torch.equal(tri.state[tp[0]]["exp_avg"], kept[0])
            assert not torch.equal(tp[1].detach(), p_before[1])
    worst = worst_differences(rp, ref, tp, tri)
    assert all(worst[k] <= tol for k, tol in TOL.items()), worst
    skipped = [int(tri.state[p]["sensors"][G.S_SKIPPED]) for p in tp]
    assert skipped == [1, 0, 1]
    assert [int(tri.state[p]["step"]) for p in tp] == [2, 3, 2]


def test_all_params_of_a_group_in_one_launch_table():
    """40 matrices of mixed shapes: one bucket, one table, every chunk mapped to the right tensor."""
    shapes = [(3 + i % 5, 2 + i % 7) for i in range(40)]
    rp, ref, tp, tri = run_and_compare(shapes, busy_spec("adam", (0.0, 0.0)), steps=2)
    (layout,) = tri._cache.values()
    assert layout.n == 40 and layout.n_chunks == 40


def test_non_contiguous_param_and_grad():
    base = make_params([(5, 8)])[0]
    ref_p = torch.nn.Parameter(base.detach().clone().t())   # (8, 5), not contiguous
    tri_p = torch.nn.Parameter(base.detach().clone().t())
    assert not tri_p.is_contiguous()
    spec = busy_spec("adam", (1.0, 0.0))
    ref = FusedGate([ref_p], spec=spec, backend="reference")
    tri = FusedGate([tri_p], spec=spec, backend="triton")
    for s in range(2):
        g = random_grads([(5, 8)], s)[0].t()
        step_both([ref_p], ref, [tri_p], tri, [g], 1.0)
    assert rel(tri_p.detach(), ref_p.detach()) <= 1e-6


def test_unsupported_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match="does not support meta tensors"):
        backend.check_device(torch.device("meta"))


def test_split64_round_trips_float64():
    for x in (0.999, 1e-3, 0.95, 123.456, -7.25e-9):
        hi, lo = L.split64(x)
        assert abs((hi + lo) - x) <= 1e-15 * abs(x)


def test_gated_step_with_triton_newton_schulz():
    """newton_schulz="triton": the symmetric Triton Newton–Schulz inside the optimizer (fp32 dots)."""
    rp, ref, tp, tri = twin_optimizers([(6, 10), (6, 10), (12, 5)], busy_spec("muon", (1.0, 0.5)),
                                       newton_schulz="triton")
    for s in range(2):
        step_both(rp, ref, tp, tri, random_grads([(6, 10), (6, 10), (12, 5)], s), 1.0)
    assert worst_differences(rp, ref, tp, tri)["param"] <= 1e-5


def test_group_of_empty_params_only():
    rp, ref, tp, tri = twin_optimizers([(0, 3), (4, 0)], busy_spec("adam", (1.0, 0.0)))
    for s in range(2):
        step_both(rp, ref, tp, tri, random_grads([(0, 3), (4, 0)], s), 1.0)
    assert [int(tri.state[p]["step"]) for p in tp] == [2, 2]
    worst = worst_differences(rp, ref, tp, tri)
    assert worst["sensors"] <= 1e-6


@pytest.mark.parametrize("spec", [busy_spec("adam", (0.0, 0.0)), GateSpec.adamw()], ids=["gated", "adamw"])
def test_a_replaced_state_tensor_is_checked_also_once_the_tables_are_cached(spec):
    """The kernels read the state through its addresses: a state tensor of the wrong dtype, or a view of the
    right one with the wrong shape (the same address), is refused with one line on the step after it is put in."""
    rp, ref, tp, tri = twin_optimizers([(6, 5)], spec)
    for s in range(2):
        step_both(rp, ref, tp, tri, random_grads([(6, 5)], s), 1.0)
    state = tri.state[tp[0]]
    good = state["exp_avg"]
    state["exp_avg"] = good.double()
    with pytest.raises(ValueError, match=r"state\['exp_avg'\] must be a float32 tensor of the param's shape"):
        tri.step(loss=torch.tensor(1.0))
    state["exp_avg"] = good[:3]
    with pytest.raises(ValueError, match=r"got torch.float32 \(3, 5\)"):
        tri.step(loss=torch.tensor(1.0))


@pytest.mark.parametrize("spec", [busy_spec("adam", (0.0, 0.0)), GateSpec.adamw()], ids=["gated", "adamw"])
def test_a_non_contiguous_moment_put_in_later_is_made_contiguous(spec):
    rp, ref, tp, tri = twin_optimizers([(6, 5)], spec)
    for s in range(2):
        step_both(rp, ref, tp, tri, random_grads([(6, 5)], s), 1.0)
    state = tri.state[tp[0]]
    state["exp_avg"] = state["exp_avg"].t().contiguous().t()    # the same values, column-major
    assert not state["exp_avg"].is_contiguous()
    step_both(rp, ref, tp, tri, random_grads([(6, 5)], 2), 1.0)
    assert state["exp_avg"].is_contiguous()
    assert worst_differences(rp, ref, tp, tri)["param"] <= TOL["param"]


def test_the_iteration_on_cuda_folds_the_sums_into_the_products():
    """On CUDA the Triton backend runs the plain torch iteration as ``polar_iteration_gemm`` (as the compiled
    backend does), which is the same polynomial; on the CPU the plain form stays (nanochat's, bit for bit), and a
    Triton iteration is kept wherever it was asked for."""
    from fusedgate import reference as R
    from fusedgate.kernels.newton_schulz import polar_iteration_triton
    assert backend.device_iteration(R.polar_iteration, torch.device("cuda")) is R.polar_iteration_gemm
    assert backend.device_iteration(R.polar_iteration, torch.device("cpu")) is R.polar_iteration
    assert backend.device_iteration(polar_iteration_triton, torch.device("cuda")) is polar_iteration_triton
    x = torch.randn(3, 12, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    coefficients = R.Engine.of(GateSpec.nanochat()).coefficients(5)
    plain = R.polar_iteration(x, coefficients, *R.NORMALISATION["polar_express"], torch.float64)
    folded = R.polar_iteration_gemm(x, coefficients, *R.NORMALISATION["polar_express"], torch.float64)
    assert rel(folded, plain) <= 1e-12


@pytest.mark.parametrize("iterate", ["plain", "gemm"])
def test_orthogonalising_the_bf16_buffer_itself_equals_its_float32_copy(iterate):
    """On CUDA the backend hands ``reference.orthogonalise`` its bf16 buffer instead of a float32 copy: the
    iteration casts to bf16 first, so the result is the same bit for bit (here on the CPU, in bf16)."""
    from fusedgate import reference as R
    fn = R.polar_iteration if iterate == "plain" else R.polar_iteration_gemm
    engine = R.Engine.of(GateSpec.nanochat())
    x = torch.randn(2, 16, 24, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    moment = torch.rand(2, 1, 24, generator=torch.Generator().manual_seed(2))
    as_is, m1 = R.orthogonalise(x, engine, 5, moment, 0.95, torch.bfloat16, fn)
    copied, m2 = R.orthogonalise(x.float().clone(), engine, 5, moment, 0.95, torch.bfloat16, fn)
    assert as_is.dtype == copied.dtype == torch.float32
    assert torch.equal(as_is, copied) and torch.equal(m1, m2)


@pytest.mark.parametrize("ortho", [(0.0, 0.0), (1.0, 0.5)])
def test_another_block_and_warps_give_the_same_step(monkeypatch, ortho):
    """``layout.BLOCK`` and ``layout.STEP_WARPS`` are read when a layout is built and at every launch (the GPU
    probe sweeps them): under another pair the chunking and the kernels agree, and the step is the reference's."""
    monkeypatch.setattr(L, "BLOCK", 64)
    monkeypatch.setattr(L, "STEP_WARPS", 8)
    shapes = [(20, 9), (7, 30)]
    rp, ref, tp, tri = run_and_compare(shapes, busy_spec("adam", ortho), steps=2)
    (layout,) = tri._cache.values()
    assert layout.n_chunks == 3 + 4      # 180 and 210 elements in chunks of 64


@pytest.mark.parametrize("spec", [busy_spec("adam", (0.0, 0.0)), GateSpec.adamw(lr=1e-2)], ids=["gated", "adamw"])
def test_the_per_parameter_loops_over_many_trips_find_a_late_non_finite_chunk(monkeypatch, spec):
    """The per-parameter loops (the finiteness test FLAGS_BLOCK flags a trip, the sums FBLOCK rows a trip) over
    many trips: 8-element chunks, 4 a trip, so a 200-element parameter takes 7. A NaN in its last chunk skips its
    step (and only its), as in the reference; the others' sums and steps agree."""
    monkeypatch.setattr(L, "BLOCK", 8)
    monkeypatch.setattr(L, "FBLOCK", 4)
    monkeypatch.setattr(L, "FLAGS_BLOCK", 4)
    shapes = [(20, 10), (9, 7)]
    rp, ref, tp, tri = twin_optimizers(shapes, spec)
    for s in range(3):
        grads = random_grads(shapes, s)
        if s == 1:
            grads[0].view(-1)[-1] = float("nan")
        step_both(rp, ref, tp, tri, grads, 2.0 - 0.1 * s)
    (layout,) = tri._cache.values()
    assert layout.n_chunks == 25 + 8
    assert tri.skipped_steps() == ref.skipped_steps() == {"group0.param0": 1, "group0.param1": 0}
    worst = worst_differences(rp, ref, tp, tri)
    assert all(worst[key] <= tol for key, tol in TOL.items()), worst


ALIGNED_SHAPES = [(16, 24), (8, 2 * L.BLOCK), (16, 24), (4, 2)]   # every size a multiple of 8


def misaligned_view(shape, seed=0) -> torch.nn.Parameter:
    """A contiguous parameter 4 bytes past a 16-byte boundary: a view one float32 into a larger tensor."""
    flat = torch.randn(1 + math.prod(shape), generator=torch.Generator().manual_seed(seed)) * 0.5
    return torch.nn.Parameter(flat[1:].view(shape))


@pytest.mark.parametrize("ortho", [(0.0, 0.0), (1.0, 0.5)])
def test_a_bucket_of_aligned_tensors_steps_with_vector_accesses_as_the_reference(ortho):
    """Sizes that are multiples of 8 at 16-byte addresses: the bucket is ``aligned`` (the kernels' ALIGNED, their
    128-bit accesses: ``test_kernels_compile.py``) and steps as the reference does."""
    rp, ref, tp, tri = twin_optimizers(ALIGNED_SHAPES, busy_spec("adam", ortho))
    for s in range(3):
        step_both(rp, ref, tp, tri, random_grads(ALIGNED_SHAPES, s, spike=(s == 1)), 2.0 - 0.1 * s)
    assert [lay.aligned for lay in tri._cache.values()] == [True]
    worst = worst_differences(rp, ref, tp, tri)
    assert all(worst[key] <= tol for key, tol in TOL.items()), worst


@pytest.mark.parametrize("case", ["size", "param address", "grad address"])
def test_a_bucket_with_an_odd_size_or_address_is_not_aligned(case):
    """One size not a multiple of 8, or one param or gradient 4 bytes off a 16-byte boundary: the whole bucket takes
    the element-by-element accesses, and still steps as the reference does."""
    shapes = ALIGNED_SHAPES + [(3, 5)] if case == "size" else ALIGNED_SHAPES
    rp, ref, tp, tri = twin_optimizers(shapes, busy_spec("adam", (0.0, 0.0)))
    if case == "param address":
        tp[1] = misaligned_view(shapes[1])
        rp[1] = torch.nn.Parameter(tp[1].detach().clone())
        ref, tri = (FusedGate(params, spec=busy_spec("adam", (0.0, 0.0)), total_steps=20, backend=b)
                    for params, b in ((rp, "reference"), (tp, "triton")))
        assert tp[1].data_ptr() % 16 == 4
    for s in range(2):
        grads = random_grads(shapes, s)
        if case == "grad address":
            grads[2] = misaligned_view(shapes[2], seed=s).detach()
            assert grads[2].data_ptr() % 16 == 4
        for params, opt in ((rp, ref), (tp, tri)):
            for p, g in zip(params, grads):
                p.grad = g.clone() if params is rp else g
            opt.step(loss=torch.tensor(2.0 - 0.1 * s))
    assert [lay.aligned for lay in tri._cache.values()] == [False]
    worst = worst_differences(rp, ref, tp, tri)
    assert all(worst[key] <= tol for key, tol in TOL.items()), worst
