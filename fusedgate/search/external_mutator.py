"""``--mutator-cmd CMD``: let any program (an LLM CLI, a script) propose children.

Protocol: CMD runs through the shell with the parent spec as JSON on stdin and these environment
variables: ``FUSEDGATE_SPEC_SCHEMA`` (path of the spec's JSON schema), ``FUSEDGATE_GENERATION``,
``FUSEDGATE_SEED`` (an integer to seed any randomness). It prints a child spec as JSON on stdout
(a bare object, or inside a ```json fence). Fields it leaves out keep the parent's values.

Preflight, in order; the first failure rejects the child and the reason is logged in the archive:
    1. the command exits 0 within the timeout
    2. stdout holds a JSON object
    3. the merged child validates against the JSON schema (field names, types)
    4. it constructs a GateSpec (every DSL bound) and differs from its parent
    5. a 3-step dry run on the "test" preset finishes without error or divergence
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile

from fusedgate.search.evaluate import FUSEDGATE, make_job, run_job
from fusedgate.spec import ACTUATORS, BOUNDS, ORTHOGONALISERS, POLE_BOUNDS, UNITS, GateSpec, SpecError

DRY_RUN_STEPS = 3
DRY_RUN_PRESET = "test"


class Rejected(Exception):
    """A proposed child failed preflight; the message is the reason, ``output`` what the program printed."""

    def __init__(self, reason: str, output: str = ""):
        super().__init__(reason)
        self.output = output


def _number_schema(bound) -> dict:
    if bound.kind is bool:
        return {"type": "boolean"}
    schema = {"type": "integer" if bound.kind is int else "number", "minimum": bound.lo}
    if math.isfinite(bound.hi):
        schema["maximum"] = bound.hi
    return schema


def spec_json_schema() -> dict:
    """A JSON schema (draft 2020-12) equivalent to the DSL's field names, types and bounds."""
    pole = {"type": "object", "additionalProperties": False, "required": list(ACTUATORS), "properties": {}}
    for name in ACTUATORS:
        bound = POLE_BOUNDS[name]
        if math.isinf(bound.hi):
            pole["properties"][name] = {"anyOf": [_number_schema(bound), {"const": "inf"}]}
        else:
            pole["properties"][name] = _number_schema(bound)
    props = {name: _number_schema(bound) for name, bound in BOUNDS.items()}
    props["units"] = {"enum": list(UNITS)}
    props["orthogonaliser"] = {"enum": list(ORTHOGONALISERS)}
    props["aggressive"] = pole
    props["conservative"] = pole
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "FusedGate GateSpec",
        "type": "object",
        "additionalProperties": False,
        "required": list(props),
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
    """Steps 3-5 of the preflight on a parsed child; returns the GateSpec or raises Rejected."""
    merged = merge(parent, data)
    try:
        import jsonschema
    except ImportError:  # the GateSpec constructor below checks the same names, types and bounds
        jsonschema = None
    if jsonschema is not None:
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(spec_json_schema()).iter_errors(merged)
        )
        if error is not None:
            where = "/".join(map(str, error.absolute_path)) or "spec"
            raise Rejected(f"schema: {where}: {error.message}")
    try:
        child = GateSpec.from_dict(merged)
    except SpecError as exc:
        raise Rejected(f"bounds: {exc}") from None
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
    def __init__(self, cmd: str, timeout: float = 300.0, dry_run: bool = True, data: str | None = None):
        """``data``: the corpus path for the dry run (None: the default corpus)."""
        self.cmd, self.timeout, self.dry_run, self.data = cmd, timeout, dry_run, data
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
                self.cmd,
                shell=True,
                input=parent.to_json(),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise Rejected(f"mutator command timed out after {self.timeout:g} s") from None
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
