"""The Triton backend of FusedGate: ``gated_step(stacks, gate, *, iterate, cache)``, what
``fusedgate.functional.gated_step`` calls for CUDA tensors (or, forced with ``backend="triton"``, for CPU
tensors under Triton's interpreter) — the reference backend's signature. float64 parameters are handed
to the reference backend (computed in float64 there); ``cache`` (owned by the caller) keeps the launch
tables between steps.

Once per step, before the stacks, ``advance_global`` counts the step and folds the loss into the global
sensors in one launch (``global_kernel``). Every bucket is then checked (device, dtypes, state: ``prepare``)
before any is stepped, so a refused step launches nothing. Per bucket of a group (params sharing param dtype
and grad dtype), a gated step is a constant number of launches, whatever the number of tensors:
    nonfinite_kernel   (chunks)  per-chunk finiteness flags of the gradient
    gate_kernel        (params)  gate, actuators, coefficients, decay products
    step_kernel        (chunks)  the fused update + sensor partial sums            — no orthogonalisation
  or moments_kernel → orthogonaliser → apply_kernel
    finalize_kernel    (params)  sensor EMAs, trust ratio, step / skipped counts
The orthogonaliser works on one flat buffer (the moments pass writes its input, the apply pass reads its
output) with one batched call per run of equal shapes: MuonEq's row statistics and scaling, the
polynomial iteration (quintic or Polar Express; ``iterate``: torch matmuls — on CUDA with each step's sums
folded into its GEMMs, ``device_iteration`` — or the Triton kernels' ``polar_iteration_triton``), Muon+'s
Frobenius rescale and NorMuon's factored second moment — the same
``fusedgate.reference.orthogonalise`` the reference runs, so the math is shared, not re-derived. The
cautious weight decay is fused into the apply pass. AdamW params: nonfinite_kernel, adamw_kernel,
adamw_step_kernel. Nothing reads a device value on the host.

Bytes moved per parameter by design, nanochat preset (ω ≡ 1, fp32 p and g, bf16 orthogonaliser buffer
on CUDA): nonfinite 4 + moments 14 (g, m read; m, s written) + MuonEq 6 (norms read s; scale reads and
writes s) + Muon+/NorMuon 8 (statistics read the output twice; one rescale pass reads and writes it)
+ apply 10 (p, o read; p written) = 42 B, plus the iteration's matmul traffic, against ≥ 24 B for an
ideal fused Muon step (read p, g, m; write p, m) — the statistics passes are what a fully fused
MuonEq/Muon+/NorMuon would still save.

One-step lags (by design, as in the reference): the clip threshold uses the gradient-norm EMA before
this step; the trust ratio r = ‖p‖/‖d‖ is the previous step's; the gate reads the sensors as they
were after the previous step.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import triton.language as tl

from fusedgate import gate as G
from fusedgate import reference as R
from fusedgate.kernels import layout as L
from fusedgate.kernels import scalar_kernels as SK
from fusedgate.kernels import slots as S
from fusedgate.kernels import step_kernels as K
from fusedgate.kernels._interpret import INTERPRET
from fusedgate.spec import GateSpec
from fusedgate.stack import Gate, Stack

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
MAX_LAYOUTS = 64   # launch tables kept in a cache before it is cleared


def check_device(device: torch.device) -> None:
    """Triton kernels take CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    if device.type == "cuda" and INTERPRET:
        raise RuntimeError("TRITON_INTERPRET=1 is set, so the Triton kernels run on the CPU, but the parameters "
                           "are on CUDA; unset TRITON_INTERPRET or use backend='reference'")
    if device.type == "cpu" and not INTERPRET:
        raise RuntimeError("backend='triton' with CPU parameters needs TRITON_INTERPRET=1 (set before "
                           "fusedgate.kernels is imported); or use backend='reference'")
    if device.type not in ("cuda", "cpu"):
        raise RuntimeError(f"the Triton backend does not support {device.type} tensors; use backend='reference'")


def kernels_take(device: torch.device) -> bool:
    """Whether the kernels run on tensors of ``device`` here: CUDA when compiling, the CPU under the interpreter."""
    return device.type == ("cpu" if INTERPRET else "cuda")


def advance_global(global_state: torch.Tensor, loss, spec: GateSpec) -> torch.Tensor:
    """``functional.advance_global`` with ``global_kernel``: one launch (plus the copy of a loss that lives on
    another device, or a Python number). Returns the state before it."""
    before = torch.empty_like(global_state)
    operand = global_state if loss is None else torch.as_tensor(loss).detach().reshape(1).to(global_state.device)
    SK.global_kernel[(1,)](global_state, operand, before, 1.0 - spec.ema_loss, 1.0 - spec.ema_loss_improvement,
                           HAS_LOSS=loss is not None, num_warps=1)
    return before


