"""FusedGate on ``torch.distributed``: what is synchronised, who owns what, and the cost.

Modes (``FusedGate(..., distributed=...)``)
-------------------------------------------
``"auto"`` (default): no process group, or a group of one rank → single-process FusedGate, nothing is
    communicated. With an initialised group of more than one rank the constructor *refuses* and asks
    for one of the two modes below. The optimizer cannot see whether the model is wrapped in DDP, and
    each wrong guess is silent: trusting unsynchronised gradients lets the ranks drift apart, and
    averaging DDP's already-averaged gradients again doubles the communication. So the user says which.
``"replicated"``: the model is wrapped in ``DistributedDataParallel``, which has averaged the gradients
    by the time ``step()`` runs. Every rank runs the whole step on identical gradients. The loss given
    to ``step(loss=...)`` is averaged over the ranks first, so every rank's loss sensors, gate and
    update are the same and the ranks stay bit-identical. The first ``step()`` checks once (one
    all-reduce of a gradient fingerprint, one host sync) that the gradients agree across ranks, and
    raises if they do not (DDP missing).
``"zero2"``: no DDP; FusedGate synchronises the gradients itself and shards its state (ZeRO-2, the way
    nanochat's distributed ``MuonAdamW`` does). The first ``step()`` checks that the same parameters
    have gradients on every rank and warns when the gradients are already identical (DDP present:
    the second average costs communication and changes nothing but rounding).
``"replicated"``/``"zero2"`` with no group or one rank run as single-process FusedGate.

Sharding in ``"zero2"``
-----------------------
Within each param group the parameters are split into *runs*: parameters of the same role (gated
or AdamW), shape and dtype, in group order. A run of K parameters on N ranks is cut into N chunks
whose sizes differ by at most one (K = 4 on 3 ranks: 2, 1, 1 — nanochat's chunks of ⌈K/N⌉ give 2, 2,
0); chunk j is owned by rank (j + s) mod N, where the start s rotates from run to run so that the
larger chunks and the short runs (a bias, a head) do not all land on rank 0. Communication pads
every chunk to c = ⌈K/N⌉ matrices. One exception: an AdamW parameter of ≥ ``SLICE_MIN_NUMEL`` elements
in a run shorter than N (an embedding, an output head) is *sliced*: AdamW is element-wise, so rank r
updates the flat elements [r·L, (r+1)·L), L = ⌈numel/N⌉, and keeps only their moments (nanochat
slices such tensors along dim 0 and needs shape[0] divisible by N; the flat split has no such
condition). Ownership depends only on ``param_groups``, never on the data, so every rank derives the
same plan. One step:

1. launch, asynchronously: the all-reduce of the loss (SUM, then /N) and the gradient reductions
   (SUM), per run of K parameters
   K ≥ N: one reduce-scatter of the gradient stack laid out as N slots of c matrices (zeros in the
        padding), so rank r receives the summed gradients of the chunk it owns;
   K < N: a reduce of each gradient to its owner (no padding traffic);
   sliced: a reduce-scatter of the flat gradient, padded to N·L;
2. wait; each owner divides by N and writes the averaged gradient into ``p.grad`` of the parameters
   it owns (the other parameters keep their local gradients); the sliced parameters get their AdamW
   step on this rank's elements at once, and their all-gather is launched;
3. the usual FusedGate step on the owned parameters only: the same code as a single process (the gate
   and sensors, Polar Express / Newton–Schulz, NorMuon, AdamW, ``reference.gated_matrix_stack`` on the
   owned part of each same-shape stack), so optimizer state exists only for owned parameters, and the
   per-parameter sensors are computed once, by the owner, from the full averaged gradient — while the
   sliced parameters' all-gathers are in flight;
4. launch, per run, the all-gather of the updated chunks (K ≥ N) or the broadcast from the owner
   (K < N), wait for every gather, copy into the parameters. Every rank then holds the same parameters.
The collectives of one phase are all in flight at once. Unlike nanochat, the gated compute of one
group does not overlap the communication of the next (the gate of all groups is computed in one go,
as in the single-process step).

A non-finite gradient skips that matrix's step, as in a single process: the owner sees the full
averaged gradient. For a sliced parameter each rank checks its own elements, so a non-finite element
skips the step of the slice that holds it only (a single process skips the whole parameter). The
global loss state is replicated (five floats, identical on every rank). ``p.grad`` after ``step()``:
averaged for the parameters this rank owns, local elsewhere; gradient clipping by norm before
``step()`` (``clip_grad_norm_``) therefore sees local gradients — use the spec's clip, or DDP.
Every rank must give gradients to the same parameters and pass a loss or not, as DDP requires (the
first step checks this).

Bytes, by design (P parameters' elements, N ranks, fp32 state and gradients)
----------------------------------------------------------------------------
Optimizer state per parameter element: 8 B for AdamW (exp_avg, exp_avg_sq) and 8 B for a gated
matrix (exp_avg, exp_avg_sq — the second moment is allocated even when no pole uses the Adam
direction) plus a NorMuon moment of one value per row or column and 48 B of sensors per matrix.
nanochat's MuonAdamW keeps 4 B per Muon element (the momentum) plus its factored second moment,
and 8 B per AdamW element.
    replicated:  every rank holds the state of all P elements: ≈ 8·P B per rank.
    zero2:       each rank holds the state of the parameters it owns and 1/N of the sliced ones:
                 ≈ 8·P/N B, up to one matrix per run (a run of K < N gated matrices sits on K ranks).
                 nanochat: the same ⌈K/N⌉ chunks for Muon (4 B per element), 1/N of large AdamW
                 tensors, small ones (< 1024 elements) replicated.
Communication per rank per step (ring algorithms; element size b: 4 for fp32):
    replicated:  DDP's all-reduce of the gradients, 2·(N−1)/N·P·b, plus the 4-byte loss all-reduce.
    zero2:       reduce-scatter of the gradients (N−1)/N·P'·b plus all-gather of the parameters
                 (N−1)/N·P'·b, P' = P with each run padded to N·⌈K/N⌉ matrices; runs with K < N go
                 through reduce + broadcast, which move ≈ numel·b each (tree or ring). Total
                 ≈ 2·(N−1)/N·P'·b + 4 B, the same volume as DDP's all-reduce; nanochat's optimizer moves
                 the same (reduce-scatter + all-gather for large tensors, all-reduce for small ones).

Checkpoints: ``state_dict()`` gathers the owners' state onto every rank (a collective: every rank must
call it) and returns the single-process format, so a checkpoint saved at N ranks loads at any M,
including a single process; ``load_state_dict`` keeps only the state this rank owns.
"""

