"""The Triton backend's gated step on FSDP2 row shards (``fusedgate.fsdp``'s schedule, on the kernels).

Each same-shape run of K gated matrices is one bucket of their local shards (rank r's rows of each, possibly
none): the element-wise kernels chunk the local rows, while the static row of the launch tables (the clip's
√N, the blend's c_a, c_o and the cautious decay's σ̂) is the whole matrix's (``ShardLayout``). Per run:
    nonfinite_kernel, param_flags_kernel   the K local finiteness flags → all-reduce (MAX)
    gate_kernel                            gate, actuators, coefficients from the whole matrices' flags and the
                                           replicated sensors: the same on every rank
    moments_kernel                         clip, m, v, the orthogonaliser's input u on the local rows
    ``fsdp.Exchange``                      u's rows to the matrix's owner (all-to-all), the whole-matrix
                                           ``reference.orthogonalise`` there, o's rows back (all-to-all)
    apply_kernel                           blend, trust scale, decoupled or cautious decay, new p
  (without orthogonalisation step_kernel instead of the three), then
    param_sums_kernel                      the K × 6 sums over the local rows → all-reduce (SUM)
    finalize_kernel                        the sensor EMAs and step counts from the whole matrices' sums
The flags and the sums are the K × 7 values the reference FSDP2 path all-reduces in one (the bytes
``Fsdp2.traffic_bytes`` counts), in two all-reduces here because every kernel pass is masked by the
finiteness, which must be known first. Runs are interleaved (``fsdp.interleave``): each run's step is a
generator yielding after each async collective. Nothing reads a device value on the host.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.distributed as dist

from fusedgate import fsdp
from fusedgate import gate as G
from fusedgate import reference as R
from fusedgate.kernels import backend as B
from fusedgate.kernels import layout as L
from fusedgate.kernels import scalar_kernels as SK
from fusedgate.kernels import slots as S
from fusedgate.stack import Gate, Stack


class ShardLayout(L.BucketLayout):
    """``BucketLayout`` of K row shards of whole matrices of shape ``whole``, with the per-matrix tables the
    all-reduces carry: ``matrix_flags`` (K,) int32, ``matrix_sums`` (K, N_PS) float32, and ``one_each`` =
    0, 1, …, K (a chunk table of one row per matrix, for the scalar kernels reading them)."""

    def __init__(self, params: list[torch.Tensor], units: str | None, device: torch.device, whole: tuple):
        super().__init__(params, units, device, whole=[whole] * len(params))
        self.one_each = L.to_device(list(range(self.n + 1)), torch.int64, device)
        self.matrix_flags = torch.zeros(self.n, dtype=torch.int32, device=device)
        self.matrix_sums = torch.zeros(self.n, S.N_PS, dtype=torch.float32, device=device)


def gated_stacks(stacks: list[Stack], gate: Gate, iterate: Callable, cache: dict, round: fsdp.Round) -> None:
    """Every same-shape run of the stacks' FSDP2 matrices (DTensors) through ``run_step``, two runs at a time
    (``fsdp.interleave``), in the reference FSDP2 path's run order (so the owners are the same)."""
    runs = [bucket for stack in stacks for run in R.same_shape_runs(stack.params)
            for bucket in B.buckets(R.take(stack, run))]
    device = fsdp.local(runs[0].params[0]).device
    B.check_device(device)
    step = functools.partial(run_step, gate=gate, iterate=B.device_iteration(iterate, device), cache=cache,
                             round=round)
    fsdp.interleave(step, [(run,) for run in runs])


def run_step(run: Stack, *, gate: Gate, iterate: Callable, cache: dict, round: fsdp.Round):
    """One gated step of K FSDP2 matrices of one shape and dtypes, in place (the module docstring), as a
    generator that yields after launching each collective."""
    whole = tuple(run.params[0].shape)
    shards = fsdp.Shards(*R.matrix_view_shape(torch.Size(whole)), round.world)
    bucket = fsdp.local_stack(run)
    fsdp.check_rows(bucket.params[0], shards, round.rank)
    lay = B.cached_layout(cache, f"fsdp2 {whole}", run.hyper.units, bucket, functools.partial(ShardLayout, whole=whole))
    ops = B.Operands(bucket, lay, adam=gate.uses[1])
    ptrs = lay.pointers(ops.rows)
    B.launch_nonfinite(lay, ptrs, bucket)
    SK.param_flags_kernel[(lay.n,)](lay.chunk_start, lay.flags, lay.matrix_flags, FBLOCK=L.FLAGS_BLOCK,
                                    num_warps=L.FLAGS_WARPS)
    reducing = dist.all_reduce(lay.matrix_flags, op=dist.ReduceOp.MAX, group=round.group, async_op=True)
    yield
    reducing.wait()
    B.launch_gate(lay, ptrs, bucket, gate, lay.one_each, lay.matrix_flags)
    if gate.uses[0]:
        yield from _orthogonalised(lay, ptrs, bucket, gate, iterate, shards, round)
    elif lay.n_chunks:
        B.launch_step(lay, ptrs, bucket, gate)
    if gate.measures:
        yield from _reduced_sums(lay, round)
    B.launch_finalize(lay, ptrs, gate, lay.one_each, lay.matrix_sums)
    ops.finish()


def _orthogonalised(lay: ShardLayout, ptrs: torch.Tensor, bucket: Stack, gate: Gate, iterate: Callable,
                    shards: fsdp.Shards, round: fsdp.Round):
    """moments_kernel → ``fsdp.Exchange`` (the whole matrices orthogonalised by their owners; its u and o in
    float32, as the reference path sends them) → apply_kernel; NorMuon's moments advance where the step is
    applied. A generator yielding after each all-to-all."""
    hp, engine, k = bucket.hyper, R.Engine.of(gate.spec), lay.n
    buffer = lay.ns_buffer(B.ns_dtype(lay.device))
    if lay.n_chunks:
        B.launch_moments(lay, ptrs, bucket, gate, buffer)
    u = buffer[:lay.total].view(k, shards.counts[round.rank], shards.cols)
    moment = torch.stack([s["normuon_sq"] for s in bucket.states]) if engine.normuon else None
    exchange = fsdp.Exchange(shards, round.owners(k), round, moment)
    exchange.send(u.float())
    yield
    exchange.orthogonalise(engine, hp.ns_steps, hp.normuon_beta2, buffer.dtype, iterate)
    yield
    o, moment_new = exchange.receive()
    u.copy_(o)
    if moment is not None:
        applied = (lay.coefs[:, S.C_APPLIED] != 0).view(k, 1, 1)
        torch._foreach_copy_([s["normuon_sq"] for s in bucket.states],
                             list(torch.where(applied, moment_new, moment).unbind(0)))
    if lay.n_chunks:
        B.launch_apply(lay, ptrs, bucket, gate, buffer)


def _reduced_sums(lay: ShardLayout, round: fsdp.Round):
    """``matrix_sums`` ← the whole matrices' six sums: param_sums_kernel over the local chunks, then one
    all-reduce (SUM) of the (K, 6) values. A generator yielding after the all-reduce's launch."""
    SK.param_sums_kernel[(lay.n,)](lay.chunk_start, lay.partials, lay.matrix_sums, FBLOCK=L.FBLOCK,
                                   num_warps=L.SUMS_WARPS)
    sums = lay.matrix_sums[:, :len(G.SUMS)].contiguous()
    reducing = dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=round.group, async_op=True)
    yield
    reducing.wait()
    lay.matrix_sums[:, :len(G.SUMS)].copy_(sums)