def gated_step(stacks: list[Stack], gate: Gate, *, iterate: Callable = R.polar_iteration,
               cache: dict | None = None) -> None:
    """Every stack's step with the kernels (float64 parameters: with ``reference.gated_step``), in place.
    Every bucket is checked (device, dtypes, state) before anything is stepped: a refused step changes nothing."""
    cache = {} if cache is None else cache
    prepared = [prepare(bucket, gate, cache) for stack in stacks for bucket in _narrow_buckets(stack)]
    wide = [R.take(stack, [i for i, p in enumerate(stack.params) if p.dtype == torch.float64]) for stack in stacks]
    wide = [stack for stack in wide if stack.params]
    if wide:
        R.gated_step(wide, gate, iterate=iterate, cache=cache)
    for bucket, lay, ops, ptrs in prepared:
        if bucket.gated:
            _gated_bucket(bucket, lay, ptrs, gate, iterate)
        else:
            _adamw_bucket(bucket, lay, ptrs)
        ops.finish()


def _narrow_buckets(stack: Stack) -> list[Stack]:
    """The stack's float32/bfloat16/float16 parameters in ``buckets``, their device checked."""
    narrow = R.take(stack, [i for i, p in enumerate(stack.params) if p.dtype != torch.float64])
    if not narrow.params:
        return []
    check_device(narrow.params[0].device)
    return buckets(narrow)


def prepare(bucket: Stack, gate: Gate, cache: dict) -> tuple:
    """(bucket, its launch tables, its checked ``Operands``, its pointer table): everything before a launch."""
    gated = bucket.gated
    lay = cached_layout(cache, "gated" if gated else "adamw", bucket.hyper.units if gated else None, bucket)
    ops = Operands(bucket, lay, adam=gate.uses[1] if gated else True)
    return bucket, lay, ops, lay.pointers(ops.rows)


def buckets(stack: Stack) -> list[Stack]:
    """The stack split by (param dtype, grad dtype), each sorted by shape so equal shapes are adjacent."""
    groups: dict = {}
    for i, (p, grad) in enumerate(zip(stack.params, stack.grads)):
        if p.dtype not in TL_DTYPES or grad.dtype not in TL_DTYPES:
            raise TypeError(f"the Triton backend supports float32/bfloat16/float16 params and grads, "
                            f"got {p.dtype} / {grad.dtype}")
        groups.setdefault((p.dtype, grad.dtype), []).append(i)
    return [R.take(stack, sorted(indices, key=lambda i: tuple(stack.params[i].shape))) for indices in groups.values()]


def _check_state(state: dict, p: torch.Tensor, gated: bool, adam: bool) -> None:
    for key in ("exp_avg", "exp_avg_sq") if adam or not gated else ("exp_avg",):
        t = state[key]
        if t.dtype != torch.float32 or t.shape != p.shape or t.device != p.device:
            raise ValueError(f"state[{key!r}] must be a float32 tensor of the param's shape and device, "
                             f"got {t.dtype} {tuple(t.shape)} on {t.device}")
        if not t.is_contiguous():
            state[key] = t.contiguous()
    expected = {"step": torch.float32, "m_decay_prod": torch.float64, "v_decay_prod": torch.float64}
    expected["sensors" if gated else "skipped"] = torch.float32
    for key, dtype in expected.items():
        if state[key].dtype != dtype or state[key].device != p.device:
            raise ValueError(f"state[{key!r}] must be {dtype} on {p.device}, got {state[key].dtype} on "
                             f"{state[key].device}")
    if gated and state["sensors"].numel() != G.N_SLOTS:
        raise ValueError(f"state['sensors'] must hold {G.N_SLOTS} slots, got {state['sensors'].numel()}")


def _state_tensors(state: dict, gated: bool) -> tuple:
    """What the kernels read through addresses: (m, v or None, sensors — AdamW: the skip count —, step, P₁, P₂)."""
    return (state["exp_avg"], state.get("exp_avg_sq"), state["sensors" if gated else "skipped"], state["step"],
            state["m_decay_prod"], state["v_decay_prod"])


