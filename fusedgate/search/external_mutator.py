"""``--mutator-cmd CMD``: let any program (an LLM CLI, a script) propose children.

Protocol: CMD is split like a shell would (``shlex.split``) but runs without a shell (no pipes,
redirections or ``;``: wrap those in a script), with the parent spec as JSON on stdin and these
environment variables: ``FUSEDGATE_SPEC_SCHEMA`` (path of a JSON schema describing the spec, for the
program to read), ``FUSEDGATE_GENERATION``, ``FUSEDGATE_SEED`` (an integer to seed any randomness). It
prints a child spec as JSON on stdout (a bare object, or inside a ```json fence). Fields it leaves out
keep the parent's values. The command is only ever the one given on the current command line: an
archive records it but ``resume`` never runs it from there.

Preflight, in order; the first failure rejects the child and the reason is logged in the archive:
    1. the command exits 0 within the timeout
    2. stdout holds a JSON object
    3. the merged child constructs a GateSpec (``GateSpec.from_dict``: field names, types, every bound
       — spec.py is the one source of truth; the schema file is derived from it for the program's
       benefit and is not used to validate) and differs from its parent
    4. a 3-step dry run on the "test" preset finishes without error or divergence
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile

from fusedgate.search.evaluate import FUSEDGATE, make_job, run_job
from fusedgate.search.mutations import field_kinds
from fusedgate.spec import GateSpec, SpecError

DRY_RUN_STEPS = 3
DRY_RUN_PRESET = "test"


class Rejected(Exception):
    """A proposed child failed preflight; the message is the reason, ``output`` what the program printed."""

    def __init__(self, reason: str, output: str = ""):
        super().__init__(reason)
        self.output = output


def _field_schema(kind) -> dict:
    if kind.kind == "bool":
        return {"type": "boolean"}
    if kind.kind == "enum":
        return {"enum": list(kind.choices)}
    schema = {"type": "integer" if kind.kind == "int" else "number"}
    if math.isfinite(kind.bound.lo):
        schema["minimum"] = kind.bound.lo
    if math.isfinite(kind.bound.hi):
        schema["maximum"] = kind.bound.hi
    elif kind.kind == "float" and math.isfinite(kind.bound.lo):  # +inf is written "inf" (e.g. clip off)
        return {"anyOf": [schema, {"const": "inf"}]}
    return schema


def spec_json_schema(spec_class: type = GateSpec) -> dict:
    """A JSON schema (draft 2020-12) of the spec, derived from spec.py (``mutations.field_kinds``: the
    dataclass fields, BOUNDS, POLE_BOUNDS and the enum choices). Documentation for the program only."""
    props: dict = {}
    for name, kind in field_kinds(spec_class).items():
        if "." in name:
            pole, actuator = name.split(".")
            props.setdefault(pole, {"type": "object", "additionalProperties": False, "properties": {}})
            props[pole]["properties"][actuator] = _field_schema(kind)
        else:
            props[name] = _field_schema(kind)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "FusedGate GateSpec",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }


def parse_child(stdout: str) -> dict:
    """The JSON object in a program's stdout: the whole text, a ```json fence, or the outermost braces."""
    candidates = [stdout]
    candidates += re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", stdout, flags=re.S)
    if "{" in stdout and "}" in stdout:
        candidates.append(stdout[stdout.index("{") : stdout.rindex("}") + 1])
    for text in candidates:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data
    raise Rejected("stdout holds no JSON object")


def merge(parent: GateSpec, data: dict) -> dict:
    merged = parent.to_dict()
    for key, value in data.items():
        if key in ("aggressive", "conservative") and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def validate(parent: GateSpec, data: dict, dry_run: bool = True, corpus: str | None = None) -> GateSpec:
    """Steps 3-4 of the preflight on a parsed child; returns the GateSpec or raises Rejected."""
    merged = merge(parent, data)
    try:
        child = type(parent).from_dict(merged)
    except SpecError as exc:
        raise Rejected(f"spec: {exc}") from None
    if child == parent:
        raise Rejected("the child equals its parent")
    if dry_run:
        job = make_job(FUSEDGATE, child, DRY_RUN_PRESET, DRY_RUN_STEPS, 0, corpus, "dry-run", "preflight")
        result = run_job(job)
        if result["status"] != "ok":
            raise Rejected(
                f"dry run ({DRY_RUN_STEPS} steps, preset {DRY_RUN_PRESET}): "
                f"{(result.get('error') or result['status']).splitlines()[0]}"
            )
    return child


class ExternalMutator:
    def __init__(self, argv: list[str], timeout: float = 300.0, dry_run: bool = True, data: str | None = None):
        """``argv``: the program and its arguments (run without a shell); ``data``: the corpus path for
        the dry run (None: the default corpus)."""
        if isinstance(argv, str) or not argv:
            raise TypeError("ExternalMutator takes an argument list (shlex.split the command), not a string")
        self.argv, self.timeout, self.dry_run, self.data = list(argv), timeout, dry_run, data
        fd, self.schema_path = tempfile.mkstemp(prefix="fusedgate-spec-schema-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(spec_json_schema(), fh, indent=2)

    def propose(self, parent: GateSpec, generation: int, seed: int) -> tuple[GateSpec, str]:
        """Run the command on ``parent``; returns (child, raw stdout) or raises Rejected(reason)."""
        env = {
            **os.environ,
            "FUSEDGATE_SPEC_SCHEMA": self.schema_path,
            "FUSEDGATE_GENERATION": str(generation),
            "FUSEDGATE_SEED": str(seed),
        }
        try:
            proc = subprocess.run(
                self.argv,
                input=parent.to_json(),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise Rejected(f"mutator command timed out after {self.timeout:g} s") from None
        except OSError as exc:
            raise Rejected(f"cannot run the mutator command {self.argv[0]!r}: {exc.strerror}") from None
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [""])[-1]
            raise Rejected(f"mutator command exited with code {proc.returncode}: {tail}", proc.stdout)
        try:
            return validate(parent, parse_child(proc.stdout), self.dry_run, self.data), proc.stdout
        except Rejected as exc:
            raise Rejected(str(exc), proc.stdout) from None

    def close(self) -> None:
        try:
            os.unlink(self.schema_path)
        except OSError:
            pass
