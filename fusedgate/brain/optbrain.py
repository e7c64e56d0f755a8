"""OptBrain: a tiny online learner that sets three knobs per parameter group of any optimizer.

    opt = OptBrain(torch.optim.AdamW(model.parameters(), lr=1e-3))
    loss.backward(); opt.step(loss=loss.detach()); opt.zero_grad()

Knobs per group, applied to the *update* of the base optimizer (so Adam's scale invariance cannot undo
them), each exactly the identity at its neutral value (1, 1, 0):

* **scale** s ∈ [0.01, 10]: the group's ``lr`` is multiplied by s for the base step, then restored
  (schedulers that set ``lr`` keep working). SGD and Adam updates are both proportional to lr.
* **clip** c ∈ [0.1, 5]: before the base step the group's gradient is scaled by min(1, τ/‖g‖) with
  τ = m̂·c/(1−c), m̂ the running (EMA, β=0.9) group grad norm; c ≥ 1 means no clipping. A spike
  guard the brain can tighten; see ``fusedgate.brain.sensors.clip_ratio``.
* **dampen** d ∈ [0, 1]: the applied update is smoothed, u_t = (1−d)·Δ_t + d·u_{t−1}, with Δ_t the
  base optimizer's own update. Memory: while d > 0 the group keeps one buffer u (1× its params) and a
  transient copy of its params during the step; at d = 0 nothing is kept and the buffer restarts.

When the base optimizer is a ``fusedgate.FusedGate`` the brain instead writes the group keys
``gate_scale`` (×update multiplier), ``gate_clip`` (×clip threshold) and ``gate_dampen`` (g → g·(1−d))
once per window, and FusedGate applies them on the device. Those keys act on FusedGate's *gated*
params only, so groups that FusedGate runs as plain AdamW (``kind='adamw'``, or no matrix inside) get
the generic mechanism above. Two knobs fall back to the generic mechanism on gated groups when the
spec would ignore them: clip when the spec's clip is off at both poles (×c of k = ∞ is still ∞), and
dampen when the spec is inert (equal poles: shifting the gate changes nothing), e.g. ``GateSpec.muon()``.

Learning (``fusedgate.brain.policy``): decisions are held for a window of K steps; the first
``warmup_windows`` windows are exactly neutral (the run is bit-identical to the base optimizer), then
cycles of three windows (+ε, −ε, neutral control) in random order train a linear Gaussian policy by
antithetic ES on the loss progress, and a guardrail shrinks the brain toward neutral whenever its
windows measure worse than the neutral ones. Host syncs: one per window (reading the K losses and the
features accumulated on the device), none per step (tested by counting tensor->host reads).
``OptBrain`` is not a ``torch.optim.Optimizer`` subclass: attach LR schedulers to the base optimizer.

Numpy mode, for any framework: ``OptBrain(None, n_groups=N)``; per step ``get_decisions(loss)`` ->
``{group: (scale, clip, dampen)}``, ``record_grads(group, grad_flat, param_flat=None)`` for each
group (only read when ``needs_grads``: the window's last step, or while clipping), then
``finish_step()``. Save/load: ``save(path)``/``load(path)`` write/read ``.npz`` without
pickle. Nothing is written anywhere else; there is no telemetry and no network.
"""

from __future__ import annotations

import math

import numpy as np

from fusedgate.brain.config import BrainConfig, BrainError
from fusedgate.brain.policy import KNOBS, BrainCore
from fusedgate.brain.sensors import NumpySensors, clip_ratio
from fusedgate.brain.state_io import read_npz, restore_arrays, snapshot_arrays, write_npz

__all__ = ["KNOBS", "BrainError", "OptBrain"]


def _is_fusedgate(optimizer) -> bool:
    try:
        from fusedgate.optimizer import FusedGate
    except ImportError:
        return False
    return isinstance(optimizer, FusedGate)