class CheckedStates:
    """Weak references to the state tensors of a bucket as ``_check_state`` last passed them (with ``adam``)."""

    def __init__(self, adam: bool, held: list[tuple]):
        self.adam = adam
        self.refs = [[None if t is None else weakref.ref(t) for t in tensors] for tensors in held]

    def still(self, adam: bool, held: list[tuple]) -> bool:
        """Whether ``held`` are those very tensors (none replaced, added or removed)."""
        return adam == self.adam and len(held) == len(self.refs) and all(
            (t is None) if r is None else (r() is t) for refs, tensors in zip(self.refs, held)
            for r, t in zip(refs, tensors))


class Operands:
    """Contiguous views of a bucket's tensors and their pointer-table rows (the addresses of p, grad, then
    ``_state_tensors``, 0 for an absent v); ``finish`` copies results back into params that were not contiguous
    (their update ran on a contiguous copy). Without the Adam direction (``adam`` False) a gated matrix has no
    ``exp_avg_sq``: its pointer is 0, never dereferenced.

    The state is checked (``_check_state``: dtype, shape, device, contiguity) on a bucket's first step and
    whenever one of its state tensors is not the tensor last checked (a loaded state, a tensor replaced), not
    on every step: a tensor keeps its dtype, shape and device (short of ``set_``/``resize_``)."""

    def __init__(self, bucket: Stack, lay: L.BucketLayout, adam: bool = True):
        self.copy_back, grads, works = [], [], []
        for p, grad in zip(bucket.params, bucket.grads):
            grads.append(grad if grad.is_contiguous() else grad.contiguous())
            work = p.detach()
            if not work.is_contiguous():
                work = work.contiguous()
                self.copy_back.append((p, work))
            works.append(work)
        self.keep = grads + works   # alive until the kernels that read their addresses are queued
        held = [_state_tensors(state, bucket.gated) for state in bucket.states]
        if lay.checked_states is None or not lay.checked_states.still(adam, held):
            for p, state in zip(bucket.params, bucket.states):
                _check_state(state, p, bucket.gated, adam)
            held = [_state_tensors(state, bucket.gated) for state in bucket.states]   # copies made contiguous
            lay.checked_states = CheckedStates(adam, held)
        self.rows = [[w.data_ptr(), g.data_ptr()] + [0 if t is None else t.data_ptr() for t in tensors]
                     for w, g, tensors in zip(works, grads, held)]

    def finish(self) -> None:
        for p, work in self.copy_back:
            p.detach().copy_(work)


def cached_layout(cache: dict, kind: str, units: str | None, bucket: Stack, build: Callable = L.BucketLayout):
    """The bucket's launch tables from ``cache`` (keyed by ``kind`` and the tensors' addresses, shapes and
    dtypes), built on a miss by ``build(params, units, device)``."""
    key = (kind, units, tuple((p.data_ptr(), tuple(p.shape), p.dtype, g.dtype)
                              for p, g in zip(bucket.params, bucket.grads)))
    layout = cache.get(key)
    if layout is None:
        if len(cache) >= MAX_LAYOUTS:
            cache.clear()
        layout = cache[key] = build(bucket.params, units, bucket.params[0].device)
    return layout


def _orthogonalise_runs(layout: L.BucketLayout, bucket: Stack, buffer: torch.Tensor, engine: R.Engine,
                        ns_dtype: torch.dtype, iterate: Callable) -> None:
    """Orthogonalise every parameter's slice of ``buffer`` in place (``reference.orthogonalise``), one
    batched call per shape run; the NorMuon second moments advance where the step is applied."""
    hp = bucket.hyper
    for index, (start, count, rows, cols) in layout.same_shape_runs():
        x = buffer[start:start + count * rows * cols].view(count, rows, cols)
        states = bucket.states[index:index + count]
        moment = torch.stack([s["normuon_sq"] for s in states]) if engine.normuon else None
        # the CPU: a fresh (aligned) float32 copy, as CPU kernels may round differently on a misaligned view;
        # CUDA: the bf16 buffer itself, which the iteration reads as it is (a copy and two casts fewer)
        u = x.float().clone() if x.device.type == "cpu" else x
        o, moment_new = R.orthogonalise(u, engine, hp.ns_steps, moment, hp.normuon_beta2, ns_dtype, iterate)
        x.copy_(o)
        if engine.normuon:
            applied = layout.coefs[index:index + count, S.C_APPLIED] != 0
            moment_new = torch.where(applied.view(count, 1, 1), moment_new, moment)
            torch._foreach_copy_([s["normuon_sq"] for s in states], list(moment_new.unbind(0)))


