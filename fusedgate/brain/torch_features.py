"""The torch side of the OptBrain's features: the seven of ``fusedgate.brain.features`` computed on the
parameters' device once per window, and read back with one host sync per window.

Cost model (why it is built this way): a step of the base optimizer is a few passes over the
parameters; anything the brain adds *per step* is paid on every step. So per step it only
copy the loss into a K-slot buffer on the device (one tiny kernel, no sync); the features are measured on one step per
window (the window's last) while the brain learns, and the group gradient norms on every step only while
the clip knob is on (the clip needs them). Every read here is a read: gradients and parameters are only gathered,
normed and copied from, so a neutral brain leaves the base optimizer's trajectory bit-identical.
``clip_`` is the one writer: it scales a group's gradients by min(1, τ/‖g‖), τ = m̂·c/(1−c).
"""

from __future__ import annotations

import numpy as np
import torch

from fusedgate.brain.config import BrainError
from fusedgate.brain.features import NORM_BETA, TINY, sketch_indices
from fusedgate.brain.policy import N_GROUP_FEATURES


class TorchFeatures:
    """The features of torch param groups. Per step: ``record_loss``; on the window's last step
    ``sense`` (before the update); ``clip_`` while clipping; ``read_window`` every K steps."""

    def __init__(self, groups: list[list[torch.Tensor]], window: int, sketch_size: int, seed: int):
        params = [p for group in groups for p in group]
        if not params:
            raise BrainError("the base optimizer has no parameters")
        devices = {p.device for p in params}
        if len(devices) != 1:
            raise BrainError(f"OptBrain needs all parameters on one device, got {sorted(map(str, devices))}")
        for gi, group in enumerate(groups):
            if not group or sum(p.numel() for p in group) == 0:
                raise BrainError(f"param group {gi} has no elements")
        self.device = params[0].device
        self.params = params
        self.n_groups, self.window, self.sketch_size = len(groups), window, sketch_size
        self.numel = np.array([sum(p.numel() for p in group) for group in groups], dtype=np.int64)
        group_of = [gi for gi, group in enumerate(groups) for _ in group]
        self.group_index = torch.tensor(group_of, device=self.device, dtype=torch.long)
        self.params_of_group = [[p for p, g in zip(params, group_of) if g == gi] for gi in range(len(groups))]
        # the sketch as one gather: flat offsets of the S coordinates of each group in a concatenation
        # of that group's tensors; per parameter, (local index, position in the (G·S) sketch)
        self._gather: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for gi, group in enumerate(groups):
            idx = sketch_indices(int(self.numel[gi]), sketch_size, seed, gi)
            offsets = np.cumsum([0] + [p.numel() for p in group])
            for pi in range(len(group)):
                mask = (idx >= offsets[pi]) & (idx < offsets[pi + 1])
                if not mask.any():
                    self._gather.append(None)
                    continue
                local = torch.tensor(idx[mask] - offsets[pi], device=self.device, dtype=torch.long)
                pos = torch.tensor(gi * sketch_size + np.nonzero(mask)[0], device=self.device, dtype=torch.long)
                self._gather.append((local, pos))
        g, s, dev = self.n_groups, sketch_size, self.device
        self.loss_buf = torch.full((window,), float("nan"), dtype=torch.float64, device=dev)
        self.feat = torch.zeros(g, N_GROUP_FEATURES, dtype=torch.float32, device=dev)
        self.prev_grad = torch.zeros(g, s, dtype=torch.float32, device=dev)
        self.prev_param = torch.zeros(g, s, dtype=torch.float32, device=dev)
        self.norm_ema = torch.zeros(g, dtype=torch.float32, device=dev)
        self.norm_count = 0
        self.has_prev = False
        self._present_cache: dict[tuple[bool, ...], torch.Tensor] = {}
        self._gnorm: torch.Tensor | None = None
        self._ratio_cache: tuple[bytes, torch.Tensor | None] = (b"", None)

    # ---- helpers --------------------------------------------------------------------------------
    def _sketch(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        out = torch.zeros(self.n_groups * self.sketch_size, dtype=torch.float32, device=self.device)
        for spec, t in zip(self._gather, tensors):
            if spec is not None and t is not None:
                out.index_copy_(0, spec[1], t.detach().reshape(-1).index_select(0, spec[0]).float())
        return out.view(self.n_groups, self.sketch_size)

    def _group_norms(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        present = tuple(t is not None for t in tensors)
        index = self._present_cache.get(present)
        if index is None:
            index = self.group_index[torch.tensor(present, device=self.device)]
            self._present_cache[present] = index
        out = torch.zeros(self.n_groups, dtype=torch.float32, device=self.device)
        kept = [t.detach() for t in tensors if t is not None]
        if kept:
            if any(t.is_sparse for t in kept):
                raise BrainError("OptBrain does not support sparse gradients")
            norms = torch._foreach_norm(kept)
            sq = torch.stack([n.float() for n in norms]).square()
            out.index_add_(0, index, sq)
        return out.sqrt()

    def running_norm(self) -> torch.Tensor:
        """m̂ per group (G,): bias-corrected EMA of the group grad norm over the measured steps."""
        if self.norm_count == 0:
            return torch.full_like(self.norm_ema, float("nan"))
        return self.norm_ema / (1.0 - NORM_BETA ** self.norm_count)

    # ---- per step ---------------------------------------------------------------------------------
    def new_step(self) -> None:
        """Start a step: this step's gradient norms are not measured yet."""
        self._gnorm = None

    def record_loss(self, k: int, loss) -> None:
        """Start a step and copy its loss into slot k of the window's buffer (on the device, no sync)."""
        self.new_step()
        if isinstance(loss, torch.Tensor):
            self.loss_buf[k].copy_(loss.detach().reshape(()))
        else:
            self.loss_buf[k].fill_(float(loss))

    def grad_norms(self) -> torch.Tensor:
        """This step's group gradient norms (G,), measured once per step on demand."""
        if self._gnorm is None:
            self._gnorm = self._group_norms([p.grad for p in self.params])
        return self._gnorm

    def sense(self) -> None:
        """Measure the seven features on this step (the window's last), before the update."""
        gnorm = self.grad_norms()
        pnorm = self._group_norms(list(self.params))
        gs = self._sketch([p.grad for p in self.params])
        ps = self._sketch(list(self.params))
        log_g = gnorm.clamp_min(TINY).log()
        zero = torch.zeros_like(gnorm)
        spike = log_g - self.running_norm().clamp_min(TINY).log() if self.norm_count else zero
        if self.has_prev:
            denom = gs.norm(dim=1) * self.prev_grad.norm(dim=1)
            dot = (gs * self.prev_grad).sum(dim=1)
            align = torch.where(denom > 0, dot / denom.clamp_min(TINY), zero)
            osc = ((gs.sign() * self.prev_grad.sign()) < 0).float().mean(dim=1)
            dp = ps - self.prev_param
            du = dp.norm(dim=1)
            ratio = du.clamp_min(TINY).log() - self.prev_param.norm(dim=1).clamp_min(TINY).log()
            denom = gs.norm(dim=1) * du
            over = torch.where(denom > 0, (gs * dp).sum(dim=1) / denom.clamp_min(TINY), zero)
        else:
            align = osc = ratio = over = zero
        torch.stack([log_g, spike, align, osc, ratio, over, pnorm.clamp_min(TINY).log()], dim=1, out=self.feat)
        self.prev_grad.copy_(gs)
        self.prev_param.copy_(ps)
        self.has_prev = True

    def clip_(self, ratios: np.ndarray) -> None:
        """Scale group g's gradients by min(1, m̂_g·ratios[g]/‖g‖) where ratios[g] is finite."""
        if self.norm_count == 0:
            return  # no running norm yet: nothing to clip against
        key = ratios.tobytes()
        if self._ratio_cache[0] != key:   # knobs change once per window: one upload per window, not per step
            self._ratio_cache = (key, torch.as_tensor(np.where(np.isfinite(ratios), ratios, 0.0),
                                                      dtype=torch.float32, device=self.device))
        factor = (self.running_norm() * self._ratio_cache[1] / self.grad_norms().clamp_min(TINY)).clamp_max(1.0)
        clipped = np.nonzero(np.isfinite(ratios))[0]
        if self.device.type == "cpu":   # reading the factors costs no sync here: a group at factor 1 is left alone
            clipped = clipped[~(factor.numpy()[clipped] >= 1.0)]   # (×1 is exact; NaN factors still multiply)
        for gi in clipped:
            grads = [p.grad for p in self.params_of_group[gi] if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, factor[gi])

    def end_step(self) -> None:
        """Fold this step's raw grad norm into m̂, if it was measured (sensed step or clipping)."""
        if self._gnorm is not None:
            self.norm_ema.mul_(NORM_BETA).add_(self._gnorm, alpha=1.0 - NORM_BETA)
            self.norm_count += 1
            self._gnorm = None

    def read_window(self) -> tuple[np.ndarray, np.ndarray]:
        """(losses (K,), features (G, 7)) of the finished window — the one host sync — and reset."""
        host = torch.cat([self.loss_buf, self.feat.double().flatten()]).cpu().numpy()
        return host[: self.window].copy(), host[self.window:].reshape(self.n_groups, N_GROUP_FEATURES)

    # ---- save / load ------------------------------------------------------------------------------
    TENSORS = ("loss_buf", "feat", "prev_grad", "prev_param", "norm_ema")
    SCALARS = ("norm_count", "has_prev")

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {name: getattr(self, name).detach().cpu().numpy().copy() for name in self.TENSORS}
        out.update({name: np.array(getattr(self, name)) for name in self.SCALARS})
        out["numel"] = self.numel.copy()
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for name in self.TENSORS:
            getattr(self, name).copy_(torch.from_numpy(np.asarray(arrays[name])))
        self.norm_count = int(arrays["norm_count"])
        self.has_prev = bool(arrays["has_prev"])
        self._gnorm = None
