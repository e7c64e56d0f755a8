"""``TorchBrain`` (any torch optimizer) and ``FusedGateBrain`` (a FusedGate base): the OptBrain's torch modes.

TorchBrain applies the knobs through the *generic mechanism* (``fusedgate.brain.optbrain``): the
group's lr × scale for the base step, its gradient clipped to τ = m̂·c/(1−c), its update smoothed by
dampen. Per step it only copies the loss into a device buffer (nothing at all once the gate has ended
the policy, or while frozen: then it neither senses nor learns — until the warmdown phase, where it
copies the loss again but senses no features), and in the lr ladder's windows at 2ℓ (if it is on)
reads it (one host read per step, at most ``ladder``·``ladder_pairs`` windows a run: a blow-up stops
the ladder at that step); once per window the knobs become a
*plan* (lr factors, clip ratios, dampen groups) so the per-step path is a few list looks, and ``None``
when nothing is to be done (then the step is the base's own step).

FusedGateBrain hands the knobs of FusedGate's gated groups to FusedGate's keys ``gate_scale``,
``gate_clip`` and ``gate_dampen`` (host floats, once per window), and keeps the generic mechanism for
the rest: groups FusedGate runs as AdamW, clip when the spec's clip is off at both poles, and dampen
when the spec is inert (shifting its gate changes nothing).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fusedgate.brain.config import BrainConfig, BrainError
from fusedgate.brain.features import clip_ratio
from fusedgate.brain.optbrain import OptBrain
from fusedgate.brain.torch_features import TorchFeatures, mean_over_ranks_

NEUTRAL = (1.0, 1.0, 0.0)


def ranks_to_average(sync_ranks: bool, process_group):
    """The process group whose ranks the brain averages its numbers over: ``process_group`` (None: the default
    group) when ``sync_ranks`` and torch.distributed runs with more than one rank there; else None."""
    import torch.distributed as dist

    if not isinstance(sync_ranks, bool):
        raise BrainError(f"sync_ranks must be True or False, got {sync_ranks!r}")
    if not (sync_ranks and dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def check_loss(loss) -> None:
    """A real number or a one-element real tensor (NaN/inf are accepted: the learner skips them)."""
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1 or not (loss.is_floating_point() or loss.dtype in (torch.int32, torch.int64)):
            raise BrainError(f"loss must be a 0-d numeric tensor, got shape {tuple(loss.shape)} {loss.dtype}")
    elif isinstance(loss, bool) or not isinstance(loss, (int, float)):
        raise BrainError(f"loss must be a float or a 0-d tensor, got {type(loss).__name__}")


def features_of(groups: list[list[torch.Tensor]], config: BrainConfig) -> TorchFeatures:
    """The features of the base's param groups: ``ShardedFeatures`` over FSDP2 (DTensor) parameters, else
    ``TorchFeatures``."""
    args = (groups, config.window, config.sketch_size, config.seed)
    if all(type(p.detach()) is torch.Tensor for group in groups for p in group):
        return TorchFeatures(*args)
    from fusedgate.brain.sharded_features import ShardedFeatures, is_sharded

    return (ShardedFeatures if is_sharded([p for group in groups for p in group]) else TorchFeatures)(*args)


class TorchBrain(OptBrain):
    """``OptBrain(torch_optimizer, **knobs)``: the knobs through the generic mechanism."""

    mode = "torch"

    def __init__(self, base_optimizer, n_groups: int | None = None, *, config: BrainConfig | None = None,
                 sync_ranks: bool = True, process_group=None, **knobs):
        if not (hasattr(base_optimizer, "step") and hasattr(base_optimizer, "param_groups")):
            raise BrainError(f"base_optimizer must be a torch optimizer (with step and param_groups), "
                             f"got {type(base_optimizer).__name__}")
        groups = base_optimizer.param_groups
        if n_groups is not None and n_groups != len(groups):
            raise BrainError(f"n_groups={n_groups} but the optimizer has {len(groups)} param groups")
        config = self._complete(BrainConfig.from_kwargs(config, **knobs), base_optimizer)
        self.base = base_optimizer
        self._init_learner(len(groups), config)
        self.features = features_of([list(g["params"]) for g in groups], config)
        self._dampen_buf: dict[int, list] = {}       # group -> per-param smoothed update u
        self._dampen_valid = np.zeros(self.n_groups, dtype=bool)
        self._generic = np.ones((self.n_groups, 3), dtype=bool)   # (group, knob) -> the generic mechanism?
        self._plan = None                                          # neutral knobs: the generic mechanism idles
        self._ranks = self._ranks_of(sync_ranks, process_group)

    def _ranks_of(self, sync_ranks: bool, process_group):
        """The ranks to average over (``ranks_to_average``); over FSDP2 parameters the mesh's by default, and
        never none: a rank's brain alone would take collectives the others do not."""
        if not self.features.sharded:
            return ranks_to_average(sync_ranks, process_group)
        if sync_ranks is False and self.features.world > 1:
            raise BrainError("sync_ranks=False cannot hold over FSDP2 parameters: the ranks share each "
                             "parameter, so they must decide the same knobs")
        return ranks_to_average(sync_ranks, process_group if process_group is not None else self.features.group)

    def _complete(self, config: BrainConfig, base) -> BrainConfig:
        return config

    # ---- the torch optimizer's face ------------------------------------------------------------------
    @property
    def param_groups(self):
        return self.base.param_groups

    @property
    def state(self):
        return self.base.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name):
        # Anything else (defaults, add_param_group, …) is the base optimizer's.
        if name.startswith("_") or "base" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["base"], name)

    def step(self, closure=None, loss=None):
        """One step of the base optimizer under the current knobs. ``loss``: float or 0-d tensor (or a
        closure that returns it; it is evaluated once, before the update). Returns the loss."""
        if closure is not None:
            with torch.enable_grad():
                closure_loss = closure()
            loss = closure_loss if loss is None else loss
        if loss is None:
            raise BrainError("OptBrain.step needs loss=... (a float or a 0-d tensor)")
        check_loss(loss)
        if len(self.base.param_groups) != self.n_groups:
            raise BrainError(f"the optimizer now has {len(self.base.param_groups)} param groups, the brain was "
                             f"built for {self.n_groups}; wrap the optimizer after adding groups")
        learning = self.learning               # ended or frozen: no sensing, no windows (the knobs stay)
        k = self.step_count % self.window
        if learning:
            self.features.record_loss(k, loss)
            if self.core.guard < math.inf and self.core.guarded_step(self._rank_mean(loss)):   # a guarded window
                self._knobs_changed()
        else:
            self.features.new_step()
        if k == self.window - 1:
            if self.sensing:
                self.features.sense()
            elif self.frozen:                  # its running norm m̂, for a clip that freeze() may set
                self.features.grad_norms()
        if self._plan is None:                 # nothing for the generic mechanism to do this window
            self._base_step(loss)
        else:
            self._generic_step(loss, self._plan)
        self.features.end_step()
        self.step_count += 1
        if learning and self.step_count % self.window == 0:
            if self._ranks is not None:
                self.features.average_over(self._ranks)
            self._end_window(*self.features.read_window())
        return loss

    def _rank_mean(self, loss) -> float:
        """The step's loss as a float (a host read), averaged over the ranks when there are several."""
        if self._ranks is None:
            return float(loss)
        value = torch.tensor([float(loss)], dtype=torch.float64, device=self.features.device)
        return float(mean_over_ranks_(value, self._ranks))

    def _base_step(self, loss) -> None:
        self.base.step()

    # ---- the generic mechanism -----------------------------------------------------------------------
    def _knobs_changed(self) -> None:
        self._make_plan()

    def _make_plan(self) -> None:
        """Turn the window's knobs into what the generic mechanism does on each of its steps (once per
        window): lr factors, clip ratios, dampen groups; ``None`` when it has nothing to do."""
        knobs = np.where(self._generic, self.core.decisions, np.broadcast_to(NEUTRAL, self._generic.shape)).tolist()
        scaled = [(g, s) for g, (s, _, _) in enumerate(knobs) if s != 1.0]
        ratios = [clip_ratio(c) for _, c, _ in knobs]
        damped = [(g, d) for g, (_, _, d) in enumerate(knobs) if d > 0.0]
        for g, (_, _, d) in enumerate(knobs):
            if d <= 0.0 and g in self._dampen_buf:   # the smoothing restarts when dampen turns on again
                self._dampen_valid[g] = False
                del self._dampen_buf[g]
        clip = np.array(ratios) if any(r < math.inf for r in ratios) else None
        if clip is not None:
            self.features.plan_clip(clip)
        self._plan = (scaled, clip, damped) if scaled or clip is not None or damped else None

    def _generic_step(self, loss, plan) -> None:
        """The base step, with the knobs applied to every group the generic mechanism drives."""
        scaled, clip, damped = plan
        if clip is not None:
            self.features.clip_(clip)
        before = {g: [p.clone() for p in self.features.group_values(g)] for g, _ in damped}
        groups = self.base.param_groups
        saved = []
        try:
            for g, s in scaled:
                saved.append((groups[g], groups[g]["lr"]))
                groups[g]["lr"] = groups[g]["lr"] * s
            self._base_step(loss)
        finally:
            for group, lr in saved:
                group["lr"] = lr
        for g, d in damped:
            self._dampen(g, d, before[g])

    def _dampen(self, g: int, d: float, before: list[torch.Tensor]) -> None:
        """u ← u + (1−d)(Δ − u), params ← before + u, with Δ the base's update (in place).
        Three passes over the group after the step: Δ into the params, u, then before + u into the params."""
        params = self.features.group_values(g)
        if self._dampen_valid[g]:
            buf = self._dampen_buf[g]
            torch._foreach_sub_(params, before)
            torch._foreach_lerp_(buf, params, 1.0 - d)
            for p, b, u in zip(params, before, buf):   # no foreach form with out=: one pass, not add_ + copy_
                torch.add(b, u, out=p)
        else:                                  # first damped step: u = Δ, params untouched
            self._dampen_buf[g] = torch._foreach_sub(params, before)
            self._dampen_valid[g] = True

    # ---- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The base optimizer's state dict plus ``"optbrain"``: the brain's arrays as tensors."""
        from fusedgate.brain.state_io import snapshot_arrays

        sd = dict(self.base.state_dict())
        sd["optbrain"] = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in snapshot_arrays(self).items()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        from fusedgate.brain.state_io import restore_arrays

        sd = dict(state_dict)
        arrays = sd.pop("optbrain", None)
        self.base.load_state_dict(sd)
        if arrays is not None:
            restore_arrays(self, {k: v.detach().cpu().numpy() for k, v in arrays.items()}, "state_dict")

    def mode_arrays(self) -> dict[str, np.ndarray]:
        out = {"dampen_valid": self._dampen_valid.copy()}
        for g, buf in self._dampen_buf.items():
            if self._dampen_valid[g]:
                for i, t in enumerate(buf):
                    t = t.detach().cpu()
                    out[f"dampen_buf.{g}.{i}"] = (t if t.dtype in (torch.float64, torch.float32)
                                                  else t.float()).numpy().copy()
        return out

    def check_mode_arrays(self, arrays: dict[str, np.ndarray], source: str) -> None:
        numel = self.features.numel
        if not np.array_equal(arrays["feat.numel"], numel):
            raise BrainError(f"{source}: group sizes {arrays['feat.numel'].tolist()} do not match this "
                             f"optimizer's {numel.tolist()}")
        count, weight, ema = arrays["feat.norm_count"], arrays["feat.norm_weight"], arrays["feat.norm_ema"]
        if np.any(count < 0) or not np.all((weight >= 0) & (weight <= 1)) or not np.all(np.isfinite(ema) & (ema >= 0)) \
                or not np.array_equal(count > 0, weight > 0):
            raise BrainError(f"{source}: the running gradient norms (feat.norm_*) are corrupt")
        for g in np.nonzero(arrays["dampen_valid"])[0]:
            for i, p in enumerate(self.features.group_values(g)):
                buf = arrays.get(f"dampen_buf.{g}.{i}")
                if buf is None or buf.shape != tuple(p.shape):
                    raise BrainError(f"{source}: dampen buffer {g}.{i} is missing or has the wrong shape")
                if not np.all(np.isfinite(buf)):
                    raise BrainError(f"{source}: dampen buffer {g}.{i} is not finite")

    def restore_mode_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._dampen_valid = np.array(arrays["dampen_valid"], dtype=bool)
        self._dampen_buf = {}
        for g in np.nonzero(self._dampen_valid)[0]:
            params = self.features.group_values(g)
            self._dampen_buf[int(g)] = [torch.from_numpy(np.array(arrays[f"dampen_buf.{g}.{i}"])).to(
                device=p.device, dtype=p.dtype) for i, p in enumerate(params)]
        self._knobs_changed()

    # ---- numpy mode's API, refused --------------------------------------------------------------------
    def _numpy_only(self, what: str):
        raise BrainError(f"{what} is numpy mode only; a wrapped optimizer uses step(loss=...)")

    def get_decisions(self, loss):
        self._numpy_only("get_decisions")

    def record_grads(self, group, grad_flat, param_flat=None):
        self._numpy_only("record_grads")

    def finish_step(self):
        self._numpy_only("finish_step")

    def clip_threshold(self, group):
        self._numpy_only("clip_threshold")

    @property
    def needs_grads(self):
        self._numpy_only("needs_grads")


