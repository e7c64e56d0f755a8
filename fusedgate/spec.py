"""The GateSpec DSL: a bounded, frozen, JSON-serialisable description of FusedGate's behaviour.

A spec has five parts.

* **Base update** (defaults for every param group): ``lr``, ``beta1``, ``beta2``, ``eps``,
  ``weight_decay`` (decoupled, AdamW-style), ``momentum``, ``nesterov``, ``ns_steps`` and
  ``units``. ``units`` says what ``lr`` means for matrix params: ``"adam"`` — lr scales the Adam
  direction exactly as in ``torch.optim.AdamW``; ``"muon"`` — lr scales the Newton–Schulz
  direction with nanochat's shape factor, exactly as in Muon. Groups passed with
  ``kind='muon'`` always use ``"muon"`` units.
* **Engine** (switches shared by both poles; the math is in ``fusedgate.reference``): the
  ``orthogonaliser`` (``"quintic"``: Keller Jordan's Newton–Schulz; ``"polar_express"``: nanochat's
  per-iteration coefficients, at most 5 iterations), ``muon_eq`` (row equilibration of its input),
  ``muon_plus`` (its output renormalised to ‖X‖_F = √min(rows, cols)), ``normuon`` (factored second
  moment of its output, decay ``normuon_beta2`` — a ``kind='muon'`` group's own ``beta2`` wins) and
  ``cautious_wd`` (weight decay only where update·p ≥ 0). All off in ``adamw()`` and ``muon()``, all
  on in ``nanochat()``. They are switches, not actuators: the gate blends the production direction
  with Adam's through ``ortho`` and steers its size, clip and trust through the other actuators.
* **Sensor EMA decays**: ``ema_loss``, ``ema_loss_improvement``, ``ema_grad_norm``,
  ``ema_update_ratio``, ``ema_grad_alignment`` (the sixth sensor, step fraction, has none).
* **Gate**: ``gate_bias``, one weight per sensor (``w_*``) and ``sharpness``;
  g = sigmoid(sharpness · (bias + Σ wᵢ·sᵢ)) over the normalised sensors sᵢ (see ``fusedgate.gate``).
* **Poles**: an ``aggressive`` and a ``conservative`` :class:`Pole`, each holding a value for the
  five actuators. Each actuator is lerp(conservative, aggressive, g).

Every number is checked against hard bounds at construction; a violation raises
:class:`SpecError` naming the field, the value and the bound.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from fusedgate.files import ReadError, read_text

SPEC_VERSION = 2
READABLE_VERSIONS = (1, 2)   # a version-1 spec is a version-2 spec with the engine switches off
MAX_SPEC_FILE_BYTES = 1 << 20  # a spec is a few hundred bytes; anything this big is another file


class SpecError(ValueError):
    """A GateSpec field is missing, unknown, of the wrong type or out of its bounds."""


@dataclass(frozen=True)
class Bound:
    lo: float
    hi: float
    kind: type = float

    def check(self, name: str, value: Any) -> Any:
        if self.kind is bool:
            if not isinstance(value, bool):
                raise SpecError(f"{name}={value!r}: expected a bool")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{name}={value!r}: expected a number in [{self.lo}, {self.hi}]")
        try:
            if self.kind is int:
                if not math.isfinite(value) or float(value) != int(value):
                    raise SpecError(f"{name}={value!r}: expected an integer in [{self.lo}, {self.hi}]")
                value = int(value)
            else:
                value = float(value)
        except OverflowError:  # an integer too large for a float
            raise SpecError(f"{name}: an integer of {value.bit_length()} bits is outside its bound "
                            f"[{self.lo}, {self.hi}]") from None
        if math.isnan(value) or not (self.lo <= value <= self.hi):
            raise SpecError(f"{name}={value!r} is outside its bound [{self.lo}, {self.hi}]")
        return value


# Actuator bounds. ``clip`` is k in "each gradient element is clamped to ±k·RMS", with
# k = inf meaning off; the gate blends 1/k so that "off" interpolates smoothly.
POLE_BOUNDS: dict[str, Bound] = {
    "update_mult": Bound(0.0, 10.0),
    "trust_mix": Bound(0.0, 1.0),
    "clip": Bound(1.0, math.inf),
    "beta2": Bound(0.5, 0.99999),
    "ortho": Bound(0.0, 1.0),
}
ACTUATORS = tuple(POLE_BOUNDS)


@dataclass(frozen=True)
class Pole:
    """One end of the gate: a value for each of the five actuators.

    update_mult  multiplies the group lr for the matrix update.
    trust_mix    τ: the step is scaled by (1-τ) + τ·clamp(‖p‖/‖d‖, 0, 10) (LAMB-style trust ratio).
    clip         k: each gradient element is clamped to ±k·(running RMS of the gradient); inf = off.
    beta2        second-moment decay of the Adam direction.
    ortho        ω: blend (1-ω)·Adam direction + ω·RMS-matched Newton–Schulz direction.
    """

    update_mult: float = 1.0
    trust_mix: float = 0.0
    clip: float = math.inf
    beta2: float = 0.999
    ortho: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, POLE_BOUNDS[f.name].check(f"pole.{f.name}", getattr(self, f.name)))


SENSORS = ("loss", "loss_improvement", "grad_norm", "update_ratio", "grad_alignment", "step_fraction")

BOUNDS: dict[str, Bound] = {
    "version": Bound(SPEC_VERSION, SPEC_VERSION, int),
    "lr": Bound(0.0, 10.0),
    "beta1": Bound(0.0, 0.9999),
    "beta2": Bound(0.0, 0.99999),
    "eps": Bound(1e-16, 1e-2),
    "weight_decay": Bound(0.0, 10.0),
    "momentum": Bound(0.0, 0.9999),
    "nesterov": Bound(0, 1, bool),
    "ns_steps": Bound(1, 10, int),
    "muon_eq": Bound(0, 1, bool),
    "muon_plus": Bound(0, 1, bool),
    "normuon": Bound(0, 1, bool),
    "normuon_beta2": Bound(0.0, 0.99999),
    "cautious_wd": Bound(0, 1, bool),
    "ema_loss": Bound(0.0, 0.9999),
    "ema_loss_improvement": Bound(0.0, 0.9999),
    "ema_grad_norm": Bound(0.0, 0.9999),
    "ema_update_ratio": Bound(0.0, 0.9999),
    "ema_grad_alignment": Bound(0.0, 0.9999),
    "gate_bias": Bound(-8.0, 8.0),
    **{f"w_{s}": Bound(-8.0, 8.0) for s in SENSORS},
    "sharpness": Bound(0.1, 10.0),
}
UNITS = ("adam", "muon")
ORTHOGONALISERS = ("quintic", "polar_express")
POLAR_EXPRESS_MAX_STEPS = 5   # nanochat's table has five coefficient triples
ENGINE_FIELDS = ("orthogonaliser", "muon_eq", "muon_plus", "normuon", "normuon_beta2", "cautious_wd")
PRESET_NAMES = ("default", "gated", "adamw", "muon", "nanochat")


@dataclass(frozen=True)
class GateSpec:
    """A bounded FusedGate behaviour. Field order is the JSON order (stable)."""

    version: int = SPEC_VERSION
    units: str = "adam"
    # base update (defaults for param groups)
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    # engine switches (off: plain Muon/Adam; see the module docstring)
    orthogonaliser: str = "quintic"
    muon_eq: bool = False
    muon_plus: bool = False
    normuon: bool = False
    normuon_beta2: float = 0.95
    cautious_wd: bool = False
    # sensor EMA decays
    ema_loss: float = 0.9
    ema_loss_improvement: float = 0.95
    ema_grad_norm: float = 0.9
    ema_update_ratio: float = 0.9
    ema_grad_alignment: float = 0.9
    # gate
    gate_bias: float = 0.0
    w_loss: float = 0.0
    w_loss_improvement: float = 0.0
    w_grad_norm: float = 0.0
    w_update_ratio: float = 0.0
    w_grad_alignment: float = 0.0
    w_step_fraction: float = 0.0
    sharpness: float = 1.0
    # poles
    aggressive: Pole = field(default_factory=Pole)
    conservative: Pole = field(default_factory=Pole)

    def __post_init__(self):
        if self.units not in UNITS:
            raise SpecError(f"units={self.units!r} is not one of {UNITS}")
        if self.orthogonaliser not in ORTHOGONALISERS:
            raise SpecError(f"orthogonaliser={self.orthogonaliser!r} is not one of {ORTHOGONALISERS}")
        for name, bound in BOUNDS.items():
            object.__setattr__(self, name, bound.check(name, getattr(self, name)))
        for pole_name in ("aggressive", "conservative"):
            pole = getattr(self, pole_name)
            if isinstance(pole, dict):
                pole = _pole_from_dict(pole, pole_name)
            if not isinstance(pole, Pole):
                raise SpecError(f"{pole_name}={pole!r}: expected a Pole or a dict of actuators")
            object.__setattr__(self, pole_name, pole)
        if self.orthogonaliser == "polar_express" and self.ns_steps > POLAR_EXPRESS_MAX_STEPS:
            raise SpecError(f"ns_steps={self.ns_steps} is outside its bound [1, {POLAR_EXPRESS_MAX_STEPS}] with "
                            "orthogonaliser='polar_express' (five coefficient triples)")

    # ------------------------------------------------------------------ presets
    @classmethod
    def adamw(cls, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 1e-2) -> GateSpec:
        """Exactly ``torch.optim.AdamW(lr, betas, eps, weight_decay)``: both poles equal, the gate inert."""
        pole = Pole(update_mult=1.0, trust_mix=0.0, clip=math.inf, beta2=betas[1], ortho=0.0)
        return cls(units="adam", lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay,
                   aggressive=pole, conservative=pole)

    @classmethod
    def muon(cls, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
             weight_decay: float = 0.0, adamw_betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> GateSpec:
        """Exactly Muon (nesterov momentum, quintic Newton–Schulz, nanochat's shape scaling
        sqrt(max(1, rows/cols))) for matrix params; AdamW(lr, adamw_betas, eps) for the rest.
        Both poles equal: the gate is inert."""
        pole = Pole(update_mult=1.0, trust_mix=0.0, clip=math.inf, beta2=adamw_betas[1], ortho=1.0)
        return cls(units="muon", lr=lr, beta1=adamw_betas[0], beta2=adamw_betas[1], eps=eps,
                   weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                   aggressive=pole, conservative=pole)

    @classmethod
    def nanochat(cls, lr: float = 0.02, momentum: float = 0.95, ns_steps: int = 5, beta2: float = 0.9,
                 weight_decay: float = 0.0, adamw_betas: tuple[float, float] = (0.8, 0.95),
                 eps: float = 1e-10) -> GateSpec:
        """Exactly nanochat's ``MuonAdamW``: for matrix params Muon with Polar Express, MuonEq, Muon+,
        NorMuon (decay ``beta2``) and cautious weight decay, in Muon units; AdamW(lr, adamw_betas, eps)
        for the rest. Both poles equal: the gate is inert. With nanochat's own param groups
        (``kind='muon'`` groups carrying lr, momentum, ns_steps, beta2, weight_decay; ``kind='adamw'``
        groups) the groups' values are used and FusedGate *is* nanochat's optimizer."""
        pole = Pole(update_mult=1.0, trust_mix=0.0, clip=math.inf, beta2=adamw_betas[1], ortho=1.0)
        return cls(units="muon", lr=lr, beta1=adamw_betas[0], beta2=adamw_betas[1], eps=eps,
                   weight_decay=weight_decay, momentum=momentum, nesterov=True, ns_steps=ns_steps,
                   orthogonaliser="polar_express", muon_eq=True, muon_plus=True, normuon=True,
                   normuon_beta2=beta2, cautious_wd=True, aggressive=pole, conservative=pole)

    @classmethod
    def default(cls) -> GateSpec:
        """The default: nanochat's production engine, ungated (``nanochat()``), re-chosen from the evidence.

        The gated policy that was the default (now ``gated()``) helped by 0.005 bpb at 300 steps, short of
        significance over 8 held-out seeds (95 % lower bound −0.001), and cost 0.02 bpb at 600 steps on 4 of 4
        held-out seeds; no gated spec is yet better with significance anywhere (the README's robustness
        section and the search under ``bench/results/``). Until one wins at every horizon, the default is the
        engine it would steer, so a user who takes the defaults gets nanochat's optimizer exactly.
        """
        return cls.nanochat()

    @classmethod
    def gated(cls) -> GateSpec:
        """The gated preset (the default until the multi-horizon evidence): nanochat's production engine
        (``nanochat()``) with a gate on top.

        It differs from ``nanochat()`` only in the gate and the poles, both of which keep the production
        direction (ω = 1). The conservative pole *is* the production update, plus a spike guard: each gradient
        element clipped at 5× the running gradient RMS. The aggressive pole takes 1.25× the step, unclipped.
        Gate: g = sigmoid(2·s_improvement − 3·s_step_fraction) — aggressive while the loss falls quickly
        (early), the production update by the end of the run (g ≈ 0.05 at the last step when progress has
        stalled), so the gate sharpens the schedule's start and leaves its warm-down alone. Measured: a little
        better at 300 steps, worse at 600 (the README).
        """
        engine = cls.nanochat()
        return engine.replace(
            gate_bias=0.0, w_loss_improvement=2.0, w_step_fraction=-3.0, sharpness=1.0,
            aggressive=Pole(update_mult=1.25, trust_mix=0.0, clip=math.inf, beta2=engine.aggressive.beta2, ortho=1.0),
            conservative=Pole(update_mult=1.0, trust_mix=0.0, clip=5.0, beta2=engine.aggressive.beta2, ortho=1.0),
        )

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes: Any) -> GateSpec:
        """A copy with some fields changed (bounds re-checked)."""
        return dataclasses.replace(self, **changes)

    @property
    def gate_weights(self) -> tuple[float, ...]:
        """The sensor weights in ``SENSORS`` order."""
        return tuple(getattr(self, f"w_{s}") for s in SENSORS)

    @property
    def is_inert(self) -> bool:
        """True when both poles are equal, so the gate cannot change anything."""
        return self.aggressive == self.conservative

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Pole):
                value = {a: _encode_float(getattr(value, a)) for a in ACTUATORS}
            out[f.name] = value
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateSpec:
        if not isinstance(data, dict):
            raise SpecError(f"a spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown spec field(s): {', '.join(unknown)}")
        if "version" not in data:
            raise SpecError("spec has no 'version' field")
        if data["version"] not in READABLE_VERSIONS or isinstance(data["version"], bool):
            raise SpecError(f"version={data['version']!r}: this fusedgate reads spec versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))}")
        if data["version"] == 1:
            newer = sorted(set(data) & set(ENGINE_FIELDS))
            if newer:
                raise SpecError(f"field(s) {', '.join(newer)} need spec version {SPEC_VERSION}, the file says 1")
        kwargs = dict(data, version=SPEC_VERSION)
        for pole_name in ("aggressive", "conservative"):
            if pole_name in kwargs:
                kwargs[pole_name] = _pole_from_dict(kwargs[pole_name], pole_name)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> GateSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"not valid JSON: {exc}") from None
        except ValueError as exc:  # a number longer than Python's int-conversion limit (4300 digits)
            raise SpecError(f"not a usable spec: {str(exc).split(';')[0]}") from None
        except RecursionError:
            raise SpecError("not a usable spec: JSON nested too deeply") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> GateSpec:
        """A spec JSON file, read with ``fusedgate.files.read_text``: a regular UTF-8 file of at most
        ``MAX_SPEC_FILE_BYTES`` (a FIFO, a device or a folder is refused before it is opened)."""
        try:
            text = read_text(path, "spec file", MAX_SPEC_FILE_BYTES)
        except ReadError as exc:
            raise SpecError(f"cannot read the spec file: {exc.reason}") from None
        return cls.from_json(text)

    @classmethod
    def from_name_or_file(cls, name_or_path) -> GateSpec:
        """A preset by name (``PRESET_NAMES``: default, gated, adamw, muon, nanochat, with their default arguments) or a
        spec JSON file; an existing file of that name wins over the preset (a folder does not: the repository
        has a folder called nanochat). A name that is neither is refused with the preset names."""
        name = str(name_or_path)
        if name in PRESET_NAMES and not os.path.isfile(name):
            return getattr(cls, name)()
        if not os.path.lexists(name):
            raise SpecError(f"cannot read the spec file: it does not exist, and {name!r} is not a preset name "
                            f"either (presets: {', '.join(PRESET_NAMES)})")
        return cls.load(name_or_path)

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json() + "\n")

    def content_hash(self) -> str:
        """A stable hash of the spec's content (used to never evaluate a spec twice)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _encode_float(value: float) -> float | str:
    return "inf" if value == math.inf else value


def _pole_from_dict(data: Any, pole_name: str) -> Pole:
    if isinstance(data, Pole):
        return data
    if not isinstance(data, dict):
        raise SpecError(f"{pole_name}={data!r}: expected an object with fields {', '.join(ACTUATORS)}")
    unknown = sorted(set(data) - set(ACTUATORS))
    if unknown:
        raise SpecError(f"unknown field(s) in {pole_name}: {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        if value == "inf":
            value = math.inf
        values[name] = POLE_BOUNDS[name].check(f"{pole_name}.{name}", value)
    return Pole(**values)
