"""FusedGate on ``torch.distributed``: what is synchronised, who owns what, and the cost.

Modes (``FusedGate(..., distributed=...)``)
-------------------------------------------
``"auto"`` (default): no process group, or a group of one rank → single-process FusedGate, nothing is
    communicated. With an initialised group of more than one rank the first ``step()`` decides once, as
    nanochat's optimizer is used (with DDP or without): it all-reduces a gradient fingerprint (one
    all-reduce, one host sync, first step only); gradients identical on every rank mean DDP has averaged
    them → ``"replicated"``, otherwise → ``"zero2"``. A multi-rank FusedGate therefore needs no new argument.
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
``"fsdp2"`` (what ``"auto"`` chooses whenever the parameters are DTensors, at any world size): FSDP2's
    ``fully_shard`` has sharded every parameter on dim 0 and reduce-scattered the gradients; FusedGate steps
    the shards (``fusedgate.fsdp``, the section below); the first step checks the ranks' parameter lists,
    which have gradients and the loss as ``"zero2"`` does, but not the gradients. DTensor parameters under
    ``"replicated"``/``"zero2"``, DTensors of another placement, and DTensor and plain parameters mixed are
    refused at construction, in one line.
``"auto"``, ``"replicated"`` and ``"zero2"`` with no group or one rank run as single-process FusedGate
(``"fsdp2"`` steps DTensors at any world size).

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

One step, in three phases (as nanochat's ``MuonAdamW.step``):

1. launch, asynchronously (``Sync.launch``): the all-reduce of the loss (SUM, then /N) and the gradient
   reductions (SUM), per run of K parameters
   K ≥ N: one reduce-scatter of the gradient stack laid out as N slots of c matrices (zeros in the
        padding), so rank r receives the summed gradients of the chunk it owns;
   K < N: a reduce of each gradient to its owner (no padding traffic);
   sliced: a reduce-scatter of the flat gradient, padded to N·L;
2. wait and compute (``Sync.wait``, then the optimizer's step): each owner divides by N and writes the
   averaged gradient into ``p.grad`` of the parameters it owns (the other parameters keep their local
   gradients); the sliced parameters get their AdamW step on this rank's elements at once — through the
   same ``fusedgate.functional.gated_step`` as everything else, on stacks of element views — and their
   all-gather is launched; then the usual FusedGate step on the owned parameters only (the gate and
   sensors, Polar Express / Newton–Schulz, NorMuon, AdamW; ``reference.gated_matrix_stack`` on the owned
   part of each same-shape stack), so optimizer state exists only for owned parameters, and the
   per-parameter sensors are computed once, by the owner, from the full averaged gradient — while the
   sliced parameters' all-gathers are in flight;
3. gather (``Sync.gather``): launch, per run, the all-gather of the updated chunks (K ≥ N) or the
   broadcast from the owner (K < N), wait for every gather, copy into the parameters. Every rank then
   holds the same parameters.
The collectives of one phase are all in flight at once. Unlike nanochat, the gated compute of one
group does not overlap the communication of the next (the gate of all groups is computed in one go,
as in the single-process step).

A non-finite gradient skips that matrix's step, as in a single process: the owner sees the full
averaged gradient. For a sliced parameter each rank checks its own elements, so a non-finite element
skips the step of the slice that holds it only (a single process skips the whole parameter). The
global loss state is replicated (five floats, identical on every rank). ``p.grad`` after ``step()``:
averaged for the parameters this rank owns, local elsewhere; gradient clipping by norm before
``step()`` (``clip_grad_norm_``) therefore sees local gradients — use the spec's clip, or DDP.
Every rank must hold the same parameter list (shapes and dtypes in the same order), give gradients to the
same parameters and pass a loss or not, as DDP requires: the first step checks this with a fixed-size
fingerprint (so a disagreement cannot hang a collective) and refuses on every rank, naming the first
mismatch.

Bytes, by design (P parameters' elements, N ranks, fp32 state and gradients)
----------------------------------------------------------------------------
Optimizer state per parameter element: 8 B for AdamW (exp_avg, exp_avg_sq); 4 B for a gated matrix
(exp_avg) plus 4 B (exp_avg_sq) only when some pole gives the Adam direction weight (ω < 1), plus a
NorMuon moment of one value per row or column and 68 B per matrix (sensors, step, decay products).
nanochat's MuonAdamW keeps 4 B per Muon element (the momentum) plus its factored second moment,
and 8 B per AdamW element: at ω ≡ 1 (``nanochat()``, the gated default) the two hold the same.
    replicated:  every rank holds the state of all P elements: ≈ 4–8·P B per rank.
    zero2:       each rank holds the state of the parameters it owns and 1/N of the sliced ones:
                 ≈ 4–8·P/N B, up to one matrix per run (a run of K < N gated matrices sits on K ranks).
                 nanochat: the same ⌈K/N⌉ chunks for Muon (4 B per element), 1/N of large AdamW
                 tensors, small ones (< 1024 elements) replicated.
Communication per rank per step (ring algorithms; element size b: 4 for fp32):
    replicated:  DDP's all-reduce of the gradients, 2·(N−1)/N·P·b, plus the 4-byte loss all-reduce.
    zero2:       reduce-scatter of the gradients (N−1)/N·P'·b plus all-gather of the parameters
                 (N−1)/N·P'·b, P' = P with each run padded to N·⌈K/N⌉ matrices; runs with K < N go
                 through reduce + broadcast, which move ≈ numel·b each (tree or ring). Total
                 ≈ 2·(N−1)/N·P'·b + 4 B, the same volume as DDP's all-reduce; nanochat's optimizer moves
                 the same (reduce-scatter + all-gather for large tensors, all-reduce for small ones).

FSDP2 (``fusedgate.fsdp``), beside ZeRO-2
----------------------------------------
FSDP2 keeps on rank r the rows [r·c, min((r+1)·c, rows)), c = ⌈rows/N⌉, of every parameter (uneven,
possibly empty) and, before ``step()``, the averaged gradient of the same rows. FusedGate keeps the
moments (``exp_avg``, ``exp_avg_sq``) as DTensors of the parameter's placement, 1/N per rank, and the
per-matrix state (sensors, step, decay products, NorMuon moment) replicated. One step, per same-shape
run of K gated matrices:
  element-wise, on the local rows, no communication: the clip, m, v, the Adam direction, the blend,
      the decoupled or cautious decay; and every AdamW parameter — all through the optimizer's backend
      (``backend="triton"``, or ``"auto"`` on CUDA: the Triton kernels on the shards, ``fusedgate.kernels.sharded``);
  orthogonaliser, on whole matrices: matrix j of the step (counted over the runs) is owned by rank
      j mod N; one all-to-all sends every rank's rows of the orthogonaliser's input u (the momentum-updated
      gradient, Nesterov-blended) to the owner, which runs MuonEq, Polar Express / Newton–Schulz,
      Muon+ and NorMuon once on the whole matrix; a second all-to-all returns each rank its rows of the
      result (and, with NorMuon, the new moment). Each rank orthogonalises ≈ K/N matrices, not K, and only
      u travels: the moments never move;
  sensors: one all-reduce of the (K, 7) partial sums over the local rows (Σg for the finiteness test,
      ‖g̃‖², g̃·m₋, ‖m₋‖², ‖p₋‖², ‖d‖², ‖Δp‖²), so every rank folds the whole matrices' sums: the gates, the
      skipped steps and the updates are the same on every rank.
The collectives are async and two runs are stepped side by side, so one run's communication overlaps the
other's compute (``fsdp.interleave``).
Bytes sent per rank per step by design (P gated matrix elements, b = 4 for fp32, ring all-reduces):
    FSDP2:       out, this rank's rows of the matrices others own, ≈ (N−1)/N·P/N·b; back, the rows others
                 hold of the ≈ K/N matrices this rank owns, ≈ (N−1)/N·P/N·b; in all ≈ 2·(N−1)/N²·P·b
                 (summed over the ranks 2·(N−1)/N·P·b: what *one* rank sends in ZeRO-2), plus (N−1)·S·b
                 per owned matrix with NorMuon (S = its rows or columns) and 2·(N−1)/N·(7·M + 1)·4 B for
                 the sums of the M gated matrices and the loss. AdamW parameters: nothing.
                 ``Fsdp2.traffic_bytes`` counts the uneven rows exactly. FSDP2's own all-gathers of the
                 parameters and reduce-scatter of the gradients (2–3·(N−1)/N·P·b) are the model's.
    ZeRO-2:      2·(N−1)/N·P′·b + 4 B (above): the gradients' reduce-scatter and the parameters' all-gather.
    nanochat:    the same as ZeRO-2, 2·(N−1)/N·P·b (reduce-scatter + all-gather in its DistMuonAdamW).
    E.g. N = 8: FSDP2's optimizer sends ≈ 0.22·P·b per rank per step, ZeRO-2 and nanochat ≈ 1.75·P·b.
Checkpoints under FSDP2 go through ``torch.distributed.checkpoint``: ``state_dict()`` holds the moments as
DTensors (DCP saves each rank's rows and reshards them on load to any world size) and the rest replicated;
param group 0 carries its ``fusedgate`` section (spec, global state; refreshed by ``state_dict()``), the
only place ``get_optimizer_state_dict`` keeps it, flattened (``flatten_optimizer_state_dict``, torchtitan's
choice) or not. ``set_optimizer_state_dict`` runs one zero-gradient step at lr 0 on a fresh optimizer
before loading (torch's ``_init_optim_state``); the load then replaces all of its state.

Checkpoints: ``state_dict()`` gathers the owners' state onto every rank (a collective: every rank must
call it) and returns the single-process format, so a checkpoint saved at N ranks loads at any M,
including a single process; ``load_state_dict`` keeps only the state this rank owns.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable

import torch
import torch.distributed as dist

from fusedgate import reference as R
from fusedgate.stack import AdamWHyper, Stack

MODES = ("auto", "replicated", "zero2", "fsdp2")
SLICE_MIN_NUMEL = 1024          # AdamW params at least this large in a run shorter than N are split element-wise
MOMENTS = ("exp_avg", "exp_avg_sq")


def world_size(group=None) -> int:
    """The size of ``group`` (None: the default group), or 1 without an initialised process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def resolve_mode(mode: str, group=None) -> str | None:
    """The effective mode for plain parameters: None for a single process, else ``mode`` ("auto": replicated or
    zero2, decided at the first step). DTensor parameters take ``fusedgate.fsdp.setup`` instead."""
    if mode not in MODES:
        raise ValueError(f"distributed={mode!r} is not one of {MODES}")
    if group is not None and (not dist.is_initialized() or dist.get_rank(group) < 0):
        raise ValueError("process_group: this rank is not a member of the given process group")
    return None if world_size(group) == 1 else mode


