"""FusedGate on FSDP2 (``torch.distributed.fsdp.fully_shard``): DTensor parameters sharded on dim 0.

Every parameter is a DTensor with one ``Shard(0)`` placement on a 1-D mesh; rank r holds rows
[r·c, min((r+1)·c, rows)), c = ⌈rows/N⌉ (``torch.chunk``'s split, the one FSDP2 uses: uneven, possibly
empty), and FSDP2 has averaged (reduce-scattered) the gradients into the same shards before ``step()``.
The optimizer state of a sharded parameter (``exp_avg``, ``exp_avg_sq``) is a DTensor of the same
placement; the per-matrix state (sensors, step, decay products, the NorMuon moment) is a plain tensor,
identical on every rank. One step (``Fsdp2.compute``), per same-shape run of K gated matrices:

1. local, no communication: the clip (against the replicated running RMS, N = the whole matrix's
   numel), the moments m, v, the Adam direction, the orthogonaliser's input u (Nesterov blend or m);
2. ``Exchange``: matrix i is owned by rank (s + i) mod N (s rotates over the runs, so the
   work is spread over the ranks); one all-to-all sends each rank's shard of u for matrix i to its owner,
   which concatenates the rows, runs the whole-matrix path once (MuonEq, Polar Express / Newton–Schulz,
   Muon+, NorMuon with its per-row/column moment: ``reference.orthogonalise``) and a second all-to-all
   returns each rank its rows of o — plus, with NorMuon, the new moment (replicated, rows or cols values);
3. local: the blend, the trust scale, the decoupled or cautious decay, the new parameters;
4. one all-reduce (SUM) per run of the (K, 7) partial sums — Σg (the finiteness test), ‖g̃‖², g̃·m₋,
   ‖m₋‖², ‖p₋‖², ‖d‖², ‖Δp‖² over the local rows — so every rank sees the whole matrices' reductions, skips
   the same steps and folds the same sensors: the gates are identical on every rank; then the masked
   write-back into the local shards.
AdamW parameters (sharded or not) step element-wise on their local shards through
``functional.gated_step`` with the optimizer's backend (Triton takes the shards), with no communication.
With ``backend="triton"`` (or ``"auto"`` on CUDA) the gated matrices' local passes 1 and 3 run on the Triton
kernels instead (``fusedgate.kernels.sharded``: the same exchange, the (K, 7) values all-reduced as the K
finiteness flags before the gate and the (K, 6) sums after, the same bytes); float64 ones stay on this torch path.
The loss given to ``step(loss=...)`` is averaged over the ranks first (as in the replicated mode).
Nothing reads the device on the host inside ``step()`` beyond what the single-process CPU path reads, but
the first step's check that the ranks agree on the parameters, their gradients and the loss (``Fsdp2``).
The runs are interleaved (``interleave``, two at a time): each run's step is a generator that yields after
launching each of its three collectives (async), so one run's all-to-alls and all-reduce are in flight
while the other computes; every rank launches the same collectives in the same order.
Bytes per rank per step (``Fsdp2.traffic_bytes``; ``fusedgate.distributed``'s docstring sets them beside
ZeRO-2's and nanochat's): ≈ 2·(N−1)/N²·P·b for the two all-to-alls over P gated elements, plus the sums.
Checkpoints: ``FusedGate.state_dict`` / ``load_state_dict`` work with ``torch.distributed.checkpoint``'s
``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` (``lift_header``, ``to_placement``).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fusedgate import functional as F
from fusedgate import reference as R
from fusedgate.distributed import Sync
from fusedgate.stack import Gate, Stack, uses


def is_dtensor(p: torch.Tensor) -> bool:
    """Whether p is a DTensor (without importing ``torch.distributed.tensor`` when nothing has: ~1 s)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(p, module.DTensor)


def check_placement(p: torch.Tensor) -> None:
    """A one-line TypeError unless p is plain or a DTensor with one ``Shard(0)`` on a 1-D mesh (FSDP2's)."""
    if not is_dtensor(p):
        return
    from torch.distributed.tensor import Shard

    if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
        raise TypeError(f"FusedGate takes DTensor parameters sharded on dim 0 over a 1-D mesh (FSDP2's "
                        f"fully_shard); got placements {tuple(p.placements)} on a {p.device_mesh.ndim}-D mesh")