class OptBrain:
    """Wrap ``base_optimizer`` (any torch optimizer), or ``None`` with ``n_groups`` for numpy mode."""

    def __init__(self, base_optimizer=None, n_groups: int | None = None, *, config: BrainConfig | None = None,
                 **knobs):
        config = BrainConfig.from_kwargs(config, **knobs)
        sketch_size, seed = config.sketch_size, config.seed
        self.base = base_optimizer
        self.sketch_size, self.seed = sketch_size, seed
        if base_optimizer is None:
            if n_groups is None:
                raise BrainError("numpy mode (base_optimizer=None) needs n_groups=...")
            self.mode = "numpy"
        else:
            if not (hasattr(base_optimizer, "step") and hasattr(base_optimizer, "param_groups")):
                raise BrainError(f"base_optimizer must be a torch optimizer (with step and param_groups), "
                                 f"got {type(base_optimizer).__name__}")
            if n_groups is not None and n_groups != len(base_optimizer.param_groups):
                raise BrainError(f"n_groups={n_groups} but the optimizer has "
                                 f"{len(base_optimizer.param_groups)} param groups")
            n_groups = len(base_optimizer.param_groups)
            self.mode = "fusedgate" if _is_fusedgate(base_optimizer) else "torch"
        if not config.total_steps and self.mode == "fusedgate":
            config = BrainConfig.from_kwargs(config, total_steps=base_optimizer.total_steps)
        self.config = config
        self.core = BrainCore(n_groups, config)
        window = config.window
        self.n_groups, self.window = n_groups, window
        self.step_count = 0
        self.frozen = False
        if self.mode == "numpy":
            self.sensors = NumpySensors(n_groups, sketch_size, seed)
            self._losses = np.zeros(window)
            self._have_loss = False
        else:
            from fusedgate.brain.torch_sensors import TorchSensors

            groups = [list(g["params"]) for g in base_optimizer.param_groups]
            self.sensors = TorchSensors(groups, window, sketch_size, seed)
            self._dampen_buf: dict[int, list] = {}       # group -> per-param smoothed update u
            self._dampen_valid = np.zeros(n_groups, dtype=bool)
            # groups whose knobs go to FusedGate's gate keys; all others use the generic mechanism
            self._gate_group = np.array([self.mode == "fusedgate" and any(
                base_optimizer.is_gated(g, i, p) for i, p in enumerate(g["params"]))
                for g in base_optimizer.param_groups], dtype=bool)
            spec = getattr(base_optimizer, "spec", None)
            fg = self.mode == "fusedgate"
            # which knobs FusedGate applies itself (scale, clip, dampen); the rest stay generic
            self._via_gate = np.array([fg, fg and min(spec.aggressive.clip, spec.conservative.clip) < math.inf,
                                       fg and not spec.is_inert])
        self._plan = None                                  # neutral knobs: the generic mechanism idles

    # ---- decisions ----------------------------------------------------------------------------------
    @property
    def decisions(self) -> dict[int, tuple[float, float, float]]:
        """The knobs in force for the current window: {group: (scale, clip, dampen)}."""
        return {g: tuple(float(v) for v in self.core.decisions[g]) for g in range(self.n_groups)}

    def freeze(self, decisions: dict[int, tuple[float, float, float]] | None = None) -> None:
        """Stop learning and hold fixed knobs (default: the current ones) — for ablations and tests."""
        if decisions is not None:
            table = np.array(self.core.decisions, dtype=np.float64)
            for g, knobs in decisions.items():
                if not isinstance(g, int) or not 0 <= g < self.n_groups:
                    raise BrainError(f"freeze: group {g!r} is not in [0, {self.n_groups})")
                s, c, d = (float(v) for v in knobs)
                if not (0.01 <= s <= 10.0 and 0.1 <= c <= 5.0 and 0.0 <= d <= 1.0):
                    raise BrainError(f"freeze: knobs {knobs!r} outside scale [0.01,10], clip [0.1,5], "
                                     "dampen [0,1]")
                table[g] = (s, c, d)
            self.core.decisions = table
            self._write_gate_keys()
            self._make_plan()
        self.frozen = True

    def report(self) -> dict:
        """What the brain measured: cycles, trust α, mean advantage of its windows over neutral, …"""
        return {"steps": self.step_count, "mode": self.mode, **self.core.report()}

    def _end_window(self, losses: np.ndarray, feats: np.ndarray) -> None:
        if self.frozen:
            return
        self.core.reliability = np.minimum(self.sensors.numel, self.sketch_size) / self.sketch_size
        self.core.end_window(losses, feats)
        self._write_gate_keys()
        self._make_plan()

    def _write_gate_keys(self) -> None:
        """FusedGate mode: hand the knobs of gated groups to FusedGate (host floats, no device sync)."""
        if self.mode != "fusedgate":
            return
        for group, gated, (s, c, d) in zip(self.base.param_groups, self._gate_group, self.core.decisions):
            if gated:
                s, c, d = np.where(self._via_gate, (s, c, d), (1.0, 1.0, 0.0))
                group["gate_scale"], group["gate_clip"], group["gate_dampen"] = float(s), float(c), float(d)

    # ---- torch wrapper ------------------------------------------------------------------------------
    @property
    def param_groups(self):
        return self._torch_base("param_groups").param_groups

    @property
    def state(self):
        return self._torch_base("state").state

    def _torch_base(self, what: str):
        if self.base is None:
            raise BrainError(f"{what} needs a wrapped torch optimizer (this brain is in numpy mode)")
        return self.base

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._torch_base("zero_grad").zero_grad(set_to_none=set_to_none)

    def step(self, closure=None, loss=None):
        """One step of the base optimizer under the current knobs. ``loss``: float or 0-d tensor (or a
        closure that returns it; it is evaluated once, before the update). Returns the loss."""
        import torch

        base = self._torch_base("step")
        if closure is not None:
            with torch.enable_grad():
                closure_loss = closure()
            loss = closure_loss if loss is None else loss
        if loss is None:
            raise BrainError("OptBrain.step needs loss=... (a float or a 0-d tensor)")
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1 or not (loss.is_floating_point() or loss.dtype in (torch.int32, torch.int64)):
                raise BrainError(f"loss must be a 0-d numeric tensor, got shape {tuple(loss.shape)} {loss.dtype}")
        elif isinstance(loss, bool) or not isinstance(loss, (int, float)):
            raise BrainError(f"loss must be a float or a 0-d tensor, got {type(loss).__name__}")
        if len(base.param_groups) != self.n_groups:
            raise BrainError(f"the optimizer now has {len(base.param_groups)} param groups, the brain was built "
                             f"for {self.n_groups}; wrap the optimizer after adding groups")
        k = self.step_count % self.window
        self.sensors.record_loss(k, loss)
        if k == self.window - 1:
            self.sensors.sense()
        if self._plan is None:                 # nothing for the generic mechanism to do this window
            base.step(loss=loss) if self.mode == "fusedgate" else base.step()
        else:
            self._generic_step(base, loss, self._plan)
        self.sensors.end_step()
        self.step_count += 1
        if self.step_count % self.window == 0:
            self._end_window(*self.sensors.read_window())
        return loss

    def _make_plan(self) -> None:
        """Turn the window's knobs into what the generic mechanism does on each of its steps (once per
        window, so the per-step path is a few list looks): lr factors, clip ratios, dampen groups.
        ``None`` when every knob of every group is neutral or driven through FusedGate's keys."""
        if self.mode == "numpy":
            return
        knobs = self.core.decisions.copy()
        mask = self._gate_group[:, None] & self._via_gate[None, :]
        knobs[mask] = np.broadcast_to([1.0, 1.0, 0.0], knobs.shape)[mask]
        scaled = [(g, float(knobs[g, 0])) for g in range(self.n_groups) if knobs[g, 0] != 1.0]
        ratios = np.array([clip_ratio(c) for c in knobs[:, 1]])
        damped = [(g, float(knobs[g, 2])) for g in range(self.n_groups) if knobs[g, 2] > 0.0]
        for g in range(self.n_groups):
            if knobs[g, 2] <= 0.0:             # the smoothing restarts when dampen turns on again
                self._dampen_valid[g] = False
                self._dampen_buf.pop(g, None)
        clip = ratios if np.isfinite(ratios).any() else None
        self._plan = (scaled, clip, damped) if scaled or clip is not None or damped else None

    def _generic_step(self, base, loss, plan) -> None:
        """The base step, with the knobs applied to every group not driven through FusedGate's keys."""
        import torch

        scaled, clip, damped = plan
        if clip is not None:
            self.sensors.clip_(clip)
        before = {g: [p.detach().clone() for p in self.sensors.params_of_group[g]] for g, _ in damped}
        groups = base.param_groups
        saved = []
        try:
            for g, s in scaled:
                saved.append((groups[g], groups[g]["lr"]))
                groups[g]["lr"] = groups[g]["lr"] * s
            if self.mode == "fusedgate":
                base.step(loss=loss)
            else:
                base.step()
        finally:
            for group, lr in saved:
                group["lr"] = lr
        for g, d in damped:
            params = [p.detach() for p in self.sensors.params_of_group[g]]
            if self._dampen_valid[g]:              # in place: params ← Δ, u ← u + (1−d)(Δ − u), params ← before + u
                buf = self._dampen_buf[g]
                torch._foreach_sub_(params, before[g])
                torch._foreach_lerp_(buf, params, 1.0 - d)
                torch._foreach_add_(before[g], buf)
                torch._foreach_copy_(params, before[g])
            else:                                  # first damped step: u = Δ, params untouched
                self._dampen_buf[g] = torch._foreach_sub(params, before[g])
                self._dampen_valid[g] = True

    def state_dict(self) -> dict:
        """The base optimizer's state dict plus ``"optbrain"``: the brain's arrays as tensors."""
        import torch

        sd = dict(self._torch_base("state_dict").state_dict())
        sd["optbrain"] = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in snapshot_arrays(self).items()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        sd = dict(state_dict)
        arrays = sd.pop("optbrain", None)
        self._torch_base("load_state_dict").load_state_dict(sd)
        if arrays is not None:
            restore_arrays(self, {k: v.detach().cpu().numpy() for k, v in arrays.items()}, "state_dict")

    # ---- numpy mode ---------------------------------------------------------------------------------
    def _numpy_only(self, what: str) -> None:
        if self.mode != "numpy":
            raise BrainError(f"{what} is numpy mode only; a wrapped optimizer uses step(loss=...)")

    def get_decisions(self, loss) -> dict[int, tuple[float, float, float]]:
        """Record this step's loss; return the knobs to apply now: {group: (scale, clip, dampen)}."""
        self._numpy_only("get_decisions")
        try:
            value = float(loss)
        except (TypeError, ValueError):
            raise BrainError(f"loss must be a number, got {type(loss).__name__}") from None
        self._losses[self.step_count % self.window] = value
        self._have_loss = True
        return self.decisions

    def record_grads(self, group: int, grad_flat, param_flat=None) -> None:
        """Feed one group's gradient (and optionally its parameters) for this step."""
        self._numpy_only("record_grads")
        if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or not 0 <= group < self.n_groups:
            raise BrainError(f"record_grads: group {group!r} is not in [0, {self.n_groups})")
        self.sensors.record(int(group), grad_flat, param_flat, sense=self._sensing_step(),
                            measure_norm=bool(self.core.decisions[int(group), 1] < 1.0))

    def _sensing_step(self) -> bool:
        return self.step_count % self.window == self.window - 1

    @property
    def needs_grads(self) -> bool:
        """Numpy mode: whether ``record_grads`` reads this step's gradients (the window's last step,
        or while a clip knob is on); on other steps it only checks its arguments, so callers may skip
        flattening their gradients."""
        self._numpy_only("needs_grads")
        return self._sensing_step() or bool(np.any(self.core.decisions[:, 1] < 1.0))

    def clip_threshold(self, group: int) -> float:
        """Numpy mode: the grad-norm threshold τ = m̂·c/(1−c) the clip knob asks for (inf = no clip)."""
        self._numpy_only("clip_threshold")
        ratio = clip_ratio(self.core.decisions[group, 1])
        m = self.sensors.running_norm(group)
        return ratio * m if math.isfinite(ratio) and math.isfinite(m) else math.inf

    def finish_step(self) -> None:
        """End the step; every K steps the brain learns and picks the next window's knobs."""
        self._numpy_only("finish_step")
        if not self._have_loss:
            raise BrainError("finish_step: call get_decisions(loss) first in each step")
        self._have_loss = False
        self.step_count += 1
        if self.step_count % self.window == 0:
            self._end_window(self._losses.copy(), self.sensors.read_window())

    # ---- save / load --------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the brain (and any dampen buffers) to ``path`` as .npz, atomically, without pickle."""
        write_npz(path, snapshot_arrays(self))

    def load(self, path) -> None:
        """Restore a brain saved by ``save``; raises BrainError if the file is corrupt or does not match."""
        restore_arrays(self, read_npz(path), str(path))

    def state_nbytes(self, include_buffers: bool = False) -> int:
        """Bytes of the brain's state (what ``save`` writes, without dampen buffers unless asked)."""
        arrays = snapshot_arrays(self)
        return sum(v.nbytes for k, v in arrays.items() if include_buffers or not k.startswith("dampen_buf"))

    def __getattr__(self, name):
        # Anything else (defaults, add_param_group, …) is the base optimizer's.
        if name in ("base", "core", "mode") or self.__dict__.get("base") is None:
            raise AttributeError(name)
        return getattr(self.__dict__["base"], name)
