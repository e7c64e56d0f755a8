"""The Triton backend of FusedGate: what ``FusedGate.step()`` calls for CUDA tensors (or, forced with
``backend="triton"``, for CPU tensors under Triton's interpreter).

Per bucket of a group (params sharing param dtype and grad dtype), a gated step is a constant number
of launches, whatever the number of tensors:
    nonfinite_kernel   (chunks)  per-chunk finiteness flags of the gradient
    gate_kernel        (params)  gate, actuators, coefficients, decay products
    step_kernel        (chunks)  the fused update + sensor partial sums            — no orthogonalisation
  or moments_kernel → Newton–Schulz (one batched call per run of equal shapes) → apply_kernel
    finalize_kernel    (params)  sensor EMAs, trust ratio, step / skipped counts
AdamW params: nonfinite_kernel, adamw_kernel, step_kernel. Nothing reads a device value on the host.

One-step lags (by design, as in the reference): the clip threshold uses the gradient-norm EMA before
this step; the trust ratio r = ‖p‖/‖d‖ is the previous step's; the gate reads the sensors as they
were after the previous step.
"""

from __future__ import annotations

import weakref

import torch
import triton.language as tl

from fusedgate import gate as G
from fusedgate import reference as R
from fusedgate.kernels import layout as L
from fusedgate.kernels import scalar_kernels as SK
from fusedgate.kernels import step_kernels as K
from fusedgate.kernels._interpret import INTERPRET
from fusedgate.kernels.newton_schulz import newton_schulz_torch

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
             torch.float64: tl.float64}
NS_IMPL = "torch"   # "torch" | "triton": which Newton–Schulz the gated step uses

_layouts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
MAX_LAYOUTS = 64


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


def _buckets(items: list) -> list[list]:
    """Items grouped by (param dtype, grad dtype), each sorted by shape so equal shapes are adjacent."""
    groups: dict = {}
    for p, state in items:
        if p.dtype not in TL_DTYPES or p.grad.dtype not in TL_DTYPES:
            raise TypeError(f"the Triton backend supports float32/bfloat16/float16/float64 params and grads, "
                            f"got {p.dtype} / {p.grad.dtype}")
        groups.setdefault((p.dtype, p.grad.dtype), []).append((p, state))
    return [sorted(bucket, key=lambda item: tuple(item[0].shape)) for bucket in groups.values()]


def _check_state(state: dict, p: torch.Tensor, gated: bool) -> None:
    for key in ("exp_avg", "exp_avg_sq"):
        t = state[key]
        if t.dtype != torch.float32 or t.shape != p.shape or t.device != p.device:
            raise ValueError(f"state[{key!r}] must be a float32 tensor of the param's shape and device, "
                             f"got {t.dtype} {tuple(t.shape)} on {t.device}")
        if not t.is_contiguous():
            state[key] = t.contiguous()
    expected = {"step": torch.float32, "m_decay_prod": torch.float64, "v_decay_prod": torch.float64}
    if gated:
        expected["sensors"] = torch.float32
    for key, dtype in expected.items():
        if state[key].dtype != dtype or state[key].device != p.device:
            raise ValueError(f"state[{key!r}] must be {dtype} on {p.device}, got {state[key].dtype} on "
                             f"{state[key].device}")
    if gated and state["sensors"].numel() != G.N_SLOTS:
        raise ValueError(f"state['sensors'] must hold {G.N_SLOTS} slots, got {state['sensors'].numel()}")


class _Operands:
    """Contiguous views of a bucket's tensors and their pointer-table rows; ``finish`` copies results
    back into params that were not contiguous (their update ran on a contiguous copy)."""

    def __init__(self, bucket: list, gated: bool):
        self.rows, self.keep, self.copy_back = [], [], []
        for p, state in bucket:
            _check_state(state, p, gated)
            grad = p.grad if p.grad.is_contiguous() else p.grad.contiguous()
            work = p.detach()
            if not work.is_contiguous():
                work = work.contiguous()
                self.copy_back.append((p, work))
            self.keep += [grad, work]
            sensors = state["sensors"].data_ptr() if gated else 0
            self.rows.append([work.data_ptr(), grad.data_ptr(), state["exp_avg"].data_ptr(),
                              state["exp_avg_sq"].data_ptr(), sensors, state["step"].data_ptr(),
                              state["m_decay_prod"].data_ptr(), state["v_decay_prod"].data_ptr()])

    def finish(self) -> None:
        for p, work in self.copy_back:
            p.detach().copy_(work)


def _layout(opt, kind: str, units: str | None, bucket: list) -> L.BucketLayout:
    cache = _layouts.setdefault(opt, {})
    key = (kind, units, tuple((id(p), tuple(p.shape), p.dtype, p.grad.dtype) for p, _ in bucket))
    layout = cache.get(key)
    if layout is None:
        if len(cache) >= MAX_LAYOUTS:
            cache.clear()
        layout = cache[key] = L.BucketLayout([p for p, _ in bucket], units, bucket[0][0].device)
    return layout