def device_iteration(iterate: Callable, device: torch.device) -> Callable:
    """The polynomial iteration on ``device``: on CUDA the plain torch form becomes
    ``reference.polar_iteration_gemm``, each step's sums folded into its products (as the compiled backend
    does): 5 element-wise passes fewer per step over bf16 operands, each product and its sum rounded once
    (closer to float64 than the plain form's rounding after every op: ``tests/test_kernels_gpu.py`` holds both to
    a float64 twin). On the CPU the plain form, bit for bit nanochat's; a Triton ``iterate`` as given."""
    return R.polar_iteration_gemm if iterate is R.polar_iteration and device.type == "cuda" else iterate


def _gated_bucket(bucket: Stack, lay: L.BucketLayout, ptrs: torch.Tensor, gate: Gate, iterate: Callable) -> None:
    """One gated step of a bucket of matrix params (``reference.gated_matrix_stack`` for each run)."""
    launch_nonfinite(lay, ptrs, bucket)
    launch_gate(lay, ptrs, bucket, gate, lay.chunk_start, lay.flags)
    if lay.n_chunks and gate.uses[0]:
        buffer = lay.ns_buffer(ns_dtype(lay.device))
        launch_moments(lay, ptrs, bucket, gate, buffer)
        _orthogonalise_runs(lay, bucket, buffer, R.Engine.of(gate.spec), buffer.dtype,
                            device_iteration(iterate, lay.device))
        launch_apply(lay, ptrs, bucket, gate, buffer)
    elif lay.n_chunks:
        launch_step(lay, ptrs, bucket, gate)
    launch_finalize(lay, ptrs, gate, lay.chunk_start, lay.partials)


def launch_nonfinite(lay: L.BucketLayout, ptrs: torch.Tensor, bucket: Stack) -> None:
    """``nonfinite_kernel``: the per-chunk finiteness flags of the bucket's gradients (``lay.flags``)."""
    if lay.n_chunks:
        K.nonfinite_kernel[(lay.n_chunks,)](ptrs, lay.chunk_param, lay.chunk_off, lay.numel_table, lay.flags,
                                            G_DTYPE=TL_DTYPES[bucket.grads[0].dtype], BLOCK=L.BLOCK,
                                            ALIGNED=lay.aligned, num_warps=L.STEP_WARPS)


def launch_gate(lay: L.BucketLayout, ptrs: torch.Tensor, bucket: Stack, gate: Gate, chunk_start: torch.Tensor,
                flags: torch.Tensor) -> None:
    """``gate_kernel``: gate, actuators, decay products and the coefficient rows of the bucket's parameters;
    parameter i's step is applied when ``flags[chunk_start[i]:chunk_start[i + 1]]`` are all 0. Without measures
    g = 0 (its value cannot matter) and the sensors are left as they are."""
    spec, hp, mod = gate.spec, bucket.hyper, bucket.modulation
    poles = G.pole_values(spec)
    pole_row = [cons for cons, _ in poles.values()] + [aggr - cons for cons, aggr in poles.values()]
    SK.gate_kernel[(lay.n,)](
        ptrs, chunk_start, flags, lay.static64, lay.poles(pole_row), lay.coefs, gate.global_state,
        float(gate.total_steps or 0), spec.gate_bias, spec.sharpness, (1.0 - mod.dampen) if gate.measures else 0.0,
        *spec.gate_weights, *L.split64(mod.scale), *L.split64(mod.clip), *L.split64(hp.lr),
        *L.split64(hp.momentum), *L.split64(hp.lr * hp.weight_decay), USE_ADAM=gate.uses[1], FBLOCK=L.FLAGS_BLOCK,
        num_warps=L.FLAGS_WARPS)


def _cautious(gate: Gate, hp) -> bool:
    return R.Engine.of(gate.spec).cautious_wd and hp.weight_decay != 0.0