def mesh_of(params: list[torch.Tensor]):
    """The device mesh of FSDP2 parameters; None when every parameter is plain. One-line TypeError when
    DTensor and plain parameters are mixed, or the DTensors live on different meshes."""
    meshes = [p.device_mesh for p in params if is_dtensor(p)]
    if not meshes:
        return None
    if any(mesh != meshes[0] for mesh in meshes[1:]):   # equal meshes: the same ranks (one mesh per fully_shard)
        raise TypeError("FusedGate's FSDP2 parameters must share one device mesh (the same ranks)")
    plain = sum(not is_dtensor(p) for p in params)
    if plain:
        raise TypeError(f"FusedGate got FSDP2 (DTensor) and {plain} plain parameters; shard the whole model "
                        "with fully_shard (its root call covers the rest), or give the plain ones their own optimizer")
    return meshes[0]


def setup(mesh, mode: str, group=None) -> Fsdp2:
    """The FSDP2 synchroniser over the mesh's group; a one-line TypeError for a mode made for plain parameters."""
    if mode not in ("auto", "fsdp2"):
        raise TypeError(f"FusedGate distributed={mode!r} takes plain parameters, and these are DTensors (FSDP2 "
                        "fully_shard): use distributed='auto' or 'fsdp2' (FusedGate's FSDP2 path)")
    if group is not None and group is not mesh.get_group():
        raise ValueError("process_group: FSDP2 parameters synchronise over their device mesh's group; leave it None")
    return Fsdp2(mesh.get_group())


def to_placement(value: torch.Tensor, p) -> torch.Tensor:
    """A loaded state tensor for FSDP2 parameter p: a whole (plain) tensor of p's shape becomes a DTensor of
    p's placement (each rank slices its rows: no communication); a DTensor, or any other entry, as it is."""
    if is_dtensor(value) or not is_dtensor(p) or value.dim() == 0 or tuple(value.shape) != tuple(p.shape):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None)


def lift_header(state_dict):
    """``state_dict`` with its ``fusedgate`` section at the top and none in the param groups: FSDP2's
    ``state_dict()`` copies the section into param group 0, the only place DCP's ``get_optimizer_state_dict``
    keeps it. Anything that is not such a dict is returned as it is (the checks name what is wrong)."""
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("param_groups"), list):
        return state_dict
    groups = [dict(g) if isinstance(g, dict) else g for g in state_dict["param_groups"]]
    carried = [g.pop("fusedgate") for g in groups if isinstance(g, dict) and "fusedgate" in g]
    header = state_dict.get("fusedgate", carried[0] if carried else None)
    out = {**state_dict, "param_groups": groups}
    if header is not None:
        out["fusedgate"] = header
    return out


def local(t):
    """The local shard of a DTensor (the tensor itself under no_grad: in-place updates reach the DTensor);
    a plain tensor as it is."""
    return t._local_tensor if is_dtensor(t) else t


@dataclass(frozen=True)
class Shards:
    """How ``rows`` rows split over ``world`` ranks: ``torch.chunk``'s ⌈rows/N⌉ per rank, the last ones
    short or empty. ``cols``: the trailing dims flattened (the matrix view)."""

    rows: int
    cols: int
    world: int

    @property
    def counts(self) -> tuple[int, ...]:
        c = math.ceil(self.rows / self.world)
        return tuple(max(0, min(self.rows - r * c, c)) for r in range(self.world))

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(sum(self.counts[:r]) for r in range(self.world))


@dataclass
class Round:
    """One step's exchange context: the group, this rank, and the owner rotation ``start`` (advanced by
    each run, so matrix j of the step, counted over all runs, is owned by rank j mod N)."""

    group: object
    world: int
    rank: int
    start: int = 0

    def owners(self, k: int) -> list[int]:
        owners = [(self.start + i) % self.world for i in range(k)]
        self.start = (self.start + k) % self.world
        return owners


def _all_to_all(send: torch.Tensor, send_counts: list[int], recv_counts: list[int], group):
    """Launch an uneven all-to-all (async: no host sync); (the receive buffer, the work)."""
    recv = send.new_empty(sum(recv_counts))
    return recv, dist.all_to_all_single(recv, send.contiguous(), recv_counts, send_counts, group=group, async_op=True)


