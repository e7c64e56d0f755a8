"""OptBrain: a tiny online learner that sets three knobs per parameter group of any optimizer.

    opt = OptBrain(torch.optim.AdamW(model.parameters(), lr=1e-3))
    loss.backward(); opt.step(loss=loss.detach()); opt.zero_grad()

Knobs per group, applied to the *update* of the base optimizer (so Adam's scale invariance cannot undo
them), each exactly the identity at its neutral value (1, 1, 0):

* **scale** s ∈ [0.01, 10]: the group's ``lr`` is multiplied by s for the base step, then restored
  (schedulers that set ``lr`` keep working). SGD and Adam updates are both proportional to lr.
* **clip** c ∈ [0.1, 5]: before the base step the group's gradient is scaled by min(1, τ/‖g‖) with
  τ = m̂·c/(1−c), m̂ the running (EMA, β=0.9) group grad norm; c ≥ 1 means no clipping. A spike
  guard the brain can tighten; see ``fusedgate.brain.features.clip_ratio``.
* **dampen** d ∈ [0, 1]: the applied update is smoothed, u_t = (1−d)·Δ_t + d·u_{t−1}, with Δ_t the
  base optimizer's own update. Memory: while d > 0 the group keeps one buffer u (1× its params) and a
  transient copy of its params during the step; at d = 0 nothing is kept and the buffer restarts. Off by
  default: its exploration scale σ_dampen is 0, so the learner never moves it from 0 (it earned nothing
  on the tuning family and costs four passes per step while on); ``sigma=(0.25, 0.25, 0.1)`` or
  ``freeze`` turn it on.

Three modes, one learner (``fusedgate.brain.policy.BrainCore``, its knobs a ``BrainConfig``):
``OptBrain(base)`` returns the class that fits the base —

* ``TorchBrain`` (``torch_brain.py``): any torch optimizer; the knobs act through the generic mechanism
  above.
* ``FusedGateBrain`` (``torch_brain.py``): a ``fusedgate.FusedGate`` base; the brain writes the group keys
  ``gate_scale``, ``gate_clip``, ``gate_dampen`` once per window and FusedGate applies them on the device
  (gated params only; its AdamW-run groups, and knobs the spec would ignore, use the generic mechanism).
* ``NumpyBrain`` (``numpy_brain.py``): ``OptBrain(None, n_groups=N)``, for any framework — per step
  ``get_decisions(loss)``, ``record_grads(group, grad_flat, param_flat=None)``, ``finish_step()``.

Learning and safety (``fusedgate.brain.policy``, ``fusedgate.brain.safety``): decisions are held for a
window of K steps; the first ``warmup_windows`` windows are exactly neutral (bit-identical to the base
optimizer). Then, if turned on (``ladder=2``; off by default), the lr ladder (``fusedgate.brain.ladder``)
tests pairs of windows at 2ℓ against ℓ and doubles the run's lr factor ℓ (1 at first, at most 4) only
while a paired test says the larger lr wins and the gradients stay aligned from one window to the next.
Then cycles of
four windows (+ε, −ε, the policy mean, neutral) in random order train a linear Gaussian policy by
antithetic ES, and a trust gate lets the policy's deviation from neutral grow only while a paired
one-sided test says its windows beat the neutral ones. Over the last quarter of a run of known length
(``total_steps``; FusedGate's own, for a FusedGate base) the policy ends and a second paired test
decides whether to lower the lr linearly to the end (``fusedgate.brain.warmdown``; ``warmdown=0`` turns
it off). A NaN or inf ``loss=`` is skipped by the learner (counted in ``report()['skipped_losses']``); the base step
still runs. Once the gate has ended the policy (α = 0, final) or the brain is frozen, it stops sensing and
learning: a step is then the base step and a counter until the warmdown phase (if any), where it reads the
losses only. Host syncs: one per window, none per step — except in the windows that raise the lr above the
level they start from: the ladder's at 2ℓ (at most ``ladder``·``ladder_pairs`` a run) and the warmdown test's
partner windows at 1.5× (at most ``warmdown_pairs``), where each step's loss is read so that a blow-up ends
that test at once. Several ranks (torch.distributed initialized, more than one rank in ``process_group``, the
default group if None): every rank passes its own ``loss=``, and a torch-mode brain averages what it learns
from over the ranks — the window's losses and what it sensed, one all-reduce each per window, and a guarded
step's loss — so every rank decides the same knobs (under DDP, and over FusedGate's ZeRO-2, where the gradients
are each rank's own until its step averages them); every rank must step its brain. Over FSDP2-sharded
parameters (DTensors, ``Shard(0)`` on a 1-D mesh) the features are the whole parameters' on every rank
(``fusedgate.brain.sharded_features``: the norms and sketches all-reduced over the mesh, the losses averaged) and
each rank applies the knobs to its own rows. ``sync_ranks=False``: each rank its own brain (for ranks that hold
different parameters; refused over FSDP2, whose ranks share every parameter). ``OptBrain`` is not a
``torch.optim.Optimizer`` subclass: attach LR schedulers to the base optimizer. Save/load: ``save(path)``/
``load(path)`` write/read ``.npz`` without pickle; nothing is written anywhere else; there is no telemetry and no
network.
"""

