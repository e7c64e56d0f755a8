"""What one step of a backend takes: plain lists of tensors and frozen hyperparameters, no optimizer.

``FusedGate.step`` gathers, once per step, one :class:`Stack` per param group and role (the group's gated
matrices, or its AdamW parameters) and one :class:`Gate` (what the actuators are computed from), then
calls ``fusedgate.functional.gated_step(stacks, gate, backend=...)``; the distributed modes call the
same entry for what they own (a sliced AdamW parameter's stack holds views of its elements). Every
backend — ``reference.gated_step``, ``kernels.backend.gated_step`` — takes exactly these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fusedgate.spec import GateSpec


@dataclass(frozen=True)
class MatrixHyper:
    """Group hyperparameters of one gated step (host floats: read from param_groups)."""

    lr: float
    weight_decay: float
    momentum: float   # μ: decay of the first moment and the Nesterov blend
    eps: float
    nesterov: bool
    ns_steps: int
    units: str        # "adam" | "muon"
    normuon_beta2: float = 0.0   # β_N: decay of the NorMuon second moment

    @classmethod
    def of(cls, group: dict, units: str) -> MatrixHyper:
        """A param group's values, in ``units`` (μ: ``momentum`` in Muon units, ``betas[0]`` in Adam units)."""
        momentum = group["momentum"] if units == "muon" else group["betas"][0]
        return cls(lr=float(group["lr"]), weight_decay=float(group["weight_decay"]), momentum=float(momentum),
                   eps=float(group["eps"]), nesterov=bool(group["nesterov"]), ns_steps=int(group["ns_steps"]),
                   units=units, normuon_beta2=float(group["beta2"]))


@dataclass(frozen=True)
class AdamWHyper:
    """Group hyperparameters of one AdamW step (host floats)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float

    @classmethod
    def of(cls, group: dict) -> AdamWHyper:
        beta1, beta2 = group["betas"]
        return cls(lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2), eps=float(group["eps"]),
                   weight_decay=float(group["weight_decay"]))


@dataclass(frozen=True)
class Modulation:
    """OptBrain's per-group gate keys: ``scale`` multiplies update_mult, ``clip`` multiplies k, ``dampen``
    shifts the gate towards the conservative pole (g ← g·(1 − dampen))."""

    scale: float = 1.0
    clip: float = 1.0
    dampen: float = 0.0


@dataclass(frozen=True)
class Stack:
    """One param group's parameters of one role, as parallel lists (torch.optim's functional form):
    ``hyper`` is a :class:`MatrixHyper` for the gated matrices, an :class:`AdamWHyper` for AdamW.
    ``grads[i]`` is the gradient ``params[i]`` is stepped with (``p.grad``, or a slice of it)."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    states: list[dict]
    hyper: MatrixHyper | AdamWHyper
    modulation: Modulation = Modulation()

    @property
    def gated(self) -> bool:
        return isinstance(self.hyper, MatrixHyper)


@dataclass(frozen=True)
class Gate:
    """What this step's actuators are computed from: the spec's gate and poles, the global (loss and
    step) sensors, the horizon of the step-fraction sensor, and whether anything reads the sensors
    (``measures``, see ``FusedGate.reads_sensors``)."""

    spec: GateSpec
    global_state: torch.Tensor
    total_steps: int | None
    measures: bool

    @property
    def uses(self) -> tuple[bool, bool, bool]:
        """(ortho, adam, clip): whether some pole gives the orthogonal / Adam direction weight, or clips."""
        return uses(self.spec)


def uses(spec: GateSpec) -> tuple[bool, bool, bool]:
    """(ortho, adam, clip) of a spec: max ω > 0, min ω < 1, min k < ∞ over its two poles."""
    a, c = spec.aggressive, spec.conservative
    return max(a.ortho, c.ortho) > 0, min(a.ortho, c.ortho) < 1, min(a.clip, c.clip) < math.inf
