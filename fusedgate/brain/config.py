"""``BrainConfig``: every knob of the OptBrain's learner in one frozen dataclass.

``OptBrain`` (each of its modes) and ``BrainCore`` take the same config; ``OptBrain(base, window=5)``
still works (the keywords build a ``BrainConfig``). Every field is checked at construction: a bad
value is one ``BrainError`` line naming the field and its range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


class BrainError(ValueError):
    """Bad input to the OptBrain, or a brain file that is corrupt or does not match."""


def _integer(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BrainError(f"{name}={value!r}: expected an integer in [{lo}, {hi}]")


def _number(name: str, value, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise BrainError(f"{name}={value!r}: expected a finite number in [{lo:g}, {hi:g}]")


# field -> (kind, lo, hi): the one table both the constructor and a loaded file are checked against
BOUNDS = {
    "window": ("int", 3, 100_000), "warmup_windows": ("int", 1, 1_000_000), "sketch_size": ("int", 1, 4096),
    "seed": ("int", 0, 2 ** 63 - 1), "total_steps": ("int", 0, 10 ** 12),
    "explore": ("float", 0.0, 10.0), "policy_lr": ("float", 0.0, 10.0), "decay": ("float", 0.0, 1.0),
    "alpha_min": ("float", 0.0, 1.0), "alpha_start": ("float", 0.0, 1.0), "z_grow": ("float", 0.0, 10.0),
    "grow": ("float", 1.0, 16.0), "shrink_pairs": ("int", 1, 1000), "probe": ("float", 1.0, 16.0),
    "probe_up": ("float", 1.0, 16.0),
    "z_shrink": ("float", 0.0, 10.0),
    "horizon": ("float", 0.0, 1e9), "exploit": ("float", 0.0, 1.0), "hypergrad": ("float", 0.0, 10.0),
    "overshoot_target": ("float", -1.0, 1.0),
    "warmdown": ("float", 0.0, 0.9), "warmdown_scale": ("float", 0.01, 1.0), "warmdown_pairs": ("int", 1, 100),
    "warmdown_z": ("float", 0.0, 10.0), "warmdown_partner": ("float", 1.0, 2.0),
    "ladder": ("int", 0, 10), "ladder_step": ("float", 1.0, 10.0), "ladder_pairs": ("int", 1, 100),
    "ladder_z": ("float", 0.0, 10.0), "ladder_align": ("float", -1.0, 1.0),
}


def check_field(name: str, value) -> None:
    """One field against ``BOUNDS``; raises a one-line BrainError."""
    kind, lo, hi = BOUNDS[name]
    (_integer if kind == "int" else _number)(name, value, lo, hi)


@dataclass(frozen=True)
class BrainConfig:
    """The learner's knobs (see ``fusedgate.brain.policy`` and ``fusedgate.brain.safety`` for their roles).

    window          K, steps per decision window          warmup_windows  neutral windows before learning
    sketch_size     S, coordinates per group's sketch      seed            exploration / sketch seed
    total_steps     run length (0: unknown)                explore         × the exploration scale σ
    policy_lr       η of the ES step                       decay           λ, weight decay of the policy
    alpha_start     trust α before any test                alpha_min       the trust's floor (near-neutral)
    z_grow          the one-sided test's threshold         grow            α's factor on a passed test
    z_shrink        the shrink test's threshold            shrink_pairs    pairs a level needs before it can shrink
    probe           the policy-mean (tested) window runs at min(1, probe·α)·μ; the exploration windows at α
    probe_up        as probe, for the tested window's scale only and only where it raises the lr (μ_scale > 0):
                    min(1, max(probe, probe_up)·α)·μ_scale
    horizon, exploit  reward horizon; exploit fraction
    hypergrad       κ, overshoot-following rate            overshoot_target  o*, tolerated overshoot
    warmdown        L, the run's last fraction given to the warmdown test (0: off; needs total_steps)
    warmdown_scale  f, the test windows' scale and the warmdown's start   warmdown_pairs  most test pairs
    warmdown_z      the warmdown test's commit threshold
    warmdown_partner  p, the scale of the window each test window at f is paired with (1.5 = 2 − f: the pair's
                    mean lr is the base's, so a rejected test costs no progress to first order; 1: neutral)
    ladder          the lr ladder's most rungs (0, the default: off; ``fusedgate.brain.ladder``; 2 was evaluated)
    ladder_step     u, the lr factor of a rung        ladder_pairs  most test pairs per rung
    ladder_z        the ladder's climb threshold
    ladder_align    a, the gradient alignment a rung needs at its start and, averaged over its windows at ℓ,
                    at each pair's end
    sigma           base exploration scale per knob (scale, clip, dampen), in policy units; dampen's 0 (the
                    default) keeps that knob at 0 — it is never explored, so never on and never paid for
                    (``bench/results/brain_tuning``, eleventh sweep); (0.25, 0.25, 0.1) turns it on
    """

    window: int = 10
    warmup_windows: int = 3
    sketch_size: int = 64
    seed: int = 0
    total_steps: int = 0
    explore: float = 1.0
    policy_lr: float = 0.3
    decay: float = 0.02
    alpha_start: float = 0.125
    alpha_min: float = 1.0 / 16
    z_grow: float = 1.0
    grow: float = 2.0
    shrink_pairs: int = 1
    probe: float = 1.0
    probe_up: float = 1.0
    z_shrink: float = 0.0
    horizon: float = 0.0
    exploit: float = 0.0
    hypergrad: float = 0.5
    overshoot_target: float = 0.3
    warmdown: float = 0.25
    warmdown_scale: float = 0.5
    warmdown_pairs: int = 2
    warmdown_z: float = 1.64
    warmdown_partner: float = 1.5
    ladder: int = 0
    ladder_step: float = 2.0
    ladder_pairs: int = 2
    ladder_z: float = 1.0
    ladder_align: float = 0.5
    sigma: tuple[float, float, float] = (0.25, 0.25, 0.0)

    def __post_init__(self):
        for name in BOUNDS:
            check_field(name, getattr(self, name))
        if self.alpha_min > self.alpha_start:
            raise BrainError(f"alpha_min={self.alpha_min!r} is above alpha_start={self.alpha_start!r}")
        sigma = tuple(self.sigma)
        if len(sigma) != 3:
            raise BrainError(f"sigma={self.sigma!r}: expected three numbers (scale, clip, dampen)")
        for v in sigma:
            _number("sigma", v, 0.0, 10.0)
        object.__setattr__(self, "sigma", tuple(float(v) for v in sigma))

    @classmethod
    def from_kwargs(cls, config: BrainConfig | None = None, **kwargs) -> BrainConfig:
        """``config`` with ``kwargs`` replaced (``total_steps=None`` means unknown, 0); unknown names refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise BrainError(f"unknown OptBrain argument(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        if kwargs.get("total_steps", 0) is None:
            kwargs["total_steps"] = 0
        return dataclasses.replace(config or cls(), **kwargs)


FIELDS = tuple(f.name for f in dataclasses.fields(BrainConfig))