class Exchange:
    """The whole-matrix orthogonalisation of K row-sharded matrices (``reference.orthogonalise``), in three
    calls so that the caller can overlap the collectives with other work: ``send`` launches the all-to-all of
    each rank's rows of u (K, rows_r, cols) to the matrices' owners; ``orthogonalise`` waits for it, runs
    the whole-matrix path once per owned matrix and launches the all-to-all of the result's rows (and of the
    NorMuon moments, replicated) back; ``receive`` waits and returns (this rank's rows of o, the new moments
    (K, ·, ·) or None)."""

    def __init__(self, shards: Shards, owners: list[int], round: Round, second_moment: torch.Tensor | None):
        self.shards, self.round, self.second_moment = shards, round, second_moment
        self.k, self.cols, self.counts = len(owners), shards.cols, shards.counts
        self.mine = [i for i in range(self.k) if owners[i] == round.rank]
        self.sent_to = [[i for i in range(self.k) if owners[i] == d] for d in range(round.world)]
        self.extra = 0 if second_moment is None else second_moment[0].numel()

    def send(self, u: torch.Tensor) -> None:
        r, world = self.round.rank, self.round.world
        send = torch.cat([u[i].reshape(-1) for d in range(world) for i in self.sent_to[d]] + [u.new_empty(0)])
        self.incoming = [len(self.mine) * self.counts[s] * self.cols for s in range(world)]
        self.pending = _all_to_all(send, [len(self.sent_to[d]) * self.counts[r] * self.cols for d in range(world)],
                                   self.incoming, self.round.group)

    def orthogonalise(self, engine: R.Engine, steps: int, beta2: float, dtype: torch.dtype, iterate: Callable) -> None:
        recv, work = self.pending
        work.wait()
        world, n, counts, cols = self.round.world, len(self.mine), self.counts, self.cols
        whole = torch.cat([piece.view(n, counts[s], cols) for s, piece in enumerate(recv.split(self.incoming))], 1)
        moment = None if self.second_moment is None else self.second_moment[self.mine]
        o, moment = R.orthogonalise(whole, engine, steps, moment, beta2, dtype, iterate) if n else (whole, None)
        offsets = self.shards.offsets
        back = [torch.cat([o[j, offsets[d]:offsets[d] + counts[d]].reshape(-1)]
                          + ([moment[j].reshape(-1).to(o.dtype)] if self.extra else []))
                for d in range(world) for j in range(n)]
        self.width = counts[self.round.rank] * cols + self.extra
        self.incoming = [len(self.sent_to[s]) * self.width for s in range(world)]
        self.pending = _all_to_all(torch.cat(back + [o.new_empty(0)]), [n * (counts[d] * cols + self.extra)
                                   for d in range(world)], self.incoming, self.round.group)

    def receive(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        recv, work = self.pending
        work.wait()
        rows, local = self.counts[self.round.rank], self.counts[self.round.rank] * self.cols
        o = recv.new_empty((self.k, rows, self.cols))
        moments = None if self.second_moment is None else torch.empty_like(self.second_moment, dtype=o.dtype)
        for s, piece in enumerate(recv.split(self.incoming)):
            block = piece.view(len(self.sent_to[s]), self.width)
            for j, i in enumerate(self.sent_to[s]):
                o[i] = block[j, :local].view(rows, self.cols)
                if moments is not None:
                    moments[i] = block[j, local:].view(self.second_moment[i].shape)
        self.pending = None
        return o, moments


def check_rows(shard: torch.Tensor, shards: Shards, rank: int) -> None:
    """A one-line RuntimeError unless the local shard has torch.chunk's row count for this rank."""
    if shard.shape[0] != shards.counts[rank]:
        raise RuntimeError(f"FusedGate FSDP2: a local shard of {tuple(shard.shape)} where torch.chunk's "
                           f"split of {shards.rows} rows gives {shards.counts[rank]} rows on rank {rank}")


def local_stack(stack: Stack) -> Stack:
    """The stack of the local shards: parameters, gradients and state entries (new state dicts whose tensors
    are the shards, so in-place updates reach the DTensors)."""
    return Stack([local(p) for p in stack.params], [local(g) for g in stack.grads],
                 [{key: local(v) for key, v in s.items()} for s in stack.states], stack.hyper, stack.modulation)


def on_kernels(p: torch.Tensor, backend: str) -> bool:
    """Whether FSDP2 gated matrix p steps on the Triton kernels (``fusedgate.kernels.sharded``): backend
    "triton", or "auto" with its shard on CUDA and Triton importable; float64 never (the Triton backend hands
    float64 to the reference too)."""
    if p.dtype == torch.float64 or backend not in ("triton", "auto"):
        return False
    return backend == "triton" or (local(p).is_cuda and F.triton_available())


def sharded_matrix_stack(stack: Stack, act: dict, sensors: torch.Tensor, steps: torch.Tensor | None,
                         flags: R.StackFlags, *, round: Round):
    """``reference.gated_matrix_stack`` for K FSDP2 matrices of one global shape, as a generator that yields
    after launching each collective (``interleave`` runs the runs side by side) and returns (the sums (K, 6)
    or None, the (K,) bool applied), the same on every rank: the element-wise steps on the local rows, the
    orthogonalisation on whole matrices (``Exchange``), the sums and the finiteness test all-reduced; the
    step is masked by the whole matrix's finiteness (no host read)."""
    k, (rows, cols) = len(stack.params), R.matrix_view_shape(stack.params[0].shape)
    shards, hp = Shards(rows, cols, round.world), stack.hyper
    view, work = (k, shards.counts[round.rank], cols), R.compute_dtype(stack.params[0].dtype)
    params = [local(p) for p in stack.params]
    check_rows(params[0], shards, round.rank)
    P = torch.stack(params).view(view).to(work)
    g = torch.stack([local(grad) for grad in stack.grads]).view(view).to(work)
    stored = {key: [local(s[key]) for s in stack.states] for key in ("exp_avg", "exp_avg_sq")
              if key == "exp_avg" or flags.adam}
    moments = {"exp_avg": torch.stack(stored["exp_avg"]).view(view), "m_decay": R.pack(stack.states, "m_decay_prod")}
    if flags.adam:
        moments.update(exp_avg_sq=torch.stack(stored["exp_avg_sq"]).view(view),
                       v_decay=R.pack(stack.states, "v_decay_prod"))
    if flags.ortho and flags.engine.normuon:
        moments["normuon"] = R.pack(stack.states, "normuon_sq")
    total = g.sum(dim=(-2, -1))   # before the clip, as the single process tests it
    col = lambda t: t if isinstance(t, float) else t.to(g.dtype).view(k, 1, 1)
    if flags.clip:
        R._clip_(g, act["clip_inv"], sensors, steps, col, numel=rows * cols)
    m = moments["exp_avg"]
    old_m_sums = (R._dots(g, m), R._squares(m)) if flags.sensors else None
    m_new = torch.lerp(m, g, R.weight(1.0 - hp.momentum, m))
    dirs, source = R._adam_directions(g, m_new, moments, act, sensors, hp, flags, col, shape=(rows, cols))
    if flags.ortho:
        exchange = Exchange(shards, round.owners(k), round, moments.get("normuon"))
        exchange.send(source)
        yield
        exchange.orthogonalise(flags.engine, hp.ns_steps, hp.normuon_beta2, R.orthogonaliser_dtype(g, flags),
                               flags.iterate)
        yield
        o, moment_new = exchange.receive()
        R._add_orthogonal(dirs, o, moments.get("normuon"), moment_new, col)
    P_new, decrement = R._decayed_update(P, dirs, hp, flags.engine.cautious_wd and flags.decays, rows, cols)
    partial = [total[:, None]]
    if flags.sensors:
        partial.append(R._step_sums(g, old_m_sums, P, P_new, decrement, dirs, flags.adam).to(total.dtype))
    reduced = torch.cat(partial, dim=1)
    reducing = dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=round.group, async_op=True)
    yield
    reducing.wait()
    applied = torch.isfinite(reduced[:, 0])
    R.write_back(params, applied, P_new, P, [(m, m_new)] + dirs.updates)
    for key, tensors in stored.items():
        torch._foreach_copy_(tensors, list(moments[key].view((k, *params[0].shape)).unbind(0)))
    return (reduced[:, 1:].float() if flags.sensors else None), applied