def setup(optimizer, mode: str, group=None):
    """The synchroniser for ``optimizer`` over ``group`` (None: the default group); None for a single process."""
    if mode == "fsdp2":
        raise TypeError("FusedGate distributed='fsdp2' takes DTensor parameters (FSDP2's fully_shard); these are "
                        "plain: use distributed='auto', 'replicated' or 'zero2'")
    resolved = resolve_mode(mode, group)
    if resolved is None:
        return None
    return {"auto": Auto, "replicated": Replicated, "zero2": Zero2}[resolved](group)


def _reduce_scatter(output, input, group):
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(output, input, op=dist.ReduceOp.SUM, group=group, async_op=True)


def _all_gather(output, input, group):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(output, input, group=group, async_op=True)


def _digest(text: str | bytes) -> float:
    """A 52-bit digest of ``text`` as an exact float64 (the same on every process, unlike ``hash``)."""
    data = text.encode() if isinstance(text, str) else text
    return float(int.from_bytes(hashlib.sha1(data).digest()[:8], "little") >> 12)


def _layout(optimizer) -> list[tuple[str, tuple, str, bool]]:
    """(name, shape, dtype, has a gradient) of every parameter, in state_dict order."""
    return [(optimizer.param_name(gi, group, i), tuple(p.shape), str(p.dtype), p.grad is not None)
            for gi, group in enumerate(optimizer.param_groups) for i, p in enumerate(group["params"])]


