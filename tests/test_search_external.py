"""The external mutator: a program gets the parent spec on stdin and prints a child; preflight (the
GateSpec constructor — spec.py is the one validator —, a 3-step real dry run) accepts good children and
rejects bad ones with a logged reason. The schema handed to the program is derived from spec.py."""

import sys
import textwrap
from dataclasses import dataclass, fields

import pytest

from fusedgate.search import mutations
from fusedgate.search.archive import Archive
from fusedgate.search.external_mutator import ExternalMutator, Rejected, parse_child, spec_json_schema, validate
from fusedgate.search.tournament import Search, default_config, gated_muon
from fusedgate.spec import BOUNDS, GateSpec

SCRIPTS = {
    # a chatty program (like an LLM CLI) that answers with a fenced partial spec
    "good": """
        import json, sys
        spec = json.load(sys.stdin)
        print("Raising the bias should keep the aggressive pole longer:")
        print("```json")
        print(json.dumps({"gate_bias": spec["gate_bias"] + 0.5, "conservative": {"clip": 3.0}}))
        print("```")
    """,
    "out_of_bounds": """
        import json, sys
        json.load(sys.stdin)
        print(json.dumps({"aggressive": {"update_mult": 99.0}}))
    """,
    "unknown_field": """
        import sys
        sys.stdin.read()
        print('{"learning_rate": 0.1}')
    """,
    "garbage": """
        print("I am not sure what to do here.")
    """,
    "crash": """
        import sys
        sys.exit("out of tokens")
    """,
}


@pytest.fixture
def scripts(tmp_path):
    out = {}
    for name, body in SCRIPTS.items():
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(body))
        out[name] = [sys.executable, str(path)]
    return out


def test_preflight_accepts_and_rejects(scripts):
    parent = gated_muon()
    good = ExternalMutator(scripts["good"], timeout=60)
    try:
        child, stdout = good.propose(parent, generation=1, seed=0)  # includes the real 3-step dry run
    finally:
        good.close()
    assert child.gate_bias == parent.gate_bias + 0.5 and child.conservative.clip == 3.0
    assert child.aggressive == parent.aggressive and "```json" in stdout
    expected = {
        "out_of_bounds": "spec: aggressive.update_mult=99.0 is outside its bound [0.0, 10.0]",
        "unknown_field": "spec: unknown spec field(s): learning_rate",
        "garbage": "stdout holds no JSON object",
        "crash": "mutator command exited with code 1: out of tokens",
    }
    for name, reason in expected.items():
        mutator = ExternalMutator(scripts[name], timeout=60)
        with pytest.raises(Rejected) as info:
            mutator.propose(parent, generation=1, seed=0)
        mutator.close()
        assert str(info.value) == reason


def test_parse_child_forms():
    assert parse_child('{"a": 1}') == {"a": 1}
    assert parse_child('text\n```json\n{"a": 2}\n```\nmore') == {"a": 2}
    assert parse_child('the answer is {"a": {"b": 3}} ok') == {"a": {"b": 3}}
    with pytest.raises(Rejected):
        parse_child("[1, 2]")


def test_search_logs_rejections_and_dedups_external_children(tmp_path, scripts):
    cfg = default_config(
        preset="test",
        population=3,
        init_specs=[gated_muon().to_json(indent=None)],
        mutator_cmd=scripts["out_of_bounds"],
        mutator_retries=2,
    )
    archive = Archive.create(str(tmp_path / "bad.sqlite"), cfg)
    mutator = ExternalMutator(cfg.mutator_cmd, timeout=60, dry_run=False)
    members = Search(archive, None, mutator, log=lambda m: None).make_generation(0, "corpus")
    mutator.close()
    assert len(members) == 3
    rejections = archive.rejections()
    assert len(rejections) == 4  # 2 child slots x 2 tries, each logged with its reason and the raw output
    assert all(r["reason"].startswith("spec: aggressive.update_mult=99.0") and "99" in r["output"] for r in rejections)
    assert all(r["parent_hash"] == gated_muon().content_hash() for r in rejections)
    assert {m["operator"] for m in members} - {"seed"} <= set(cfg.operators)  # fell back to built-ins
    archive.close()

    cfg = cfg.replace(mutator_cmd=scripts["good"])
    archive = Archive.create(str(tmp_path / "good.sqlite"), cfg)
    mutator = ExternalMutator(cfg.mutator_cmd, timeout=60, dry_run=False)
    members = Search(archive, None, mutator, log=lambda m: None).make_generation(0, "corpus")
    mutator.close()
    external = [m for m in members if m["operator"] == "external"]
    assert len(external) == 1 and external[0]["spec"].gate_bias == gated_muon().gate_bias + 0.5
    assert external[0]["parents"] == [members[0]["id"]]
    # the script is deterministic: its second answer duplicates the first and is rejected, not re-evaluated
    assert [r["reason"] for r in archive.rejections()] == ["duplicate of a spec already proposed"] * 2
    archive.close()


@dataclass(frozen=True)
class FutureSpec(GateSpec):
    """GateSpec with fields a later engine might add (an enum, a bool), known to no hand-written schema."""

    projector: str = "svd"
    extra_switch: bool = False


def test_spec_py_is_the_one_validator(monkeypatch):
    """A field spec.py accepts is accepted, whatever a hand-written schema would have said; the schema
    file given to the program is derived from spec.py's fields and bounds."""
    monkeypatch.setitem(mutations.ENUM_CHOICES, "projector", ("svd", "qr"))
    child = validate(FutureSpec(), {"projector": "qr", "extra_switch": True, "muon_eq": True}, dry_run=False)
    assert child.projector == "qr" and child.extra_switch is True and child.muon_eq is True
    with pytest.raises(Rejected, match="lr=20.0 is outside its bound"):
        validate(FutureSpec(), {"lr": 20.0}, dry_run=False)
    with pytest.raises(Rejected, match="ns_steps=7 is outside its bound"):  # a cross-field rule of spec.py
        validate(FutureSpec(), {"orthogonaliser": "polar_express", "ns_steps": 7}, dry_run=False)
    schema = spec_json_schema(FutureSpec)
    assert set(schema["properties"]) == {f.name for f in fields(FutureSpec)}
    assert schema["properties"]["orthogonaliser"] == {"enum": ["quintic", "polar_express"]}
    assert schema["properties"]["projector"] == {"enum": ["svd", "qr"]}
    assert schema["properties"]["muon_eq"] == {"type": "boolean"}
    assert schema["properties"]["lr"] == {"type": "number", "minimum": BOUNDS["lr"].lo, "maximum": BOUNDS["lr"].hi}
    clip = schema["properties"]["aggressive"]["properties"]["clip"]
    assert clip == {"anyOf": [{"type": "number", "minimum": 1.0}, {"const": "inf"}]}