def interleave(run_step: Callable, calls: list[tuple], window: int = 2) -> list:
    """``reference._gated_stacks``'s schedule for generator run steps: up to ``window`` runs at a time, each
    advanced to its next collective in turn (a finished run's place goes to the next run), so that one run's
    communication is in flight while another computes, and at most ``window`` runs' temporaries are alive.
    Every rank launches the same collectives in the same order. Returns the runs' results in order."""
    results, waiting, active = [None] * len(calls), iter(enumerate(calls)), []

    def start() -> None:
        upcoming = next(waiting, None)
        if upcoming is not None:
            active.append((upcoming[0], run_step(*upcoming[1])))

    for _ in range(window):
        start()
    while active:
        for entry in list(active):
            try:
                next(entry[1])
            except StopIteration as done:
                results[entry[0]] = done.value
                active.remove(entry)
                start()
    return results


class Fsdp2(Sync):
    """The FSDP2 mode (the module docstring): the loss average, then ``compute`` instead of the
    single-process functional step. The first step checks, as the other modes do (one all-reduce, one host
    sync, first step only), that every rank has the same parameters, gives gradients to the same ones and
    passes a loss or none — what the collectives need to match; the gradients themselves are not compared
    (each rank holds other rows)."""

    mode = "fsdp2"
    compares_gradients = False

    def compute(self, optimizer, stacks: list[Stack], gate: Gate) -> None:
        """The gated matrices on the Triton kernels (``on_kernels``: ``fusedgate.kernels.sharded``), the others
        through ``reference._gated_stacks`` with ``sharded_matrix_stack`` as the run step, the owners rotating
        over both; the AdamW stacks on their local shards through ``functional.gated_step`` (the backend's)."""
        iterate, round = F.newton_schulz(optimizer.newton_schulz), Round(self.group, self.world, self.rank)
        gated = [stack for stack in stacks if stack.gated and stack.params]
        split = [[R.take(stack, [i for i, p in enumerate(stack.params) if on_kernels(p, optimizer.backend) == kind])
                  for stack in gated] for kind in (False, True)]
        on_torch, on_triton = ([stack for stack in part if stack.params] for part in split)
        if on_torch:
            run_step = functools.partial(sharded_matrix_stack, round=round)
            R._gated_stacks(on_torch, gate, iterate, R.StepFunctions(run_step=run_step, schedule=interleave))
        if on_triton:
            F.triton_backend()   # a one-line RuntimeError without Triton
            from fusedgate.kernels import sharded

            sharded.gated_stacks(on_triton, gate, iterate, optimizer._cache, round)
        plain = [local_stack(stack) for stack in stacks if not stack.gated and stack.params]
        if plain:
            F.gated_step(plain, gate, backend=optimizer.backend, iterate=iterate, cache=optimizer._cache)

    def traffic_bytes(self, optimizer) -> int:
        """Bytes this rank sends per step by design: the all-to-alls of the orthogonaliser's input and output
        (this rank's rows of the matrices others own, the rows others hold of the matrices it owns, and the
        NorMuon moments of those), the ring all-reduce of the (K, 7) sums per run, the 4-byte loss all-reduce."""
        return int(traffic(optimizer, self.world, self.rank))