def _first_mismatch(layouts: list[tuple[bool, list]]) -> str:
    """One line naming the first disagreement between the ranks' (has a loss, layout)."""
    base_loss, base = layouts[0]
    for rank, (has_loss, layout) in enumerate(layouts[1:], start=1):
        if len(layout) != len(base):
            return f"rank 0 has {len(base)} parameters, rank {rank} has {len(layout)}"
        for index, (a, b) in enumerate(zip(base, layout)):
            if a[:3] != b[:3]:
                return (f"parameter #{index} is {a[0]} {a[1]} {a[2]} on rank 0 but {b[0]} {b[1]} {b[2]} "
                        f"on rank {rank}")
            if a[3] != b[3]:
                return (f"parameter #{index} ({a[0]}) has a gradient on rank {0 if a[3] else rank} and none on "
                        f"rank {rank if a[3] else 0}")
        if has_loss != base_loss:
            return f"step() gets a loss on rank {0 if base_loss else rank} and none on rank {rank if base_loss else 0}"
    return "the ranks' parameter fingerprints differ"


class Sync:
    """One step's synchronisation, shared by the modes: the loss average and the first-step check.

    The optimizer's step calls ``launch`` (phase 1), ``averaged_loss`` and ``wait`` (phase 2, before its own
    compute), ``gather`` (phase 3); ``owns`` tells it which parameters to compute."""

    mode = ""
    compares_gradients = True   # the first-step fingerprint sums the gradients (FSDP2: each rank holds other rows)

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
    def launch(self, optimizer, loss, device) -> None:
        """Phase 1: launch the loss all-reduce (async: no host sync) and whatever the mode reduces."""
        if not self.checked:
            self.first_step(optimizer, self.fingerprint(optimizer, loss is not None, device))
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

    def wait(self, optimizer, compute: Callable) -> None:
        """Phase 2: wait for the reductions; ``compute(stacks)`` runs the functional step on stacks the mode
        computes itself (zero2's sliced parameters)."""

    def owns(self, p: torch.Tensor) -> bool:
        return True

    def gather(self, optimizer) -> None:
        """Phase 3: bring every rank's updated parameters to every rank."""

    # -------------------------------------------------------------- checkpoints
    def gather_state(self, optimizer, state_dict: dict) -> dict:
        return state_dict

    def drop_unowned(self, optimizer) -> None:
        pass

    # -------------------------------------------------------------- checks
    def first_step(self, optimizer, identical: bool) -> None:
        """What the mode does with the first step's verdict (``identical``: the gradients agree on every rank)."""

    def fingerprint(self, optimizer, has_loss: bool, device) -> bool:
        """One all-reduce (MAX of x and of −x) of six numbers and one host sync (reading its result): the
        parameter count, digests of the parameter list (names, shapes, dtypes) and of which have gradients,
        whether a loss was given, and two weighted sums over the gradients' sums and sums of squares (formed
        on the device: identical gradients give identical bits). Raises on every rank, naming the first
        mismatch, when the ranks disagree on what takes part in the collectives; returns whether the
        gradients are identical."""
        layout = _layout(optimizer)
        header = torch.tensor([len(layout), _digest(repr([entry[:3] for entry in layout])),
                               _digest(repr([entry[3] for entry in layout])), float(has_loss)], dtype=torch.float64)
        sums = [t for group in optimizer.param_groups for p in group["params"] if p.grad is not None
                for g in [p.grad.detach().to(device=device, dtype=torch.float64)] for t in (g.sum(), g.square().sum())
                ] if self.compares_gradients else []
        if sums:
            values = torch.stack(sums)
            weights = torch.arange(1, len(sums) + 1, dtype=torch.float64, device=device).sqrt()
            summary = torch.stack([values.sum(), (values * weights).sum()])
            summary = torch.nan_to_num(summary, nan=1e300, posinf=1e301, neginf=-1e301)   # NaN ≠ NaN: a value
        else:
            summary = torch.zeros(2, dtype=torch.float64, device=device)
        local = torch.cat([header.to(device), summary])
        both = torch.cat([local, -local])
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        both = both.cpu()   # the host sync
        high, low = both[:6], -both[6:]
        if not torch.equal(high[:4], low[:4]):
            everyone = [None] * self.world   # every rank sees the same verdict, so every rank gathers
            dist.all_gather_object(everyone, (has_loss, layout), group=self.group)
            raise RuntimeError(f"FusedGate distributed={self.mode!r}: the ranks disagree on the parameters, on "
                               "which have gradients or on whether step() gets a loss "
                               f"({_first_mismatch(everyone)}); every rank must pass the same (as DDP requires)")
        return torch.equal(high[4:], low[4:])


