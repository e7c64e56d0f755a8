"""The OptBrain's features over FSDP2-sharded parameters (``fully_shard``: DTensors, one ``Shard(0)`` on a
1-D mesh, the layout ``fusedgate.fsdp`` describes: rank r holds rows [r·c, min((r+1)·c, rows)), c = ⌈rows/N⌉).

Every quantity the learner reads is a property of the *whole* parameters, and each rank holds 1/N of them,
so each is a sum over the ranks of what a rank can compute from its own rows (one all-reduce SUM over the
mesh's group each, on the same calls on every rank):

* a group norm ‖x‖ = √(Σ_r Σ_{local} x²): the ranks' sums of squares, all-reduced, then the root;
* a sketch ŝ(x) — x at S fixed coordinates per group, drawn on the *whole* flat parameters exactly as the
  unsharded brain draws them (``sketch_indices`` over the group's global numel) — is Σ_r of a (G·S) vector
  in which rank r writes the coordinates that fall in its rows and 0 elsewhere;
* m̂, the running grad norm, is folded from those reduced norms, so it is the same on every rank already;
* the window's losses differ (each rank's own batch slice): they are averaged over the ranks, as on DDP.

So every rank reads the same features as one process over the gathered parameters would (up to the rounding
of the reductions' order), decides the same knobs, and applies them to its own rows: the lr factor to its
base step, the clip factor min(1, τ/‖g‖) (‖g‖ the whole group's) to its local gradient rows, and the dampen
to its local parameter rows (its buffer is the local rows too, so a checkpoint of it is per rank; without
the dampen every array of the brain's state is the same on every rank, and DCP can store it once).
Cost: the norms' all-reduce on every step that needs them (G floats: the sensed step and the clipping
groups'), and the two sketches' all-reduces of G·S floats once per window; nothing else communicates.
"""

from __future__ import annotations

import numpy as np
import torch

from fusedgate.brain.config import BrainError
from fusedgate.brain.features import sketch_indices
from fusedgate.brain.torch_features import TorchFeatures
from fusedgate.fsdp import Shards, check_placement, is_dtensor, local, mesh_of


def is_sharded(params: list[torch.Tensor]) -> bool:
    """Whether any of ``params`` is a DTensor (an FSDP2 parameter)."""
    return any(is_dtensor(p) for p in params)


class ShardedFeatures(TorchFeatures):
    """``TorchFeatures`` of FSDP2 parameters: the same features, of the whole parameters, on every rank."""

    sharded = True

    def __init__(self, groups: list[list[torch.Tensor]], window: int, sketch_size: int, seed: int):
        params = [p for group in groups for p in group]
        try:
            self.mesh = mesh_of(params)
            for p in params:
                check_placement(p)
        except TypeError as exc:
            raise BrainError(str(exc).replace("FusedGate", "OptBrain")) from None
        import torch.distributed as dist

        self.group = self.mesh.get_group()
        self.world, self.rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        super().__init__(groups, window, sketch_size, seed)

    def _check_kind(self, params: list[torch.Tensor]) -> None:
        """DTensors only, checked in ``__init__`` (one mesh, ``Shard(0)``, none plain)."""

    def _host_path(self, params: list[torch.Tensor]) -> bool:
        """Never: the reductions run on the tensors the collectives take."""
        return False

    # ---- the local rows ---------------------------------------------------------------------------------
    def grads(self) -> list[torch.Tensor | None]:
        return [None if p.grad is None else local(p.grad) for p in self.params]

    def values(self) -> list[torch.Tensor]:
        return [local(p.detach()) for p in self.params]

    def group_grads(self, gi: int) -> list[torch.Tensor]:
        return [local(p.grad) for p in self.params_of_group[gi] if p.grad is not None]

    def group_values(self, gi: int) -> list[torch.Tensor]:
        return [local(p.detach()) for p in self.params_of_group[gi]]

    def _sum_over_shards(self, squares: torch.Tensor) -> torch.Tensor:
        """The ranks' per-group sums of squares, summed over the mesh (one all-reduce of G floats)."""
        import torch.distributed as dist

        dist.all_reduce(squares, op=dist.ReduceOp.SUM, group=self.group)
        return squares

    # ---- the sketch ------------------------------------------------------------------------------------
    def _sketch_indices(self, group: list[torch.Tensor], gi: int, seed: int) -> list[tuple | None]:
        """Per parameter of group gi: (local flat indices, their positions in the (G·S) sketch) of the
        group's sketch coordinates that fall in this rank's rows, or None if it owns none of them."""
        idx = sketch_indices(int(self.numel[gi]), self.sketch_size, seed, gi)
        positions = gi * self.sketch_size + np.arange(idx.size)
        start = 0
        out = []
        for p in group:
            rows = p.shape[0]
            shards = Shards(rows, p.numel() // max(rows, 1), self.world)
            first = start + shards.offsets[self.rank] * shards.cols
            owned = (idx >= first) & (idx < first + shards.counts[self.rank] * shards.cols)
            start += p.numel()
            if not owned.any():
                out.append(None)
                continue
            out.append(tuple(torch.tensor(a, device=self.device, dtype=torch.long)
                             for a in (idx[owned] - first, positions[owned])))
        return out

    def _sketch(self, tensors: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """The (G·S) sketch of the whole ``tensors``: this rank's coordinates written into zeros, summed over
        the mesh (every coordinate is owned by exactly one rank; a missing tensor's coordinates are 0)."""
        import torch.distributed as dist

        out = torch.zeros(self.n_groups * self.sketch_size, dtype=torch.float32, device=self.device)
        for at, t in zip(self._sketch_at, tensors):
            if at is not None and t is not None:
                out[at[1]] = torch.take(t, at[0]).float()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return [out]

    @torch.no_grad()
    def average_over(self, group) -> None:
        """Average the window's losses over the ranks of ``group``; what was sensed is the whole parameters'
        on every rank already (reduced when measured)."""
        from fusedgate.brain.torch_features import mean_over_ranks_

        mean_over_ranks_(self.loss_buf, group)
