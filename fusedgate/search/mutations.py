"""Fourteen mutation operators over the GateSpec DSL, each changing exactly one aspect of a spec.

Every operator is ``op(spec, rng) -> GateSpec | None`` with ``rng`` a seeded ``random.Random`` (so a
search is reproducible). It returns ``None`` when it does not apply (e.g. "zero a weight" when every
weight is already zero) or when the result, after clipping to the DSL bounds, equals the parent.

Perturbations work in a space where the bound is natural:
    additive          x + N(0, σ)                      gate weights, bias, trust_mix, ortho
    multiplicative    x · exp(N(0, σ))                 lr, sharpness, update_mult
    decay             1 − (1 − x) · exp(N(0, σ))        EMA decays, beta1, beta2, momentum
    inverse clip      1/k + N(0, σ), 1/k = 0 ↔ k = ∞    the clip threshold k
and every value is then clipped to its bound (``BOUNDS`` / ``POLE_BOUNDS``) and rounded to 6
significant digits (readable specs, stable content hashes).

``aspect_of(parent, child)`` lists the flattened fields that differ ("w_loss", "aggressive.clip");
each operator's ``fields`` says which may change and ``single`` whether exactly one of them does.

``perturb_field`` reaches every field generically, from the spec's dataclass fields and their kinds
(``field_kinds``: a number with its ``BOUNDS``/``POLE_BOUNDS`` entry, an int, a bool, or an enum with
its choices in ``ENUM_CHOICES``): the engine switches (``orthogonaliser``, ``muon_eq``, ``muon_plus``,
``normuon``, ``cautious_wd``) and any field added to GateSpec later (an enum's choices go into
``ENUM_CHOICES``) are searched without a new operator. Bools flip, enums move to another choice, ints
step ±1, numbers use the space above.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields

from fusedgate.files import markdown_table
from fusedgate.spec import (
    ACTUATORS,
    BOUNDS,
    ORTHOGONALISERS,
    POLAR_EXPRESS_MAX_STEPS,
    POLE_BOUNDS,
    SENSORS,
    UNITS,
    Bound,
    GateSpec,
    Pole,
    SpecError,
)

POLES = ("aggressive", "conservative")
WEIGHTS = tuple(f"w_{s}" for s in SENSORS)
EMAS = ("ema_loss", "ema_loss_improvement", "ema_grad_norm", "ema_update_ratio", "ema_grad_alignment")
BASE = ("beta1", "beta2", "momentum", "weight_decay")
POLE_FIELDS = tuple(f"{p}.{a}" for p in POLES for a in ACTUATORS)
# Choices of the spec's string fields, as spec.py names them.
ENUM_CHOICES: dict[str, tuple] = {"units": UNITS, "orthogonaliser": ORTHOGONALISERS}
# Fields the NanoChat trainer's param groups override (lr, betas, eps, weight_decay, momentum, ns_steps,
# and the muon groups' beta2 that is NorMuon's decay):
# changing them produces a run identical to the parent's; the spec format version and the lr units
# (which redefine what every lr means) are not searched either.
TRAINER_FIELDS = ("lr", "beta1", "beta2", "eps", "weight_decay", "momentum", "ns_steps", "normuon_beta2")
NOT_SEARCHED = ("version", "units", *TRAINER_FIELDS)


@dataclass(frozen=True)
class FieldKind:
    """How a flattened spec field may vary: kind is "float", "int", "bool" or "enum"."""

    name: str
    kind: str
    bound: Bound | None = None
    choices: tuple = ()


def field_kinds(spec_class: type = GateSpec) -> dict[str, FieldKind]:
    """Every flattened field of a spec class with its kind, from the dataclass fields, ``BOUNDS``,
    ``POLE_BOUNDS`` and ``ENUM_CHOICES`` (the one source of the spec's shape: spec.py)."""
    out = {}
    for f in fields(spec_class):
        default = f.default if f.default is not MISSING else f.default_factory()
        if isinstance(default, Pole):
            for a in ACTUATORS:
                out[f"{f.name}.{a}"] = FieldKind(f"{f.name}.{a}", "float", POLE_BOUNDS[a])
        elif f.name in BOUNDS:
            bound = BOUNDS[f.name]
            kind = "bool" if bound.kind is bool else ("int" if bound.kind is int else "float")
            out[f.name] = FieldKind(f.name, kind, bound)
        elif isinstance(default, bool):
            out[f.name] = FieldKind(f.name, "bool")
        elif isinstance(default, str):
            out[f.name] = FieldKind(f.name, "enum", choices=tuple(ENUM_CHOICES.get(f.name, (default,))))
        elif isinstance(default, int):
            out[f.name] = FieldKind(f.name, "int", Bound(-math.inf, math.inf, int))
        elif isinstance(default, float):
            out[f.name] = FieldKind(f.name, "float", Bound(-math.inf, math.inf))
    return out


@dataclass(frozen=True)
class Operator:
    name: str
    doc: str
    fields: tuple[str, ...]  # flattened fields it may change
    single: bool  # True: exactly one of ``fields`` changes
    fn: Callable[[GateSpec, random.Random], GateSpec | None]

    def __call__(self, spec: GateSpec, rng: random.Random) -> GateSpec | None:
        child = self.fn(spec, rng)
        return None if child is None or child == spec else child


# ---------------------------------------------------------------------------- helpers
def _round(x: float) -> float:
    return x if math.isinf(x) else float(f"{x:.6g}")


def _clip(bound, x: float) -> float:
    return _round(min(max(x, bound.lo), bound.hi))


def _decay(x: float, lo: float, hi: float, rng: random.Random, sigma: float = 0.7) -> float:
    """Perturb a decay-like x in log(1 − x): halving or doubling the time constant is one step."""
    gap = max(1.0 - x, 1e-6) * math.exp(rng.gauss(0.0, sigma))
    return _round(min(max(1.0 - gap, lo), hi))


def _with_pole(spec: GateSpec, pole: str, actuator: str, value: float) -> GateSpec:
    old = getattr(spec, pole)
    values = {a: getattr(old, a) for a in ACTUATORS}
    values[actuator] = value
    return spec.replace(**{pole: Pole(**values)})


def flatten(spec: GateSpec) -> dict:
    """The spec as one flat dict: pole actuators become "aggressive.clip" etc."""
    out = {}
    for key, value in spec.to_dict().items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def aspect_of(parent: GateSpec, child: GateSpec) -> set[str]:
    """The flattened fields whose values differ between two specs."""
    a, b = flatten(parent), flatten(child)
    return {k for k in a if a[k] != b[k]}


# ---------------------------------------------------------------------------- operators
def perturb_weight(spec, rng):
    name = rng.choice(WEIGHTS)
    return spec.replace(**{name: _clip(BOUNDS[name], getattr(spec, name) + rng.gauss(0.0, 1.0))})


def zero_weight(spec, rng):
    nonzero = [w for w in WEIGHTS if getattr(spec, w) != 0.0]
    return spec.replace(**{rng.choice(nonzero): 0.0}) if nonzero else None


def flip_weight(spec, rng):
    nonzero = [w for w in WEIGHTS if getattr(spec, w) != 0.0]
    if not nonzero:
        return None
    name = rng.choice(nonzero)
    return spec.replace(**{name: -getattr(spec, name)})


def perturb_bias(spec, rng):
    return spec.replace(gate_bias=_clip(BOUNDS["gate_bias"], spec.gate_bias + rng.gauss(0.0, 1.0)))


def perturb_sharpness(spec, rng):
    return spec.replace(sharpness=_clip(BOUNDS["sharpness"], spec.sharpness * math.exp(rng.gauss(0.0, 0.5))))


def _perturb_actuator(actuator: str, x: float, rng: random.Random) -> float:
    bound = POLE_BOUNDS[actuator]
    if actuator == "update_mult":
        return _clip(bound, max(x, 0.05) * math.exp(rng.gauss(0.0, 0.3)))
    if actuator == "beta2":
        return _decay(x, bound.lo, bound.hi, rng)
    if actuator == "clip":  # perturb 1/k in [0, 1]; 0 means "no clipping" (k = inf)
        inv = min(max((0.0 if math.isinf(x) else 1.0 / x) + rng.gauss(0.0, 0.15), 0.0), 1.0)
        return math.inf if inv < 1e-3 else _clip(bound, 1.0 / inv)
    return _clip(bound, x + rng.gauss(0.0, 0.2))  # trust_mix, ortho


def perturb_pole(spec, rng):
    pole, actuator = rng.choice(POLES), rng.choice(ACTUATORS)
    return _with_pole(spec, pole, actuator, _perturb_actuator(actuator, getattr(getattr(spec, pole), actuator), rng))


def tie_actuator(spec, rng):
    differing = [a for a in ACTUATORS if getattr(spec.aggressive, a) != getattr(spec.conservative, a)]
    if not differing:
        return None
    actuator, pole = rng.choice(differing), rng.choice(POLES)
    other = POLES[1 - POLES.index(pole)]
    return _with_pole(spec, pole, actuator, getattr(getattr(spec, other), actuator))


def swap_poles(spec, rng):
    return spec.replace(aggressive=spec.conservative, conservative=spec.aggressive)


def perturb_ema(spec, rng):
    name = rng.choice(EMAS)
    return spec.replace(**{name: _decay(getattr(spec, name), BOUNDS[name].lo, BOUNDS[name].hi, rng)})


def scale_lr(spec, rng):
    return spec.replace(lr=_clip(BOUNDS["lr"], max(spec.lr, 1e-6) * math.exp(rng.gauss(0.0, 0.3))))


def perturb_base(spec, rng):
    name = rng.choice(BASE)
    if name == "weight_decay":
        value = _clip(BOUNDS[name], max(spec.weight_decay, 1e-3) * math.exp(rng.gauss(0.0, 1.0)))
        return spec.replace(weight_decay=0.0 if value < 2e-3 else value)
    return spec.replace(**{name: _decay(getattr(spec, name), BOUNDS[name].lo, BOUNDS[name].hi, rng, sigma=0.5)})


def step_ns_steps(spec, rng):
    bound = BOUNDS["ns_steps"]
    hi = POLAR_EXPRESS_MAX_STEPS if spec.orthogonaliser == "polar_express" else bound.hi
    return spec.replace(ns_steps=int(min(max(spec.ns_steps + rng.choice((-1, 1)), bound.lo), hi)))


def toggle_nesterov(spec, rng):
    return spec.replace(nesterov=not spec.nesterov)


def perturb_value(kind: FieldKind, x, rng: random.Random):
    """A new value for one field of the given kind (see the module docstring for the spaces)."""
    name = kind.name.split(".")[-1]
    if kind.kind == "bool":
        return not x
    if kind.kind == "enum":
        others = [c for c in kind.choices if c != x]
        return rng.choice(others) if others else x
    lo, hi = kind.bound.lo, kind.bound.hi
    if kind.kind == "int":
        return int(min(max(x + rng.choice((-1, 1)), lo), hi))
    if "." in kind.name:
        return _perturb_actuator(name, x, rng)
    if name in EMAS or (lo >= 0.0 and 0.99 <= hi < 1.0):
        return _decay(x, lo, hi, rng)
    if name in WEIGHTS or name == "gate_bias":
        return _clip(kind.bound, x + rng.gauss(0.0, 1.0))
    if lo > 0.0 or (lo == 0.0 and math.isinf(hi)):
        return _clip(kind.bound, max(x, lo, 1e-6) * math.exp(rng.gauss(0.0, 0.5)))
    if math.isfinite(hi - lo):
        return _clip(kind.bound, x + rng.gauss(0.0, 0.1 * (hi - lo)))
    return _round(x + rng.gauss(0.0, 1.0))


def searched_fields(spec_class: type = GateSpec) -> tuple[str, ...]:
    return tuple(k for k in field_kinds(spec_class) if k not in NOT_SEARCHED)


def _set_field(spec: GateSpec, name: str, value) -> GateSpec:
    if "." in name:
        pole, actuator = name.split(".")
        return _with_pole(spec, pole, actuator, value)
    return spec.replace(**{name: value})


def perturb_field(spec, rng):
    kinds = field_kinds(type(spec))
    name = rng.choice(searched_fields(type(spec)))
    value = getattr(getattr(spec, name.split(".")[0]), name.split(".")[1]) if "." in name else getattr(spec, name)
    try:
        return _set_field(spec, name, perturb_value(kinds[name], value, rng))
    except SpecError:  # a combination spec.py refuses (e.g. polar_express with ns_steps > 5): not applicable
        return None


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator("perturb_weight", "add N(0, 1) to one sensor weight w_*", WEIGHTS, True, perturb_weight),
        Operator("zero_weight", "set one non-zero sensor weight to 0 (drop a sensor)", WEIGHTS, True, zero_weight),
        Operator("flip_weight", "negate one non-zero sensor weight", WEIGHTS, True, flip_weight),
        Operator("perturb_bias", "add N(0, 1) to the gate bias", ("gate_bias",), True, perturb_bias),
        Operator(
            "perturb_sharpness",
            "multiply the sharpness by exp(N(0, 0.5))",
            ("sharpness",),
            True,
            perturb_sharpness,
        ),
        Operator("perturb_pole", "perturb one actuator of one pole", POLE_FIELDS, True, perturb_pole),
        Operator(
            "tie_actuator",
            "copy one actuator from one pole to the other (un-gate it)",
            POLE_FIELDS,
            True,
            tie_actuator,
        ),
        Operator("swap_poles", "swap the aggressive and conservative poles", POLE_FIELDS, False, swap_poles),
        Operator("perturb_ema", "rescale one sensor EMA time constant by exp(N(0, 0.7))", EMAS, True, perturb_ema),
        Operator("scale_lr", "multiply the base lr by exp(N(0, 0.3))", ("lr",), True, scale_lr),
        Operator("perturb_base", "perturb one of beta1, beta2, momentum, weight_decay", BASE, True, perturb_base),
        Operator("step_ns_steps", "Newton-Schulz steps ±1", ("ns_steps",), True, step_ns_steps),
        Operator("toggle_nesterov", "switch Nesterov momentum on/off", ("nesterov",), True, toggle_nesterov),
        Operator(
            "perturb_field",
            "perturb any one searched field by its kind (number, int, bool, enum)",
            searched_fields(),
            True,
            perturb_field,
        ),
    )
}


def mutate(
    spec: GateSpec, rng: random.Random, operators: tuple[str, ...] | None = None, max_tries: int = 100
) -> tuple[GateSpec, str]:
    """Apply one randomly chosen operator that changes the spec; returns (child, operator name)."""
    names = list(operators or OPERATORS)
    for _ in range(max_tries):
        name = rng.choice(names)
        child = OPERATORS[name](spec, rng)
        if child is not None:
            return child, name
    raise RuntimeError(f"no operator among {names} could change the spec in {max_tries} tries")


def random_spec(
    base: GateSpec, rng: random.Random, n_mutations: int = 6, operators: tuple[str, ...] | None = None
) -> tuple[GateSpec, list[str]]:
    """A random spec: ``n_mutations`` chained random mutations of ``base`` (for calibration)."""
    spec, ops = base, []
    for _ in range(n_mutations):
        spec, name = mutate(spec, rng, operators)
        ops.append(name)
    return spec, ops


def describe() -> str:
    """The registry as a markdown table (used by the report and ``--help``)."""
    return markdown_table(["operator", "changes"], [[f"`{op.name}`", op.doc] for op in OPERATORS.values()])