class Replicated(Sync):
    """DDP has averaged the gradients: only the loss is averaged; every rank runs the whole step."""

    mode = "replicated"

    def first_step(self, optimizer, identical: bool) -> None:
        if not identical:
            raise RuntimeError("FusedGate distributed='replicated': the gradients differ across ranks at the "
                               "first step; wrap the model in DistributedDataParallel, or use "
                               "distributed='zero2' to let FusedGate average them")


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
        self._gathers, self._reduced, self._sliced = [], [], []

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

    def first_step(self, optimizer, identical: bool) -> None:
        if identical:
            warnings.warn("FusedGate distributed='zero2': the gradients are identical on every rank at the first "
                          "step. If the model is wrapped in DDP use distributed='replicated' (zero2 averages "
                          "them a second time).", stacklevel=4)

    def launch(self, optimizer, loss, device) -> None:
        """Phase 1: the loss all-reduce, the sliced parameters' reduce-scatters, each run's reductions."""
        super().launch(optimizer, loss, device)
        self.plan(optimizer)
        self._sliced = [self._reduce_slice(piece) for piece in self.slices.values()]
        self._reduced = [self._reduce_run(run) for run in self.runs]

    def _reduce_run(self, run: Run):
        grads = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in run.params]
        if run.stacked:
            stack = grads[0].new_zeros((self.world * run.chunk,) + tuple(grads[0].shape))
            for g, slot in zip(grads, run.slot):
                stack[slot].copy_(g)
            out = stack.new_empty((run.chunk,) + tuple(grads[0].shape))
            return run, out, [_reduce_scatter(out, stack, self.group)]
        bufs = [g.clone() for g in grads]
        works = [dist.reduce(b, dst=self._global_rank(owner), op=dist.ReduceOp.SUM, group=self.group,
                             async_op=True) for b, owner in zip(bufs, run.owner)]
        return run, bufs, works

    def _reduce_slice(self, piece: Slice):
        p = piece.p
        flat = p.new_zeros(self.world * piece.length)
        if p.grad is not None:
            flat[:p.numel()].copy_(p.grad.detach().reshape(-1))
        out = flat.new_empty(piece.length)
        return piece, out, _reduce_scatter(out, flat, self.group)

    def wait(self, optimizer, compute: Callable) -> None:
        """Phase 2: the owners' averaged gradients into ``p.grad``; the sliced parameters' AdamW step on this
        rank's elements (``compute``: the optimizer's functional step) and the launch of their all-gathers,
        which run while the optimizer computes the rest."""
        for run, out, works in self._reduced:
            for work in works:
                work.wait()
            for i, p in enumerate(run.params):
                if run.owner[i] == self.rank and p.grad is not None:
                    summed = out[run.local(i)] if run.stacked else out[i]
                    p.grad.copy_(summed.div_(self.world))
        stacks = []
        for piece, out, work in self._sliced:
            work.wait()
            if piece.p.grad is not None and piece.hi > piece.lo:
                stacks.append(self._slice_stack(optimizer, piece, out[:piece.hi - piece.lo].div_(self.world)))
        if stacks:
            compute(stacks)
        self._gathers = [self._gather_slice(piece) for piece, _, _ in self._sliced]
        self._reduced, self._sliced = [], []

    def _slice_stack(self, optimizer, piece: Slice, grad: torch.Tensor) -> Stack:
        """This rank's elements of a sliced AdamW parameter as a one-parameter stack of views."""
        mine = piece.mine(piece.p.detach())
        state = optimizer.state[piece.p]
        if not state:
            state.update(R.new_adamw_state(mine))
        return Stack([mine], [grad], [state], AdamWHyper.of(piece.group))

    def _gather_slice(self, piece: Slice):
        p = piece.p
        padded = p.new_zeros(piece.length)
        padded[:piece.hi - piece.lo].copy_(piece.mine(p.detach()))
        gathered = p.new_empty(self.world * piece.length)
        return piece, gathered, _all_gather(gathered, padded, self.group)

    def gather(self, optimizer) -> None:
        """Phase 3: wait for the slices' all-gathers; launch every run's all-gather (or broadcasts), wait,
        copy back."""
        for piece, gathered, work in self._gathers:
            work.wait()
            piece.p.detach().reshape(-1).copy_(gathered[:piece.p.numel()])  # (the owner's own part: unchanged)
        self._gathers = []
        launched = [self._gather_run(run) for run in self.runs]
        for run, out, works in launched:
            for work in works:
                work.wait()
            if out is None:
                continue
            for i, p in enumerate(run.params):
                if run.owner[i] != self.rank:
                    p.detach().copy_(out[run.slot[i]])

    def _gather_run(self, run: Run):
        if not run.stacked:
            return run, None, [dist.broadcast(p.detach(), src=self._global_rank(owner), group=self.group,
                                              async_op=True) for p, owner in zip(run.params, run.owner)]
        shape = tuple(run.params[0].shape)
        mine = run.params[0].new_zeros((run.chunk,) + shape)
        for i, p in enumerate(run.params):
            if run.owner[i] == self.rank:
                mine[run.local(i)].copy_(p.detach())
        out = mine.new_empty((self.world * run.chunk,) + shape)
        return run, out, [_all_gather(out, mine, self.group)]

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


