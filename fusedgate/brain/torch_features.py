"""The torch side of the OptBrain's features: what the seven of ``fusedgate.brain.features`` are computed
from is measured on the parameters' device once per window and read back with the window's one host sync;
the features themselves are then computed on the host, by the same ``sketch_features`` as in numpy mode.

Cost model (why it is built this way): a step of the base optimizer is a few passes over the parameters;
anything the brain adds *per step* is paid on every step. So per step it only copies the loss into a K-slot
buffer on the device (one tiny kernel, no sync). On one step per window (the window's last) while the brain
learns, ``sense`` measures the group norms of the gradients and the parameters, m̂ and the two S-coordinate
sketches into one device buffer (a few passes and one concatenation); on every other step only the gradient
norms of the groups whose clip knob is on (the clip needs them; the other groups' gradients are not read).

On the CPU (float32/float64 parameters: ``on_host``) a read costs no sync, and what costs is the number of
calls: right after a base step a small torch op costs ≈ 20 µs, a numpy call a few (cold caches). So there the same
buffers are numpy views of the same memory, and the small work is numpy's or plain floats: the loss written
from the host, the norms as BLAS dots, the sketches gathered, m̂ folded and the clip factors computed on the
host; only the clip's scaling is a torch op (it writes the gradients, and autograd's version counters must
see it). Both paths compute the same quantities (``tests/test_brain_numpy.py`` checks each against numpy mode).

Over FSDP2 shards ``ShardedFeatures`` (``sharded_features.py``) keeps all of this and changes only what a rank
holds: its rows (``grads``, ``values``), with the group norms' sums of squares and the sketches summed over the
mesh, so that every rank reads the whole parameters' features.

Every read here is a read: gradients and parameters are only gathered, normed and copied from, so a neutral
brain leaves the base optimizer's trajectory bit-identical. ``clip_`` is the one writer: it scales a group's
gradients by min(1, τ/‖g‖), τ = m̂·c/(1−c).
"""

from __future__ import annotations

import numpy as np
import torch

from fusedgate.brain.config import BrainError
from fusedgate.brain.features import NORM_BETA, TINY, sketch_features, sketch_indices
from fusedgate.brain.policy import N_GROUP_FEATURES


def mean_over_ranks_(buffer: torch.Tensor, group) -> torch.Tensor:
    """``buffer`` ← its mean over the ranks of the process group ``group`` (one all-reduce, in place)."""
    import torch.distributed as dist

    dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
    return buffer.div_(dist.get_world_size(group))


