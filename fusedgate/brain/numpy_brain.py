"""``NumpyBrain``: the OptBrain for any framework — the caller applies the knobs, the brain only learns.

    brain = OptBrain(None, n_groups=2)            # -> a NumpyBrain
    for step in ...:
        knobs = brain.get_decisions(loss)         # {group: (scale, clip, dampen)}
        for g in groups: brain.record_grads(g, grad_flat, param_flat)   # only read when needs_grads
        ... apply the knobs, step ...
        brain.finish_step()

Every K steps ``finish_step`` hands the window's losses and the features of its last step to the
learner. A non-finite loss is accepted and skipped by the learner (counted).
"""

from __future__ import annotations

import math

import numpy as np

from fusedgate.brain.config import BrainConfig, BrainError
from fusedgate.brain.features import NumpyFeatures, clip_ratio
from fusedgate.brain.optbrain import OptBrain


class NumpyBrain(OptBrain):
    """``OptBrain(None, n_groups=N, **knobs)``."""

    mode = "numpy"

    def __init__(self, base_optimizer=None, n_groups: int | None = None, *, config: BrainConfig | None = None,
                 **knobs):
        if base_optimizer is not None:
            raise BrainError("NumpyBrain takes no optimizer; use OptBrain(optimizer) for a torch one")
        if n_groups is None:
            raise BrainError("numpy mode (base_optimizer=None) needs n_groups=...")
        config = BrainConfig.from_kwargs(config, **knobs)
        self._init_learner(n_groups, config)
        self.features = NumpyFeatures(n_groups, config.sketch_size, config.seed)
        self._losses = np.zeros(config.window)
        self._have_loss = False

    def get_decisions(self, loss) -> dict[int, tuple[float, float, float]]:
        """Record this step's loss; return the knobs to apply now: {group: (scale, clip, dampen)}."""
        if isinstance(loss, (str, bytes, complex)):
            raise BrainError(f"loss must be a number (real), got {type(loss).__name__}")
        try:
            value = float(loss)
        except (TypeError, ValueError):
            raise BrainError(f"loss must be a number, got {type(loss).__name__}") from None
        self._losses[self.step_count % self.window] = value
        self._have_loss = True
        if self.core.guard < math.inf and self.learning and self.core.guarded_step(value):
            self._knobs_changed()
        return self.decisions

    def record_grads(self, group: int, grad_flat, param_flat=None) -> None:
        """Feed one group's gradient (and optionally its parameters) for this step."""
        if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or not 0 <= group < self.n_groups:
            raise BrainError(f"record_grads: group {group!r} is not in [0, {self.n_groups})")
        self.features.record(int(group), grad_flat, param_flat, sense=self._sensing_step(),
                             measure_norm=bool(self.core.decisions[int(group), 1] < 1.0))

    def _sensing_step(self) -> bool:
        """The window's last step, while the brain learns (or is frozen: its clip's m̂ stays measured)."""
        return (self.frozen or self.sensing) and self.step_count % self.window == self.window - 1

    @property
    def needs_grads(self) -> bool:
        """Whether ``record_grads`` reads this step's gradients (the window's last step, or while a clip
        knob is on); on other steps it only checks its arguments, so callers may skip flattening."""
        return self._sensing_step() or bool(np.any(self.core.decisions[:, 1] < 1.0))

    def clip_threshold(self, group: int) -> float:
        """The grad-norm threshold τ = m̂·c/(1−c) the clip knob asks for (inf = no clip)."""
        ratio = clip_ratio(self.core.decisions[group, 1])
        m = self.features.running_norm(group)
        return ratio * m if math.isfinite(ratio) and math.isfinite(m) else math.inf

    def finish_step(self) -> None:
        """End the step; every K steps the brain learns and picks the next window's knobs."""
        if not self._have_loss:
            raise BrainError("finish_step: call get_decisions(loss) first in each step")
        self._have_loss = False
        learning = self.learning               # of the window this step belongs to
        self.step_count += 1
        if self.step_count % self.window == 0 and learning:
            self._end_window(self._losses.copy(), self.features.read_window())

    # ---- what a torch optimizer would have ------------------------------------------------------------
    def _torch_only(self, what: str):
        raise BrainError(f"{what} needs a wrapped torch optimizer (this brain is in numpy mode)")

    def step(self, closure=None, loss=None):
        self._torch_only("step")

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._torch_only("zero_grad")

    @property
    def param_groups(self):
        self._torch_only("param_groups")

    @property
    def state(self):
        self._torch_only("state")

    def state_dict(self) -> dict:
        self._torch_only("state_dict")

    def load_state_dict(self, state_dict: dict) -> None:
        self._torch_only("load_state_dict")

    # ---- saved state ----------------------------------------------------------------------------------
    def mode_arrays(self) -> dict[str, np.ndarray]:
        return {"losses": self._losses.copy(), "have_loss": np.array(self._have_loss)}

    def restore_mode_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._losses = np.array(arrays["losses"], dtype=np.float64)
        self._have_loss = bool(arrays["have_loss"])
