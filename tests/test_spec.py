"""The spec DSL: bounds, presets, JSON round-trip."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusedgate.spec import (
    ACTUATORS,
    BOUNDS,
    ENGINE_FIELDS,
    ORTHOGONALISERS,
    POLE_BOUNDS,
    SENSORS,
    GateSpec,
    Pole,
    SpecError,
)

NUMBERS = [n for n, b in BOUNDS.items() if n != "version" and b.kind is not bool]
SWITCHES = [n for n, b in BOUNDS.items() if b.kind is bool]


def finite_in(bound):
    hi = bound.hi if math.isfinite(bound.hi) else 1e6
    if bound.kind is int:
        return st.integers(int(bound.lo), int(hi))
    return st.floats(bound.lo, hi, allow_nan=False)


poles = st.builds(Pole, **{name: st.one_of(finite_in(b), st.just(math.inf)) if name == "clip" else finite_in(b)
                           for name, b in POLE_BOUNDS.items()})
specs = st.builds(
    GateSpec,
    units=st.sampled_from(["adam", "muon"]),
    orthogonaliser=st.just("quintic"),   # polar_express narrows ns_steps (tested below)
    aggressive=poles,
    conservative=poles,
    **{name: st.booleans() for name in SWITCHES},
    **{name: finite_in(b) for name, b in BOUNDS.items() if name in NUMBERS},
)


@settings(max_examples=60, deadline=None)
@given(specs)
def test_json_round_trip_is_exact(spec):
    text = spec.to_json()
    again = GateSpec.from_json(text)
    assert again == spec
    assert again.content_hash() == spec.content_hash()
    assert json.loads(text)  # standard JSON: inf is written as the string "inf"


def test_field_order_is_stable_and_versioned():
    keys = list(json.loads(GateSpec.gated().to_json()))
    assert keys[0] == "version" and keys[-2:] == ["aggressive", "conservative"]
    assert keys == list(GateSpec().to_dict())
    assert [f"w_{s}" for s in SENSORS] == [k for k in keys if k.startswith("w_")]
    assert list(json.loads(GateSpec.gated().to_json())["aggressive"]) == list(ACTUATORS)


@pytest.mark.parametrize("name", NUMBERS)
def test_every_field_is_bounded(name):
    bound = BOUNDS[name]
    too_big = bound.hi + 1 if math.isfinite(bound.hi) else None
    with pytest.raises(SpecError) as info:
        GateSpec(**{name: too_big if too_big is not None else -1e9})
    message = str(info.value)
    assert name in message and str(bound.hi) in message
    with pytest.raises(SpecError, match=name):
        GateSpec(**{name: bound.lo - 1})
    with pytest.raises(SpecError, match=name):
        GateSpec(**{name: float("nan")})


@pytest.mark.parametrize("name", list(POLE_BOUNDS))
def test_every_actuator_is_bounded(name):
    bound = POLE_BOUNDS[name]
    with pytest.raises(SpecError, match=name):
        Pole(**{name: bound.lo - 0.5})
    data = GateSpec.gated().to_dict()
    data["aggressive"][name] = bound.lo - 0.5
    with pytest.raises(SpecError, match=f"aggressive.{name}"):
        GateSpec.from_dict(data)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(version=3), "version"),
    (lambda d: d.update(version=True), "version"),
    (lambda d: d.update(orthogonaliser="svd"), "orthogonaliser"),
    (lambda d: d.update(normuon=1), "normuon"),
    (lambda d: d.update(cautious_wd="on"), "cautious_wd"),
    (lambda d: d.update(normuon_beta2=1.5), "normuon_beta2"),
    (lambda d: d.update(ns_steps=6), "ns_steps"),   # the default uses Polar Express: five triples
    (lambda d: d.pop("version"), "version"),
    (lambda d: d.update(learning_rate=1), "unknown"),
    (lambda d: d.update(units="sgd"), "units"),
    (lambda d: d.update(ns_steps=2.5), "integer"),
    (lambda d: d.update(nesterov="yes"), "bool"),
    (lambda d: d.update(lr="fast"), "number"),
    (lambda d: d["conservative"].update(speed=1), "unknown"),
    (lambda d: d.update(aggressive=[1, 2]), "aggressive"),
])
def test_malformed_specs_are_refused_with_the_reason(mutate, match):
    data = GateSpec.gated().to_dict()
    mutate(data)
    with pytest.raises(SpecError, match=match):
        GateSpec.from_dict(data)


def test_not_json_and_not_an_object():
    with pytest.raises(SpecError, match="JSON"):
        GateSpec.from_json("{lr: 1")
    with pytest.raises(SpecError, match="object"):
        GateSpec.from_json("[1, 2]")


def test_presets():
    adamw = GateSpec.adamw(lr=3e-4, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    assert (adamw.lr, adamw.beta1, adamw.beta2, adamw.eps, adamw.weight_decay) == (3e-4, 0.8, 0.95, 1e-6, 0.1)
    assert adamw.is_inert and adamw.aggressive.ortho == 0 and adamw.aggressive.beta2 == 0.95
    muon = GateSpec.muon(lr=0.03, momentum=0.9)
    assert muon.is_inert and muon.units == "muon" and muon.aggressive.ortho == 1 and muon.momentum == 0.9
    default = GateSpec.gated()
    assert not default.is_inert and default.w_step_fraction < 0 < default.w_loss_improvement
    nanochat = GateSpec.nanochat()
    assert nanochat.is_inert and nanochat.units == "muon" and nanochat.orthogonaliser == "polar_express"
    assert all(getattr(nanochat, f) for f in ("muon_eq", "muon_plus", "normuon", "cautious_wd"))
    # the gated default is the production engine plus a gate: every base and engine field is nanochat's
    assert all(getattr(default, f) == getattr(nanochat, f) for f in ENGINE_FIELDS + ("lr", "momentum", "units"))
    # both poles keep the production direction; the conservative one is the production step (plus a clip)
    assert default.aggressive.ortho == default.conservative.ortho == 1.0 and default.conservative.update_mult == 1.0
    # the default, re-chosen on the multi-horizon evidence, is the production engine itself
    assert GateSpec.default() == nanochat and GateSpec.from_name_or_file("default") == nanochat
    # the engine switches are off in the plain presets, so they stay exactly AdamW and Muon
    for plain in (GateSpec.adamw(), GateSpec.muon()):
        assert plain.orthogonaliser == "quintic" and not any(getattr(plain, f) for f in SWITCHES if f != "nesterov")


@pytest.mark.parametrize("name", SWITCHES)
def test_switches_take_bools_only(name):
    for bad in (0, 1, 0.0, "true", None):
        with pytest.raises(SpecError, match=name):
            GateSpec(**{name: bad})


def test_orthogonaliser_choice_and_its_step_limit():
    assert set(ORTHOGONALISERS) == {"quintic", "polar_express"}
    assert GateSpec(orthogonaliser="quintic", ns_steps=10).ns_steps == 10
    assert GateSpec(orthogonaliser="polar_express", ns_steps=5).ns_steps == 5
    with pytest.raises(SpecError, match="ns_steps=6.*polar_express"):
        GateSpec(orthogonaliser="polar_express", ns_steps=6)


def test_version_1_specs_still_load_with_the_engine_off():
    data = GateSpec.muon().to_dict()
    for name in ENGINE_FIELDS:
        data.pop(name)
    data["version"] = 1
    assert GateSpec.from_dict(data) == GateSpec.muon()
    data["normuon"] = True
    with pytest.raises(SpecError, match="normuon.*version 2"):
        GateSpec.from_dict(data)


def test_replace_rechecks_bounds():
    with pytest.raises(SpecError, match="sharpness"):
        GateSpec.gated().replace(sharpness=100.0)


def test_files(tmp_path):
    path = tmp_path / "spec.json"
    GateSpec.gated().save(path)
    assert GateSpec.load(path) == GateSpec.gated()
    with pytest.raises(SpecError, match="cannot read"):
        GateSpec.load(tmp_path / "missing.json")


def test_a_preset_name_or_a_file(tmp_path, monkeypatch):
    assert GateSpec.from_name_or_file("muon") == GateSpec.muon()
    assert GateSpec.from_name_or_file("nanochat") == GateSpec.nanochat()
    path = tmp_path / "mine.json"
    GateSpec.adamw(lr=5e-4).save(path)
    assert GateSpec.from_name_or_file(path) == GateSpec.adamw(lr=5e-4)
    monkeypatch.chdir(tmp_path)
    GateSpec.adamw(lr=7e-4).save(tmp_path / "default")
    assert GateSpec.from_name_or_file("default") == GateSpec.adamw(lr=7e-4)  # an existing file wins
    with pytest.raises(SpecError, match="cannot read") as caught:
        GateSpec.from_name_or_file("no-such-preset")
    assert "'no-such-preset' is not a preset name either (presets: default, gated, adamw, muon, nanochat)" \
        in str(caught.value)