class TorchFeatures:
    """The features of torch param groups. Per step: ``record_loss``; on the window's last step
    ``sense`` (before the update); ``clip_`` while clipping; ``read_window`` every K steps."""

    sharded = False   # the parameters are whole here (``ShardedFeatures``: FSDP2 shards)

    def __init__(self, groups: list[list[torch.Tensor]], window: int, sketch_size: int, seed: int):
        params = [p for group in groups for p in group]
        if not params:
            raise BrainError("the base optimizer has no parameters")
        self._check_kind(params)
        devices = {p.device for p in params}
        if len(devices) != 1:
            raise BrainError(f"OptBrain needs all parameters on one device, got {sorted(map(str, devices))}")
        for gi, group in enumerate(groups):
            if not group or sum(p.numel() for p in group) == 0:
                raise BrainError(f"param group {gi} has no elements")
        self.device = dev = params[0].device
        self.params = params
        self.n_groups, self.window, self.sketch_size = len(groups), window, sketch_size
        g, s = self.n_groups, sketch_size
        self.numel = np.array([sum(p.numel() for p in group) for group in groups], dtype=np.int64)
        self._group_of = [gi for gi, group in enumerate(groups) for _ in group]
        self._all = tuple(range(g))
        self.params_of_group = [[p for p, gp in zip(params, self._group_of) if gp == gi] for gi in range(g)]
        self._sketch_at = [index for gi, group in enumerate(groups)
                           for index in self._sketch_indices(group, gi, seed)]
        # on the CPU, where a read costs no sync, the small reductions and the arithmetic on a few numbers are
        # numpy's, on views of the same memory: a numpy call costs a fraction of a torch op's dispatch (dtypes
        # numpy lacks, bfloat16, take the device path)
        self.on_host = self._host_path(params)
        self.loss_buf = torch.full((window,), float("nan"), dtype=torch.float64, device=dev)
        self._loss_host = self.loss_buf.numpy() if self.on_host else None
        self._sensed = torch.zeros(3 * g + 2 * g * s, dtype=torch.float32, device=dev)   # ‖g‖, ‖p‖, m̂, ŝ(g), ŝ(p)
        self._sensed_host = self._sensed.numpy() if self.on_host else None
        self._sketch_host = [None if i is None else i.numpy() for i in self._sketch_at] if self.on_host else None
        self._sensed_now = False
        # m̂ per group: an EMA of its measured norms and its bias correction 1 − β^n (the same EMA of 1s),
        # each folded only on the steps that group's norm is measured; n, the steps measured, on the host
        self.norm_ema = torch.zeros(g, dtype=torch.float32, device=dev)
        self.norm_weight = torch.zeros(g, dtype=torch.float32, device=dev)
        self.norm_count = np.zeros(g, dtype=np.int64)
        self._ema_host = self.norm_ema.numpy() if self.on_host else None
        self._weight_host = self.norm_weight.numpy() if self.on_host else None
        # on the host: the last sensed step's features and sketches (float32: the values are the tensors')
        self.feat = np.zeros((g, N_GROUP_FEATURES))
        self.prev_grad = np.zeros((g, s), dtype=np.float32)
        self.prev_param = np.zeros((g, s), dtype=np.float32)
        self.has_prev = False
        self._present_cache: dict[tuple[bool, ...], torch.Tensor] = {}
        self._gnorm: torch.Tensor | None = None
        self._measured: tuple[int, ...] = ()
        self._fold_cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._ratio_cache: tuple = (None, (), None)   # (the ratios array, its clipped groups, its device ratios)
        self._every_group_measured = False            # norm_count > 0 everywhere (from the first sensed step on)

    def _check_kind(self, params: list[torch.Tensor]) -> None:
        """Plain tensors only (FSDP2's DTensors are ``ShardedFeatures``'): a one-line BrainError otherwise."""
        other = [type(p.detach()).__name__ for p in params if type(p.detach()) is not torch.Tensor]
        if other:
            raise BrainError(f"OptBrain needs plain tensors (or FSDP2 DTensors) as parameters, got {other[0]}")

    def _host_path(self, params: list[torch.Tensor]) -> bool:
        """Whether the small work is numpy's (CPU, float32/float64 parameters; see the module docstring)."""
        return self.device.type == "cpu" and all(p.dtype in (torch.float32, torch.float64) for p in params)

    # ---- what is read and written: the tensors this process holds -------------------------------------
    def grads(self) -> list[torch.Tensor | None]:
        """The gradients of the parameters, in order (None where a parameter has none)."""
        return [p.grad for p in self.params]

    def values(self) -> list[torch.Tensor]:
        """The parameters' values, in order (detached: reads, and the dampen's in-place writes)."""
        return [p.detach() for p in self.params]

    def group_grads(self, gi: int) -> list[torch.Tensor]:
        """Group gi's gradients that exist (what the clip scales in place)."""
        return [p.grad for p in self.params_of_group[gi] if p.grad is not None]

    def group_values(self, gi: int) -> list[torch.Tensor]:
        """Group gi's parameter values (what the dampen reads and writes in place)."""
        return [p.detach() for p in self.params_of_group[gi]]

    def _sum_over_shards(self, squares: torch.Tensor) -> torch.Tensor:
        """Per-group sums of squares (G,) over the whole parameters: here they are whole already."""
        return squares

    def _sketch_indices(self, group: list[torch.Tensor], gi: int, seed: int) -> list[torch.Tensor | None]:
        """Per parameter of group gi, the local flat indices of its share of the group's S sketch coordinates
        (None if it holds none). The coordinates are sorted and the parameters in order, so concatenating
        the gathered pieces of every parameter gives the (G·S) sketch in order."""
        idx = sketch_indices(int(self.numel[gi]), self.sketch_size, seed, gi)
        offsets = np.cumsum([0] + [p.numel() for p in group])
        out = []
        for pi in range(len(group)):
            local = idx[(idx >= offsets[pi]) & (idx < offsets[pi + 1])] - offsets[pi]
            out.append(torch.tensor(local, device=self.device, dtype=torch.long) if local.size else None)
        return out

    # ---- helpers --------------------------------------------------------------------------------
    def _sketch(self, tensors: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """The pieces of the (G·S) sketch of ``tensors`` (the parameters or their gradients, in order), to
        be concatenated; a missing tensor's coordinates are 0."""
        pieces = [torch.take(t, at) if t is not None else torch.zeros(at.numel(), device=self.device)
                  for at, t in zip(self._sketch_at, tensors) if at is not None]
        return [x if x.dtype == torch.float32 else x.float() for x in pieces]

    def group_norms(self, tensors: list[torch.Tensor | None], groups: tuple[int, ...]) -> torch.Tensor:
        """(G,) float32, the L2 norm over each group's tensors, for the groups in ``groups`` (0 for the others):
        per tensor Σ x² (one ``_foreach_norm`` on the device), summed per group."""
        if self.on_host:
            return torch.from_numpy(self._group_norms_on_host(tensors, groups))
        present = self._present(tensors, groups)
        kept = [t for t, keep in zip(tensors, present) if keep]   # (callers run under no_grad)
        if any(t.is_sparse for t in kept):
            raise BrainError("OptBrain does not support sparse gradients")
        out = torch.zeros(self.n_groups, dtype=torch.float32, device=self.device)
        if kept:
            norms = torch._foreach_norm(kept)
            out.index_add_(0, self._norm_index(present),
                           torch.stack([n if n.dtype == torch.float32 else n.float() for n in norms]).square())
        return self._sum_over_shards(out).sqrt()

    def _group_norms_on_host(self, tensors: list[torch.Tensor | None], groups: tuple[int, ...]) -> np.ndarray:
        """``group_norms`` on the CPU: Σ x² per tensor by numpy (a BLAS dot: after a base step, half the time
        of ``_foreach_norm`` here), summed per group in float64."""
        chosen = set(groups)
        sq = [0.0] * self.n_groups
        for t, gi in zip(tensors, self._group_of):
            if t is not None and gi in chosen:
                if t.is_sparse:
                    raise BrainError("OptBrain does not support sparse gradients")
                flat = t.detach().numpy()
                sq[gi] += float(np.vdot(flat, flat))
        return np.sqrt(np.array(sq)).astype(np.float32)

    def _present(self, tensors: list[torch.Tensor | None], groups: tuple[int, ...]) -> tuple[bool, ...]:
        chosen = set(groups)
        return tuple(t is not None and g in chosen for t, g in zip(tensors, self._group_of))

    def _norm_index(self, present: tuple[bool, ...]) -> torch.Tensor:
        """The group of each tensor ``present`` marks, on the device: made (uploaded) once per pattern."""
        index = self._present_cache.get(present)
        if index is None:
            if len(self._present_cache) >= 64:
                self._present_cache.clear()
            index = torch.tensor([g for g, keep in zip(self._group_of, present) if keep], dtype=torch.long,
                                 device=self.device)
            self._present_cache[present] = index
        return index

    def running_norm(self) -> torch.Tensor:
        """m̂ per group (G,): bias-corrected EMA of the group grad norm over its measured steps (0/0 = NaN
        for a group not measured yet)."""
        return self.norm_ema / self.norm_weight

    # ---- per step ---------------------------------------------------------------------------------
    def new_step(self) -> None:
        """Start a step: this step's gradient norms are not measured yet."""
        self._gnorm = None

    def record_loss(self, k: int, loss) -> None:
        """Start a step and copy its loss into slot k of the window's buffer (on the device, no sync; on the
        CPU, where a read costs no sync, a host write instead of a kernel)."""
        self.new_step()
        if self.on_host:
            self._loss_host[k] = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
        elif isinstance(loss, torch.Tensor):
            self.loss_buf[k].copy_(loss.detach().reshape(()))
        else:
            self.loss_buf[k].fill_(float(loss))

    @torch.no_grad()
    def grad_norms(self, groups: tuple[int, ...] | None = None) -> torch.Tensor:
        """This step's gradient norms (G,) of ``groups`` (default: every group; 0 for the others), measured
        once per step on demand; asked for a group not measured yet, it measures the union again."""
        wanted = self._all if groups is None else tuple(groups)
        if self._gnorm is None or not set(wanted) <= set(self._measured):
            if self._gnorm is not None:
                wanted = tuple(sorted(set(wanted) | set(self._measured)))
            self._gnorm = self.group_norms(self.grads(), wanted)
            self._measured = wanted
        return self._gnorm

    @torch.no_grad()
    def sense(self) -> None:
        """Measure what the window's features are computed from, on this step (the window's last) before the
        update: ‖g‖, ‖p‖ and m̂ per group and the sketches ŝ(g), ŝ(p), into one device buffer."""
        grads, values = self.grads(), self.values()
        if self.on_host:
            self._sense_on_host(grads, values)
        else:
            pieces = [self.grad_norms(), self.group_norms(values, self._all), self.running_norm(),
                      *self._sketch(grads), *self._sketch(values)]
            torch.cat(pieces, out=self._sensed)
        self._sensed_now = True

    def _sense_on_host(self, grads: list[torch.Tensor | None], values: list[torch.Tensor]) -> None:
        """``sense`` on the CPU: the same buffer, written by numpy through its view."""
        g, gs = self.n_groups, self.n_groups * self.sketch_size
        out = self._sensed_host
        out[:g] = self.grad_norms().numpy()
        out[g:2 * g] = self.group_norms(values, self._all).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):   # 0/0: NaN, a group not measured yet
            out[2 * g:3 * g] = self._ema_host / self._weight_host
        for tensors, at in ((grads, 3 * g), (values, 3 * g + gs)):
            out[at:at + gs] = np.concatenate(
                [t.detach().numpy().reshape(-1)[i] if t is not None else np.zeros(i.size, np.float32)
                 for i, t in zip(self._sketch_host, tensors) if i is not None])

    @torch.no_grad()
    def clip_(self, ratios: np.ndarray) -> None:
        """Scale group g's gradients by min(1, m̂_g·ratios[g]/‖g‖) where ratios[g] is finite and m̂_g exists
        (a group without one has nothing to clip against); only those groups' gradients are normed.
        ``ratios``: one window's array, not changed in place (what is derived from it is kept for the window)."""
        clipped, ratio = self._clip_plan(ratios)
        if not self._every_group_measured:
            clipped = tuple(g for g in clipped if self.norm_count[g] > 0)
        if not clipped:
            return
        if self.on_host:
            self._clip_on_host(clipped, ratios)
            return
        factor = (self.running_norm() * ratio / self.grad_norms(clipped).clamp_min(TINY)).clamp_max(1.0)
        for gi in clipped:
            grads = self.group_grads(gi)
            if grads:
                torch._foreach_mul_(grads, factor[gi])

    def _clip_on_host(self, clipped: tuple[int, ...], ratios: np.ndarray) -> None:
        """``clip_`` on the CPU: the factors are host floats, and a group at factor 1 is left alone (×1 is
        exact, so only the writes are saved; a NaN factor still multiplies)."""
        gnorm = self.grad_norms(clipped).numpy()
        for gi in clipped:
            m = float(self._ema_host[gi]) / float(self._weight_host[gi])
            factor = m * float(ratios[gi]) / max(float(gnorm[gi]), TINY)   # (max keeps a NaN norm NaN)
            grads = self.group_grads(gi)
            if grads and not factor >= 1.0:
                torch._foreach_mul_(grads, factor)

    def plan_clip(self, ratios: np.ndarray) -> None:
        """Derive what ``clip_`` needs for a window's ``ratios`` now (at the window's end, beside its one host
        sync): the groups with a finite ratio, the ratios on the device (0 for the others) and the EMA factors
        for folding those groups' norms — so that no step of the window uploads anything."""
        finite = np.isfinite(ratios)
        clipped = tuple(int(g) for g in np.nonzero(finite)[0])
        device_ratios = None if self.on_host else torch.as_tensor(np.where(finite, ratios, 0.0),
                                                                 dtype=torch.float32, device=self.device)
        self._ratio_cache = (ratios, clipped, device_ratios)
        if clipped and not self.on_host:
            self._fold_factors(clipped)
            self._norm_index(self._present(self.grads(), clipped))   # the gradients there now

    def _clip_plan(self, ratios: np.ndarray) -> tuple[tuple[int, ...], torch.Tensor]:
        """(the groups with a finite ratio, their device ratios) of ``ratios``, planned once per array."""
        if self._ratio_cache[0] is not ratios:
            self.plan_clip(ratios)
        return self._ratio_cache[1], self._ratio_cache[2]

    def end_step(self) -> None:
        """Fold this step's raw grad norms into m̂, for the groups measured (all on a sensed step, the
        clipping ones otherwise): m ← β·m + (1 − β)·‖g‖ and w ← β·w + (1 − β) there, m̂ = m/w."""
        if self._gnorm is None:
            return
        if self.on_host:                     # numpy scalars on the arrays' memory: their own float32 precision
            ema, weight, gnorm = self._ema_host, self._weight_host, self._gnorm.numpy()
            for gi in self._measured:
                ema[gi] = NORM_BETA * ema[gi] + (1.0 - NORM_BETA) * gnorm[gi]
                weight[gi] = NORM_BETA * weight[gi] + (1.0 - NORM_BETA)
        elif self._measured == self._all:
            self.norm_ema.mul_(NORM_BETA).add_(self._gnorm, alpha=1.0 - NORM_BETA)
            self.norm_weight.mul_(NORM_BETA).add_(1.0 - NORM_BETA)
        else:                                # β_g = β on the measured groups, 1 (unchanged) on the rest
            beta, rest = self._fold_factors(self._measured)
            self.norm_ema.mul_(beta).addcmul_(self._gnorm, rest)
            self.norm_weight.mul_(beta).add_(rest)
        for gi in self._measured:
            self.norm_count[gi] += 1
        self._every_group_measured = self._every_group_measured or self._measured == self._all
        self._gnorm = None

    def _fold_factors(self, groups: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(β_g, 1 − β_g) on the device for a set of measured groups; uploaded once per set (the clip's
        groups change at most once per window)."""
        factors = self._fold_cache.get(groups)
        if factors is None:
            if len(self._fold_cache) >= 16:
                self._fold_cache.clear()
            beta, rest = torch.ones(self.n_groups, dtype=torch.float32), torch.zeros(self.n_groups, dtype=torch.float32)
            beta[list(groups)], rest[list(groups)] = NORM_BETA, 1.0 - NORM_BETA
            factors = (beta.to(self.device), rest.to(self.device))
            self._fold_cache[groups] = factors
        return factors

    @torch.no_grad()
    def average_over(self, group) -> None:
        """Average the window's losses (and, if this window was sensed, what was sensed) over the ranks of the
        process group ``group``, in place: one all-reduce each, so that every rank's learner reads the same
        numbers (under DDP the sensed values agree already, up to rounding; with gradients averaged inside
        the base step, as ZeRO-2 does, they are the ranks' mean)."""
        for buffer in (self.loss_buf, self._sensed) if self._sensed_now else (self.loss_buf,):
            mean_over_ranks_(buffer, group)

    def read_window(self) -> tuple[np.ndarray, np.ndarray]:
        """(losses (K,), features (G, 7)) of the finished window — the one host sync. The features are the
        window's sensed step's (``sketch_features`` on the host), or the last ones if it sensed none."""
        if not self._sensed_now:
            return self.loss_buf.cpu().numpy().copy(), self.feat.copy()
        if self.on_host:
            losses, sensed = self._loss_host.copy(), self._sensed_host.astype(np.float64)
        else:
            host = torch.cat([self.loss_buf, self._sensed.double()]).cpu().numpy()
            losses, sensed = host[:self.window].copy(), host[self.window:]
        g, s = self.n_groups, self.sketch_size
        gnorm, pnorm, m_prev = sensed[:g], sensed[g:2 * g], sensed[2 * g:3 * g]
        gs, ps = sensed[3 * g:].reshape(2, g, s)
        prev_gs, prev_ps = (self.prev_grad, self.prev_param) if self.has_prev else (None, None)
        self.feat = sketch_features(gnorm, m_prev, gs, prev_gs, ps, prev_ps, pnorm)
        self.prev_grad, self.prev_param = gs.astype(np.float32), ps.astype(np.float32)
        self.has_prev, self._sensed_now = True, False
        return losses, self.feat.copy()

    # ---- save / load ------------------------------------------------------------------------------
    TENSORS = ("loss_buf", "norm_ema", "norm_weight")
    HOST = ("feat", "prev_grad", "prev_param", "norm_count", "has_prev")

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name).detach().cpu().numpy().copy() for name in self.TENSORS}
        out.update({name: np.array(getattr(self, name)) for name in self.HOST})
        out["numel"] = self.numel.copy()
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for name in self.TENSORS:
            getattr(self, name).copy_(torch.from_numpy(np.asarray(arrays[name])))
        self.feat = np.array(arrays["feat"], dtype=np.float64)
        self.prev_grad = np.array(arrays["prev_grad"], dtype=np.float32)
        self.prev_param = np.array(arrays["prev_param"], dtype=np.float32)
        self.norm_count = np.array(arrays["norm_count"], dtype=np.int64)
        self._every_group_measured = bool(self.norm_count.all())
        self.has_prev = bool(arrays["has_prev"])
        self._gnorm, self._sensed_now = None, False