from __future__ import annotations

import numpy as np

from fusedgate.brain.config import BrainConfig, BrainError
from fusedgate.brain.policy import BrainCore

__all__ = ["OptBrain"]


class OptBrain:
    """Wrap ``base_optimizer`` (any torch optimizer), or ``None`` with ``n_groups`` for numpy mode.
    Knobs: ``config=BrainConfig(...)`` and/or its fields as keywords (``window=5``, ``seed=3``, …)."""

    mode = "base"          # the label saved with the state: "torch", "fusedgate" or "numpy"

    def __new__(cls, base_optimizer=None, *args, **kwargs):
        if cls is OptBrain:
            from fusedgate.brain.numpy_brain import NumpyBrain
            from fusedgate.brain.torch_brain import FusedGateBrain, TorchBrain

            cls = NumpyBrain if base_optimizer is None else (
                FusedGateBrain if FusedGateBrain.accepts(base_optimizer) else TorchBrain)
        return super().__new__(cls)

    def _init_learner(self, n_groups: int, config: BrainConfig) -> None:
        """What every mode shares: the config, the learner, the step counter."""
        self.config = config
        self.core = BrainCore(n_groups, config)
        self.n_groups, self.window = n_groups, config.window
        self.sketch_size, self.seed = config.sketch_size, config.seed
        self.step_count = 0
        self.frozen = False

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
            self._knobs_changed()
        self.frozen = True

    @property
    def learning(self) -> bool:
        """Whether the brain reads the current window's losses: not frozen, and either the trust gate has
        not ended the policy (α = 0 is final) or the warmdown test wants them. Otherwise a step costs the
        base step and a counter."""
        return not self.frozen and self.core.listening(self.step_count // self.window)

    @property
    def sensing(self) -> bool:
        """Whether the current window's features are measured (on its last step): learning, and the main
        learner runs (not ended, not in the warmdown phase)."""
        return not self.frozen and self.core.sensing(self.step_count // self.window)

    def report(self) -> dict:
        """What the brain measured: cycles, trust α, mean advantage of its windows over neutral, …"""
        return {"steps": self.step_count, "mode": self.mode, **self.core.report()}

    def _end_window(self, losses: np.ndarray, feats: np.ndarray) -> None:
        if self.frozen:
            return
        self.core.reliability = np.minimum(self.features.numel, self.sketch_size) / self.sketch_size
        self.core.end_window(losses, feats, next_window=self.step_count // self.window)
        self._knobs_changed()

    def _knobs_changed(self) -> None:
        """Hook: the mode's reaction to new knobs (once per window)."""

    # ---- save / load ----------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the brain (and any dampen buffers) to ``path`` as .npz, atomically, without pickle."""
        from fusedgate.brain.state_io import snapshot_arrays, write_npz

        write_npz(path, snapshot_arrays(self))

    def load(self, path) -> None:
        """Restore a brain saved by ``save``; raises BrainError if the file is corrupt or does not match."""
        from fusedgate.brain.state_io import read_npz, restore_arrays

        restore_arrays(self, read_npz(path), str(path))

    def state_nbytes(self, include_buffers: bool = False) -> int:
        """Bytes of the brain's state (what ``save`` writes, without dampen buffers unless asked)."""
        from fusedgate.brain.state_io import snapshot_arrays

        arrays = snapshot_arrays(self)
        return sum(v.nbytes for k, v in arrays.items() if include_buffers or not k.startswith("dampen_buf"))

    # the mode's own arrays in the saved state (``state_io``): written, checked, then restored
    def mode_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def check_mode_arrays(self, arrays: dict[str, np.ndarray], source: str) -> None:
        """Raise a one-line BrainError if ``arrays`` do not fit this brain (nothing changed yet)."""

    def restore_mode_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._knobs_changed()
