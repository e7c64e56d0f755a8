"""nanochat's training schedules, applied identically to every optimizer.

For step t of a run of N steps, with W = round(warmdown_ratio·N) warm-down steps:

* lr multiplier: (t+1)/warmup for t < warmup; 1 until t = N − W; then a linear ramp from 1 down to
  ``final_lr_frac``: p + (1−p)·final_lr_frac with p = (N − t)/W.
* Muon momentum: 0.85 → 0.97 linearly over ``momentum_warmup`` steps (this takes precedence, as
  in nanochat), then 0.97 → 0.90 linearly over the warm-down, 0.97 in between.
* Muon weight decay: wd₀ · ½(1 + cos(π·t/N)) (cosine to zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    total_steps: int
    warmup_steps: int = 40
    warmdown_ratio: float = 0.65
    final_lr_frac: float = 0.05
    momentum_warmup: int = 400

    @property
    def warmdown_steps(self) -> int:
        return round(self.warmdown_ratio * self.total_steps)

    def lr_multiplier(self, step: int) -> float:
        n, w = self.total_steps, self.warmdown_steps
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step <= n - w:
            return 1.0
        progress = (n - step) / w
        return progress + (1 - progress) * self.final_lr_frac

    def muon_momentum(self, step: int) -> float:
        start = self.total_steps - self.warmdown_steps
        if step < self.momentum_warmup:
            frac = step / self.momentum_warmup
            return (1 - frac) * 0.85 + frac * 0.97
        if step >= start and self.warmdown_steps > 0:
            progress = (step - start) / self.warmdown_steps
            return 0.97 * (1 - progress) + 0.90 * progress
        return 0.97

    def weight_decay_multiplier(self, step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * step / self.total_steps))

    def apply(self, param_groups: list[dict], kinds: list[str], step: int) -> float:
        """Set lr (and, for muon groups, momentum and weight decay) for this step; return the lr multiplier.

        Every group must carry ``initial_lr`` and ``initial_weight_decay``."""
        lrm = self.lr_multiplier(step)
        for group, kind in zip(param_groups, kinds):
            group["lr"] = group["initial_lr"] * lrm
            if kind == "muon":
                group["momentum"] = self.muon_momentum(step)
                group["weight_decay"] = group["initial_weight_decay"] * self.weight_decay_multiplier(step)
        return lrm