from __future__ import annotations

import math
import sys
import warnings

import torch
import torch.distributed as dist

from fusedgate import reference as R

MODES = ("auto", "replicated", "zero2")
SLICE_MIN_NUMEL = 1024          # AdamW params at least this large in a run shorter than N are split element-wise
MOMENTS = ("exp_avg", "exp_avg_sq")


def world_size(group=None) -> int:
    """The size of ``group`` (None: the default group), or 1 without an initialised process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def resolve_mode(mode: str, group=None) -> str | None:
    """The effective mode: None for a single process, else "replicated" or "zero2"."""
    if mode not in MODES:
        raise ValueError(f"distributed={mode!r} is not one of {MODES}")
    if group is not None and (not dist.is_initialized() or dist.get_rank(group) < 0):
        raise ValueError("process_group: this rank is not a member of the given process group")
    world = world_size(group)
    if world == 1:
        return None
    if mode == "auto":
        raise ValueError(f"torch.distributed is initialised with {world} ranks: pass distributed='replicated' "
                         "(model wrapped in DDP, gradients already averaged) or distributed='zero2' (no DDP: "
                         "FusedGate averages the gradients and shards its state)")
    return mode


def refuse_dtensor(p: torch.Tensor) -> None:
    """A one-line error for FSDP2 / tensor-parallel (DTensor) parameters, raised before any state exists."""
    dtensor = sys.modules.get("torch.distributed.tensor")   # not imported: no DTensor exists (and the
    if dtensor is not None and isinstance(p, dtensor.DTensor):   # import costs ~1 s)
        raise TypeError("FusedGate does not support DTensor parameters (FSDP2 fully_shard, tensor parallel): "
                        "keep the model's parameters plain and use distributed='zero2' (FusedGate averages "
                        "the gradients and shards its own state) or DDP with distributed='replicated'")


def setup(optimizer, mode: str, group=None):
    """The synchroniser for ``optimizer`` over ``group`` (None: the default group); None for a single process."""
    resolved = resolve_mode(mode, group)
    if resolved is None:
        return None
    return Replicated(group) if resolved == "replicated" else Zero2(group)


def _reduce_scatter(output, input, group):
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(output, input, op=dist.ReduceOp.SUM, group=group, async_op=True)


def _all_gather(output, input, group):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(output, input, group=group, async_op=True)


class Sync:
    """One step's synchronisation, shared by both modes: the loss average and the first-step check."""

    mode = ""

    def __init__(self, group=None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.checked = False
        self._loss = None
        self._loss_work = None

    def __deepcopy__(self, memo) -> Sync:
        """A copied optimizer synchronises over the same process group (which cannot be copied): a fresh
        synchroniser of the same mode, its plan rebuilt and its first-step check rerun on the copy's first step."""
        return type(self)(self.group)

    # -------------------------------------------------------------- the step
    def begin(self, optimizer, loss, device) -> None:
        """Launch the loss all-reduce (async: no host sync) and whatever the mode needs before the update."""
        if not self.checked:
            self._first_step_check(optimizer, loss is not None, device)
            self.checked = True
        self._loss, self._loss_work = None, None
        if loss is not None:
            self._loss = torch.as_tensor(loss).detach().to(device=device, dtype=torch.float32).reshape(()).clone()
            self._loss_work = dist.all_reduce(self._loss, op=dist.ReduceOp.SUM, group=self.group, async_op=True)

    def averaged_loss(self) -> torch.Tensor:
        """The mean of the ranks' losses (waits for the all-reduce; on GPU the wait is stream-side)."""
        self._loss_work.wait()
        averaged = self._loss / self.world
        self._loss, self._loss_work = None, None   # hold no Work between steps (deepcopy, pickling)
        return averaged

    def owns(self, p: torch.Tensor) -> bool:
        return True

    def finish(self, optimizer) -> None:
        pass

    # -------------------------------------------------------------- checkpoints
    def gather_state(self, optimizer, state_dict: dict) -> dict:
        return state_dict

    def drop_unowned(self, optimizer) -> None:
        pass

    # -------------------------------------------------------------- checks
    def _first_step_check(self, optimizer, has_loss: bool, device) -> bool:
        """One all-reduce (MAX of x and of −x) of a fingerprint: which params have gradients, whether a loss
        was given, and per gradient its sum and sum of squares. Raises when the ranks disagree on what
        takes part in the collectives; returns whether the gradients are identical across ranks."""
        presence, sums = [float(has_loss)], []
        for group in optimizer.param_groups:
            for p in group["params"]:
                presence.append(float(p.grad is not None))
                if p.grad is not None:
                    g = p.grad.detach().double()
                    sums += [g.sum(), g.square().sum()]
        local = torch.cat([torch.tensor(presence, dtype=torch.float64),
                           torch.stack(sums).cpu() if sums else torch.zeros(0, dtype=torch.float64)])
        local = torch.nan_to_num(local, nan=1e300, posinf=1e301, neginf=-1e301)   # NaN ≠ NaN: give it a value
        both = torch.cat([local, -local]).to(device)
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        high, low = both[:len(local)].cpu(), -both[len(local):].cpu()
        n = len(presence)
        if not torch.equal(high[:n], low[:n]):
            raise RuntimeError(f"FusedGate distributed={self.mode!r}: the ranks disagree on which parameters "
                               "have gradients or on whether step() gets a loss; every rank must pass the "
                               "same (as DDP requires)")
        return bool(torch.equal(high[n:], low[n:]))


class Replicated(Sync):
    """DDP has averaged the gradients: only the loss is averaged; every rank runs the whole step."""

    mode = "replicated"

    def _first_step_check(self, optimizer, has_loss, device):
        if not super()._first_step_check(optimizer, has_loss, device):
            raise RuntimeError("FusedGate distributed='replicated': the gradients differ across ranks at the "
                               "first step; wrap the model in DistributedDataParallel, or use "
                               "distributed='zero2' to let FusedGate average them")
        return True


class Run:
    """A run of same-role, same-shape, same-dtype parameters of one group and its ownership: K parameters in
    N consecutive chunks whose sizes differ by at most one (the first K mod N chunks one larger), chunk j
    owned by rank (j + start) mod N, each rank's chunk in slots [rank·c, rank·c + size) of the
    rank-ordered stack of N·c matrices, c = ⌈K/N⌉."""

    def __init__(self, params: list[torch.Tensor], world: int, start: int):
        self.params = params
        self.world = world
        self.chunk = math.ceil(len(params) / world)
        base, extra = divmod(len(params), world)
        self.owner, self.slot = [], []
        for j in range(world):
            rank = (j + start) % world
            for k in range(base + (j < extra)):
                self.owner.append(rank)
                self.slot.append(rank * self.chunk + k)
        # reduce-scatter / all-gather; else reduce / broadcast per parameter, in place (contiguous ones only)
        self.stacked = len(params) >= world or not all(p.is_contiguous() for p in params)
        self.next_start = (start + extra) % world   # the next run's larger chunks go to other ranks

    def local(self, i: int) -> int:
        """Parameter i's position in its owner's chunk."""
        return self.slot[i] - self.owner[i] * self.chunk


class Slice:
    """An AdamW parameter split element-wise across the ranks: rank r updates the flat elements
    [r·L, min((r+1)·L, numel)), L = ⌈numel/N⌉, and keeps the AdamW state of those elements only."""

    def __init__(self, p: torch.Tensor, group: dict, world: int, rank: int):
        self.p, self.group = p, group
        self.length = math.ceil(p.numel() / world)
        self.lo = min(rank * self.length, p.numel())
        self.hi = min((rank + 1) * self.length, p.numel())

    def mine(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's elements of a tensor shaped like the parameter (a view)."""
        return full.reshape(-1)[self.lo:self.hi]


class Zero2(Sync):
    """ZeRO-2: the optimizer averages gradients (reduce-scatter / reduce), owners update, all-gather."""

    mode = "zero2"

    def __init__(self, group=None):
        super().__init__(group)
        self._plan_key = None
        self.runs: list[Run] = []
        self.slices: dict = {}   # parameter → Slice
        self.owned: set = set()
        self._gathers = []

    def plan(self, optimizer) -> list[Run]:
        """The runs, the sliced AdamW parameters and this rank's owned parameters, rebuilt when
        ``param_groups`` change."""
        key = tuple(tuple(id(p) for p in group["params"]) for group in optimizer.param_groups)
        if key != self._plan_key:
            runs, slices, start = [], {}, 0
            for group in optimizer.param_groups:
                by_kind: dict[tuple, list] = {}
                for index, p in enumerate(group["params"]):
                    role = optimizer.is_gated(group, index, p)
                    by_kind.setdefault((role, tuple(p.shape), p.dtype), []).append(p)
                for (gated, _, _), params in by_kind.items():
                    if (not gated and len(params) < self.world and params[0].numel() >= SLICE_MIN_NUMEL
                            and all(p.is_contiguous() for p in params)):   # flat views into the parameter
                        slices.update({p: Slice(p, group, self.world, self.rank) for p in params})
                        continue
                    run = Run(params, self.world, start)
                    start = run.next_start
                    runs.append(run)
            self.runs, self.slices = runs, slices
            self.owned = {p for run in runs for p, r in zip(run.params, run.owner) if r == self.rank}
            self._plan_key = key
        return self.runs

    def owns(self, p: torch.Tensor) -> bool:
        return p in self.owned

    def _global_rank(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def _first_step_check(self, optimizer, has_loss, device):
        if super()._first_step_check(optimizer, has_loss, device):
            warnings.warn("FusedGate distributed='zero2': the gradients are identical on every rank at the first "
                          "step. If the model is wrapped in DDP use distributed='replicated' (zero2 averages "
                          "them a second time).", stacklevel=4)
        return True

    def begin(self, optimizer, loss, device) -> None:
        super().begin(optimizer, loss, device)
        runs = self.plan(optimizer)
        sliced = [self._reduce_slice(piece) for piece in self.slices.values()]
        launched = []
        for run in runs:
            grads = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in run.params]
            if run.stacked:
                stack = grads[0].new_zeros((self.world * run.chunk,) + tuple(grads[0].shape))
                for g, slot in zip(grads, run.slot):
                    stack[slot].copy_(g)
                out = stack.new_empty((run.chunk,) + tuple(grads[0].shape))
                launched.append((run, out, _reduce_scatter(out, stack, self.group)))
            else:
                bufs = [g.clone() for g in grads]
                works = [dist.reduce(b, dst=self._global_rank(owner), op=dist.ReduceOp.SUM, group=self.group,
                                     async_op=True) for b, owner in zip(bufs, run.owner)]
                launched.append((run, bufs, works))
        for run, out, work in launched:
            for w in work if isinstance(work, list) else [work]:
                w.wait()
            for i, p in enumerate(run.params):
                if run.owner[i] != self.rank or p.grad is None:
                    continue
                summed = out[run.local(i)] if run.stacked else out[i]
                p.grad.copy_(summed.div_(self.world))
        # the sliced AdamW parameters: update this rank's elements, launch their all-gather (it runs while
        # the gated step computes)
        self._gathers = [self._update_slice(optimizer, piece, out, work) for piece, out, work in sliced]

    def _reduce_slice(self, piece: Slice):
        p = piece.p
        flat = p.new_zeros(self.world * piece.length)
        if p.grad is not None:
            flat[:p.numel()].copy_(p.grad.detach().reshape(-1))
        out = flat.new_empty(piece.length)
        return piece, out, _reduce_scatter(out, flat, self.group)

    def _update_slice(self, optimizer, piece: Slice, out: torch.Tensor, work):
        work.wait()
        p, group = piece.p, piece.group
        mine = piece.mine(p.detach())
        if p.grad is not None and piece.hi > piece.lo:
            state = optimizer.state[p]
            if not state:
                state.update(R.new_adamw_state(mine))
            R.adamw_step(mine, out[:piece.hi - piece.lo].div_(self.world), state, float(group["lr"]),
                         group["betas"], float(group["eps"]), float(group["weight_decay"]),
                         host_checks=p.device.type == "cpu")
        padded = p.new_zeros(piece.length)
        padded[:piece.hi - piece.lo].copy_(mine)
        gathered = p.new_empty(self.world * piece.length)
        return piece, gathered, _all_gather(gathered, padded, self.group)

    def finish(self, optimizer) -> None:
        for piece, gathered, work in self._gathers:
            work.wait()
            piece.p.detach().reshape(-1).copy_(gathered[:piece.p.numel()])  # (the owner's own part: unchanged)
        self._gathers = []
        launched = []
        for run in self.runs:
            shape = tuple(run.params[0].shape)
            if run.stacked:
                mine = run.params[0].new_zeros((run.chunk,) + shape)
                for i, p in enumerate(run.params):
                    if run.owner[i] == self.rank:
                        mine[run.local(i)].copy_(p.detach())
                out = mine.new_empty((self.world * run.chunk,) + shape)
                launched.append((run, out, [_all_gather(out, mine, self.group)]))
            else:
                works = [dist.broadcast(p.detach(), src=self._global_rank(owner), group=self.group, async_op=True)
                         for p, owner in zip(run.params, run.owner)]
                launched.append((run, None, works))
        for run, out, works in launched:
            for w in works:
                w.wait()
            if out is None:
                continue
            for i, p in enumerate(run.params):
                if run.owner[i] != self.rank:
                    p.detach().copy_(out[run.slot[i]])

    def traffic_bytes(self, optimizer) -> int:
        """Bytes one rank sends per step by design (ring reduce-scatter / all-gather: (N−1)/N of the padded
        buffer each; reduce and broadcast: the tensor once each), plus the loss all-reduce."""
        self.plan(optimizer)
        n = self.world
        total = 2 * (n - 1) / n * 4   # the loss
        for run in self.runs:
            numel, size = run.params[0].numel(), run.params[0].element_size()
            if run.stacked:
                total += 2 * (n - 1) / n * n * run.chunk * numel * size
            else:
                total += 2 * len(run.params) * numel * size
        for piece in self.slices.values():
            total += 2 * (n - 1) / n * n * piece.length * piece.p.element_size()
        return int(total)

    # -------------------------------------------------------------- checkpoints
    def gather_state(self, optimizer, state_dict: dict) -> dict:
        """Every rank's owned state, merged: the single-process state_dict, on every rank (CPU tensors).
        A sliced parameter's moments are the ranks' element ranges concatenated in rank order."""
        self.plan(optimizer)
        local = {pid: {k: v.detach().cpu().clone() if torch.is_tensor(v) else v for k, v in s.items()}
                 for pid, s in state_dict["state"].items()}
        everyone = [None] * self.world
        dist.all_gather_object(everyone, local, group=self.group)
        sliced = {pid: p for pid, p in enumerate(_all_params(optimizer)) if p in self.slices}
        merged = {}
        for part in everyone:
            merged.update({pid: state for pid, state in part.items() if pid not in sliced})
        for pid, p in sliced.items():
            parts = [part[pid] for part in everyone if pid in part]
            if parts:
                merged[pid] = {k: (torch.cat([q[k] for q in parts]).view(p.shape) if k in MOMENTS else v)
                               for k, v in parts[0].items()}
        return {**state_dict, "state": {pid: merged[pid] for pid in sorted(merged)}}

    def drop_unowned(self, optimizer) -> None:
        """After loading a full state: keep the owned parameters' state and this rank's elements of the
        sliced parameters' moments."""
        self.plan(optimizer)
        for p in _all_params(optimizer):
            if p in self.slices and p in optimizer.state:
                piece = self.slices[p]
                state = optimizer.state[p]
                for k in MOMENTS:
                    state[k] = piece.mine(state[k]).clone()
            elif p not in self.owned:
                optimizer.state.pop(p, None)


def _all_params(optimizer) -> list[torch.Tensor]:
    """The optimizer's parameters in state_dict id order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def state_bytes(optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors on this rank (views counted by their size)."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
               if torch.is_tensor(v))