class FusedGateBrain(TorchBrain):
    """``OptBrain(fusedgate.FusedGate(...))``: gated groups' knobs through FusedGate's gate keys."""

    mode = "fusedgate"

    @staticmethod
    def accepts(optimizer) -> bool:
        try:
            from fusedgate.optimizer import FusedGate
        except ImportError:
            return False
        return isinstance(optimizer, FusedGate)

    def __init__(self, base_optimizer, n_groups: int | None = None, *, config: BrainConfig | None = None,
                 process_group=None, **knobs):
        if process_group is None:   # the ranks FusedGate itself was given, if any
            process_group = getattr(getattr(base_optimizer, "_sync", None), "group", None)
        super().__init__(base_optimizer, n_groups, config=config, process_group=process_group, **knobs)
        spec = base_optimizer.spec
        self._gate_group = np.array([any(base_optimizer.is_gated(g, i, p) for i, p in enumerate(g["params"]))
                                     for g in base_optimizer.param_groups], dtype=bool)
        # the knobs FusedGate applies itself (scale, clip, dampen) on a gated group; the rest stay generic
        via_gate = np.array([True, min(spec.aggressive.clip, spec.conservative.clip) < math.inf, not spec.is_inert])
        self._generic = ~(self._gate_group[:, None] & via_gate[None, :])

    def _complete(self, config: BrainConfig, base) -> BrainConfig:
        return config if config.total_steps else BrainConfig.from_kwargs(config, total_steps=base.total_steps)

    def _base_step(self, loss) -> None:
        self.base.step(loss=loss)

    def _knobs_changed(self) -> None:
        self._write_gate_keys()
        self._make_plan()

    def _write_gate_keys(self) -> None:
        """Hand the knobs of gated groups to FusedGate (host floats, no device sync)."""
        for group, gated, knobs, generic in zip(self.base.param_groups, self._gate_group, self.core.decisions,
                                                self._generic):
            if gated:
                s, c, d = np.where(generic, NEUTRAL, knobs)
                group["gate_scale"], group["gate_clip"], group["gate_dampen"] = float(s), float(c), float(d)