def ns_dtype(device: torch.device) -> torch.dtype:
    """The orthogonaliser buffer's dtype: bf16 on CUDA, float32 on the CPU (the interpreter)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _aligned(lay: L.BucketLayout, buffer: torch.Tensor) -> bool:
    """The kernels' ALIGNED for a pass that also touches the orthogonaliser's buffer (``layout.pointers``)."""
    return lay.aligned and buffer.data_ptr() % L.VECTOR_BYTES == 0


def launch_moments(lay: L.BucketLayout, ptrs: torch.Tensor, bucket: Stack, gate: Gate, buffer: torch.Tensor) -> None:
    """``moments_kernel``: clip, m, v, the orthogonaliser's input written into the flat ``buffer`` (at
    ``ns_base``), sums ‖g̃‖², g̃·m₋, ‖m₋‖²."""
    hp, (_, use_adam, use_clip) = bucket.hyper, gate.uses
    K.moments_kernel[(lay.n_chunks,)](ptrs, lay.chunk_param, lay.chunk_off, lay.numel_table, lay.coefs, lay.partials,
                                      buffer, lay.ns_base, *L.lerp_weight(1.0 - hp.momentum),
                                      *L.lerp_weight(hp.momentum), G_DTYPE=TL_DTYPES[bucket.grads[0].dtype],
                                      S_DTYPE=TL_DTYPES[buffer.dtype], USE_CLIP=use_clip, NESTEROV=hp.nesterov,
                                      USE_ADAM=use_adam, BLOCK=L.BLOCK, ALIGNED=_aligned(lay, buffer),
                                      num_warps=L.STEP_WARPS)


def launch_apply(lay: L.BucketLayout, ptrs: torch.Tensor, bucket: Stack, gate: Gate, buffer: torch.Tensor) -> None:
    """``apply_kernel``: the blend with the orthogonaliser's output in ``buffer``, the decay, the new p; sums
    ‖p₋‖², ‖d‖², ‖Δp‖²."""
    hp = bucket.hyper
    K.apply_kernel[(lay.n_chunks,)](ptrs, lay.chunk_param, lay.chunk_off, lay.numel_table, lay.coefs, lay.partials,
                                    buffer, lay.ns_base, 1.0 - hp.lr * hp.weight_decay, hp.eps,
                                    P_DTYPE=TL_DTYPES[bucket.params[0].dtype], USE_ADAM=gate.uses[1],
                                    CAUTIOUS=_cautious(gate, hp), BLOCK=L.BLOCK, ALIGNED=_aligned(lay, buffer),
                                    num_warps=L.STEP_WARPS)


def launch_step(lay: L.BucketLayout, ptrs: torch.Tensor, bucket: Stack, gate: Gate) -> None:
    """``step_kernel``: the whole update without orthogonalisation and its six sums, in one pass."""
    hp = bucket.hyper
    K.step_kernel[(lay.n_chunks,)](ptrs, lay.chunk_param, lay.chunk_off, lay.numel_table, lay.coefs, lay.partials,
                                   *L.lerp_weight(1.0 - hp.momentum), 1.0 - hp.lr * hp.weight_decay, hp.eps,
                                   P_DTYPE=TL_DTYPES[bucket.params[0].dtype], G_DTYPE=TL_DTYPES[bucket.grads[0].dtype],
                                   USE_CLIP=gate.uses[2], CAUTIOUS=_cautious(gate, hp), BLOCK=L.BLOCK,
                                   ALIGNED=lay.aligned, num_warps=L.STEP_WARPS)


def launch_finalize(lay: L.BucketLayout, ptrs: torch.Tensor, gate: Gate, chunk_start: torch.Tensor,
                    partials: torch.Tensor) -> None:
    """``finalize_kernel``: parameter i's sensors folded from Σ ``partials[chunk_start[i]:chunk_start[i + 1]]``,
    its step (or skip) counted."""
    spec = gate.spec
    SK.finalize_kernel[(lay.n,)](ptrs, chunk_start, partials, lay.coefs, 1.0 - spec.ema_grad_norm,
                                 1.0 - spec.ema_update_ratio, 1.0 - spec.ema_grad_alignment,
                                 1.0 if gate.measures else 0.0, FBLOCK=L.FBLOCK, num_warps=L.SUMS_WARPS)


def _adamw_bucket(bucket: Stack, lay: L.BucketLayout, ptrs: torch.Tensor) -> None:
    """One AdamW step of a bucket of params (``reference.adamw_step`` for each)."""
    hp = bucket.hyper
    launch_nonfinite(lay, ptrs, bucket)
    SK.adamw_kernel[(lay.n,)](ptrs, lay.chunk_start, lay.flags, lay.coefs, hp.beta2, 1.0 - hp.beta2,
                              *L.split64(hp.lr), *L.split64(hp.beta1), *L.split64(hp.beta2),
                              FBLOCK=L.FLAGS_BLOCK, num_warps=L.FLAGS_WARPS)
    if lay.n_chunks:
        K.adamw_step_kernel[(lay.n_chunks,)](ptrs, lay.chunk_param, lay.chunk_off, lay.numel_table, lay.coefs,
                                             *L.lerp_weight(1.0 - hp.beta1), *L.lerp_weight(1.0 - hp.beta2),
                                             1.0 - hp.lr * hp.weight_decay, hp.eps,
                                             P_DTYPE=TL_DTYPES[bucket.params[0].dtype],
                                             G_DTYPE=TL_DTYPES[bucket.grads[0].dtype], BLOCK=L.BLOCK,
                                             ALIGNED=lay.aligned, num_warps=L.STEP_WARPS)