def traffic(optimizer, world: int, rank: int) -> float:
    """``Fsdp2.traffic_bytes`` from ``param_groups`` and the spec (a float: the ring all-reduces' (N−1)/N)."""
    ortho = uses(optimizer.spec)[0]
    ring = 2 * (world - 1) / world
    total, start = ring * 4, 0
    for group in optimizer.param_groups:
        runs: dict[tuple, list] = {}
        for index, p in enumerate(group["params"]):
            if optimizer.is_gated(group, index, p):
                runs.setdefault((tuple(p.shape), p.dtype), []).append(p)
        for (shape, dtype), params in runs.items():
            rows, cols = R.matrix_view_shape(torch.Size(shape))
            counts, b = Shards(rows, cols, world).counts, torch.finfo(R.compute_dtype(dtype)).bits // 8
            owners = [(start + i) % world for i in range(len(params))]
            start = (start + len(params)) % world
            total += ring * len(params) * (7 if optimizer.reads_sensors else 1) * 4
            if not ortho:
                continue
            extra = math.prod(R.normuon_shape(rows, cols)) if optimizer.spec.normuon else 0
            for owner in owners:
                if owner != rank:
                    total += counts[rank] * cols * b
                else:
                    total += sum(counts[d] * cols + extra for d in range(world) if d != rank) * b
    return total