def _newton_schulz_runs(layout: L.BucketLayout, buffer: torch.Tensor, steps: int) -> None:
    """Orthogonalise every parameter's slice of ``buffer`` in place, one batched call per shape run."""
    from fusedgate.kernels.newton_schulz import newton_schulz_triton

    for start, count, rows, cols in layout.same_shape_runs():
        x = buffer[start:start + count * rows * cols].view(count, rows, cols)
        if NS_IMPL == "triton":
            x.copy_(newton_schulz_triton(x, steps))
        else:
            x.copy_(newton_schulz_torch(x, steps))


def gated_group(opt, items: list, hp: R.MatrixHyper, global_state: torch.Tensor, modulation,
                use_ortho: bool, use_clip: bool) -> None:
    """One gated step of a group's matrix params (``fusedgate.reference.gated_matrix_step`` for each)."""
    spec = opt.spec
    scale, clip, dampen = modulation
    poles = G.pole_values(spec)
    pole_row = [cons for cons, _ in poles.values()] + [aggr - cons for cons, aggr in poles.values()]
    weights = spec.gate_weights
    total_steps = float(opt.total_steps or 0)
    check_device(items[0][0].device)
    for bucket in _buckets(items):
        ops = _Operands(bucket, gated=True)
        lay = _layout(opt, "gated", hp.units, bucket)
        ptrs = lay.pointers(ops.rows)
        p_dtype, g_dtype = TL_DTYPES[bucket[0][0].dtype], TL_DTYPES[bucket[0][0].grad.dtype]
        chunks = (lay.chunk_param, lay.chunk_off, lay.numel_table)
        grid = (lay.n_chunks,)
        if lay.n_chunks:
            K.nonfinite_kernel[grid](ptrs, *chunks, lay.flags, G_DTYPE=g_dtype, BLOCK=L.BLOCK)
        SK.gate_kernel[(lay.n,)](
            ptrs, lay.chunk_start, lay.flags, lay.static64, lay.poles(pole_row), lay.coefs, global_state,
            total_steps, spec.gate_bias, spec.sharpness, 1.0 - dampen, *weights,
            *L.split64(scale), *L.split64(clip), *L.split64(hp.lr), *L.split64(hp.momentum),
            FBLOCK=L.FBLOCK, num_warps=1)
        decay, one_minus_mu = 1.0 - hp.lr * hp.weight_decay, 1.0 - hp.momentum
        if lay.n_chunks and use_ortho:
            ns_dtype = torch.bfloat16 if lay.device.type == "cuda" else torch.float32
            buffer = lay.ns_buffer(ns_dtype)
            K.moments_kernel[grid](ptrs, *chunks, lay.coefs, lay.partials, buffer, lay.ns_base, one_minus_mu,
                                   hp.momentum, G_DTYPE=g_dtype, S_DTYPE=TL_DTYPES[ns_dtype], USE_CLIP=use_clip,
                                   NESTEROV=hp.nesterov, BLOCK=L.BLOCK)
            _newton_schulz_runs(lay, buffer, hp.ns_steps)
            K.apply_kernel[grid](ptrs, *chunks, lay.coefs, lay.partials, buffer, lay.ns_base, decay, hp.eps,
                                 P_DTYPE=p_dtype, BLOCK=L.BLOCK)
        elif lay.n_chunks:
            K.step_kernel[grid](ptrs, *chunks, lay.coefs, lay.partials, one_minus_mu, decay, hp.eps,
                                P_DTYPE=p_dtype, G_DTYPE=g_dtype, USE_CLIP=use_clip, SENSORS=True, BLOCK=L.BLOCK)
        SK.finalize_kernel[(lay.n,)](ptrs, lay.chunk_start, lay.partials, lay.coefs, 1.0 - spec.ema_grad_norm,
                                     1.0 - spec.ema_update_ratio, 1.0 - spec.ema_grad_alignment,
                                     FBLOCK=L.FBLOCK)
        ops.finish()


def adamw_group(opt, items: list, lr: float, betas, eps: float, weight_decay: float) -> None:
    """One AdamW step of a group's params (``fusedgate.reference.adamw_step`` for each)."""
    beta1, beta2 = float(betas[0]), float(betas[1])
    check_device(items[0][0].device)
    for bucket in _buckets(items):
        ops = _Operands(bucket, gated=False)
        lay = _layout(opt, "adamw", None, bucket)
        ptrs = lay.pointers(ops.rows)
        p_dtype, g_dtype = TL_DTYPES[bucket[0][0].dtype], TL_DTYPES[bucket[0][0].grad.dtype]
        chunks = (lay.chunk_param, lay.chunk_off, lay.numel_table)
        grid = (lay.n_chunks,)
        if lay.n_chunks:
            K.nonfinite_kernel[grid](ptrs, *chunks, lay.flags, G_DTYPE=g_dtype, BLOCK=L.BLOCK)
        SK.adamw_kernel[(lay.n,)](ptrs, lay.chunk_start, lay.flags, lay.coefs, beta2, 1.0 - beta2,
                                  *L.split64(lr), *L.split64(beta1), *L.split64(beta2),
                                  FBLOCK=L.FBLOCK, num_warps=1)
        if lay.n_chunks:
            K.step_kernel[grid](ptrs, *chunks, lay.coefs, lay.partials, 1.0 - beta1, 1.0 - lr * weight_decay,
                                eps, P_DTYPE=p_dtype, G_DTYPE=g_dtype, USE_CLIP=False, SENSORS=False,
                                BLOCK=L.BLOCK)
        ops.finish()