class Auto(Sync):
    """``distributed="auto"`` on more than one rank: the first step's fingerprint picks the mode — identical
    gradients on every rank (DDP has averaged them) → :class:`Replicated`, else → :class:`Zero2` — and every
    call after goes to it. Before the first step nothing is sharded (a loaded state is complete on every
    rank; zero2 then drops what this rank does not own)."""

    mode = "auto"

    def __init__(self, group=None):
        super().__init__(group)
        self.chosen: Sync | None = None

    def launch(self, optimizer, loss, device) -> None:
        if self.chosen is None:
            identical = self.fingerprint(optimizer, loss is not None, device)
            self.chosen = (Replicated if identical else Zero2)(self.group)
            self.chosen.checked = True
            self.chosen.drop_unowned(optimizer)
        self.chosen.launch(optimizer, loss, device)

    def averaged_loss(self) -> torch.Tensor:
        return self.chosen.averaged_loss()

    def wait(self, optimizer, compute: Callable) -> None:
        self.chosen.wait(optimizer, compute)

    def owns(self, p: torch.Tensor) -> bool:
        return self.chosen.owns(p)

    def gather(self, optimizer) -> None:
        self.chosen.gather(optimizer)

    def gather_state(self, optimizer, state_dict: dict) -> dict:
        return state_dict if self.chosen is None else self.chosen.gather_state(optimizer, state_dict)

    def drop_unowned(self, optimizer) -> None:
        if self.chosen is not None:
            self.chosen.drop_unowned(optimizer)


def _all_params(optimizer) -> list[torch.Tensor]:
    """The optimizer's parameters in state_dict id order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def state_bytes(optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors on this rank (views counted by their size; a
    DTensor, under FSDP2, by its local shard)."""
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for v in s.values()
               if torch.is_tensor(v) for t in [getattr(v, "_local_tensor", v)])
