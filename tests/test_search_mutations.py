"""Mutation operators: each changes exactly its one aspect, stays in the DSL bounds, is reproducible."""

import math
import random
from dataclasses import dataclass

import pytest

from fusedgate.search import mutations
from fusedgate.search.mutations import (
    NOT_SEARCHED,
    OPERATORS,
    aspect_of,
    describe,
    field_kinds,
    flatten,
    mutate,
    random_spec,
    searched_fields,
)
from fusedgate.spec import BOUNDS, POLE_BOUNDS, GateSpec, Pole


def parents():
    """Presets, a gated spec and specs sitting on their bounds (clipping must keep them in)."""
    edge = GateSpec.gated().replace(
        orthogonaliser="quintic",
        gate_bias=8.0,
        w_loss=-8.0,
        w_grad_norm=8.0,
        sharpness=10.0,
        ema_loss=0.9999,
        lr=10.0,
        ns_steps=10,
        aggressive=Pole(update_mult=10.0, trust_mix=1.0, clip=1.0, beta2=0.99999, ortho=1.0),
        conservative=Pole(update_mult=0.0, trust_mix=0.0, clip=math.inf, beta2=0.5, ortho=0.0),
    )
    low = GateSpec.muon().replace(sharpness=0.1, ema_grad_norm=0.0, ns_steps=1, beta1=0.0, momentum=0.0)
    rng = random.Random(7)
    randoms = [random_spec(GateSpec.gated(), rng, 8)[0] for _ in range(6)]
    return [GateSpec.gated(), GateSpec.muon(), GateSpec.adamw(), edge, low, *randoms]


def check_bounds(spec: GateSpec) -> None:
    flat = flatten(spec)
    for name, bound in BOUNDS.items():
        if bound.kind is not bool:
            assert bound.lo <= flat[name] <= bound.hi, name
    for pole in ("aggressive", "conservative"):
        for name, bound in POLE_BOUNDS.items():
            value = flat[f"{pole}.{name}"]
            value = math.inf if value == "inf" else value
            assert bound.lo <= value <= bound.hi, (pole, name)
    assert GateSpec.from_json(spec.to_json()) == spec  # re-validated by the constructor


def test_registry_has_fourteen_documented_operators():
    assert len(OPERATORS) == 14
    table = describe()
    for name, op in OPERATORS.items():
        assert op.doc and op.fields and f"`{name}`" in table


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_changes_exactly_its_aspect_and_stays_in_bounds(name):
    op = OPERATORS[name]
    changed_any = 0
    for i, parent in enumerate(parents()):
        for trial in range(15):
            child = op(parent, random.Random(f"{name}:{i}:{trial}"))
            if child is None:
                continue
            changed_any += 1
            changed = aspect_of(parent, child)
            assert changed, "an operator result must differ from its parent"
            assert changed <= set(op.fields), (name, changed)
            if op.single:
                assert len(changed) == 1, (name, changed)
            check_bounds(child)
    assert changed_any >= 10, f"{name} applied only {changed_any} times"


def test_swap_poles_swaps():
    spec = GateSpec.gated()
    child = OPERATORS["swap_poles"](spec, random.Random(0))
    assert child.aggressive == spec.conservative and child.conservative == spec.aggressive


def test_not_applicable_returns_none():
    inert = GateSpec.muon()  # all weights zero, equal poles
    rng = random.Random(0)
    for name in ("zero_weight", "flip_weight", "tie_actuator", "swap_poles"):
        assert OPERATORS[name](inert, rng) is None


def test_mutation_is_reproducible_from_the_seed():
    a = [mutate(GateSpec.gated(), random.Random(f"s{i}")) for i in range(20)]
    b = [mutate(GateSpec.gated(), random.Random(f"s{i}")) for i in range(20)]
    assert a == b
    assert len({child.content_hash() for child, _ in a}) > 10  # and actually random


def test_perturb_field_reaches_every_searched_field():
    fields = set(searched_fields())
    assert fields == set(flatten(GateSpec.gated())) - set(NOT_SEARCHED)
    seen = set()
    for i in range(600):
        child = OPERATORS["perturb_field"](GateSpec.gated(), random.Random(i))
        if child is not None:
            seen |= aspect_of(GateSpec.gated(), child)
    assert seen == fields


@dataclass(frozen=True)
class FutureSpec(GateSpec):
    """GateSpec with fields a later engine might add (an enum and a bool) and no Bound in spec.py."""

    projector: str = "svd"
    extra_switch: bool = False


def test_perturb_field_reaches_engine_switches_and_new_fields(monkeypatch):
    monkeypatch.setitem(mutations.ENUM_CHOICES, "projector", ("svd", "qr"))
    kinds = field_kinds(FutureSpec)
    assert kinds["orthogonaliser"].kind == "enum" and kinds["muon_eq"].kind == "bool"
    assert kinds["projector"].choices == ("svd", "qr") and kinds["extra_switch"].kind == "bool"
    assert kinds["nesterov"].kind == "bool" and kinds["ns_steps"].kind == "int"
    assert kinds["aggressive.clip"].bound == POLE_BOUNDS["clip"]
    parent = FutureSpec(orthogonaliser="quintic")
    changed = {}
    for i in range(600):
        child = OPERATORS["perturb_field"](parent, random.Random(i))
        if child is None:
            continue
        (name,) = aspect_of(parent, child)  # exactly one field
        changed[name] = getattr(child, name) if "." not in name else None
    assert changed["orthogonaliser"] == "polar_express" and changed["projector"] == "qr"
    for switch in ("muon_eq", "muon_plus", "normuon", "cautious_wd", "extra_switch"):
        assert changed[switch] is True, switch
    assert "normuon_beta2" not in changed  # the trainer's muon groups override it
